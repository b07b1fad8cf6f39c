#!/usr/bin/env bash
# Build KenLM's `lmplz` and `build_binary` from the kenlm sdist on PyPI and install them
# into PREFIX/bin (the Makefile calls this with PREFIX=.venv).
#
#   bash scripts/install_kenlm.sh PREFIX
#
# Idempotent: exits at once when PREFIX/bin/lmplz and PREFIX/bin/build_binary already run.
# Needs cmake, a C++ compiler and Debian's boost/eigen/compression headers; installs the
# missing ones with apt-get. Set KENLM_VERSION to pin another sdist (default: the kenlm
# version pinned in constraints.txt, else the latest).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX   (installs PREFIX/bin/lmplz and PREFIX/bin/build_binary)" >&2
  exit 2
fi
mkdir -p "$1/bin"
PREFIX="$(cd "$1" && pwd)"
BIN="$PREFIX/bin"

binaries_work() {
  # lmplz --help exits non-zero but prints its usage; check that the binary starts.
  [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ] || return 1
  local usage
  usage="$("$BIN/lmplz" --help 2>&1 || true)"
  [[ "$usage" == *"--order"* ]]
}
if binaries_work; then
  echo "KenLM binaries already installed in $BIN"
  exit 0
fi

packages=(cmake build-essential libboost-program-options-dev libboost-system-dev
          libboost-thread-dev libboost-test-dev libeigen3-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A python with pip to download the sdist: the prefix's own one (a venv) or python3.
PYTHON="$PREFIX/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${KENLM_VERSION:-}" ] && [ -f "$SCRIPT_DIR/../constraints.txt" ]; then
  KENLM_VERSION="$(sed -n 's/^kenlm==\(.*\)$/\1/p' "$SCRIPT_DIR/../constraints.txt" | head -1)"
fi
SPEC="kenlm${KENLM_VERSION:+==$KENLM_VERSION}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "Downloading the $SPEC sdist from PyPI"
# `--no-binary kenlm` (not `:all:`): the build requirements pip installs to read the sdist's
# metadata (cmake, scikit-build-core) may come as wheels instead of being compiled too.
"$PYTHON" -m pip download -q --no-deps --no-binary kenlm --dest "$WORK" "$SPEC"
ARCHIVE="$(find "$WORK" -maxdepth 1 \( -name "kenlm-*.tar.gz" -o -name "kenlm-*.zip" \) | head -1)"
if [ -z "$ARCHIVE" ]; then
  echo "error: pip did not download a kenlm sdist into $WORK" >&2
  exit 1
fi
case "$ARCHIVE" in
  *.zip) (cd "$WORK" && unzip -q "$ARCHIVE") ;;
  *) tar -xzf "$ARCHIVE" -C "$WORK" ;;
esac
SOURCE="$(find "$WORK" -maxdepth 2 -name CMakeLists.txt -printf '%h\n' | head -1)"

JOBS="${KENLM_BUILD_JOBS:-$(nproc)}"
echo "Building lmplz and build_binary in $SOURCE ($JOBS jobs)"
cmake -S "$SOURCE" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF \
  -DKENLM_MAX_ORDER=6 > "$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" --target lmplz build_binary -j "$JOBS" > "$WORK/build.log" 2>&1 \
  || { tail -50 "$WORK/build.log" >&2; exit 1; }
install -m 755 "$WORK/build/bin/lmplz" "$WORK/build/bin/build_binary" "$BIN/"
binaries_work || { echo "error: the built binaries in $BIN do not run" >&2; exit 1; }
echo "Installed $BIN/lmplz and $BIN/build_binary"
