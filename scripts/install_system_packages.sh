#!/usr/bin/env bash
# Debian packages hfspeech needs on a fresh machine (idempotent; apt-get only when missing):
#  - FFmpeg 5.1 libraries: torchcodec decodes audio for `datasets`
#  - cmake + boost + compression libs: building KenLM's lmplz/build_binary (scripts/install_kenlm.sh)
#  - espeak-ng, flite, sox: synthesised speech with phone timings (tests, demo)
set -euo pipefail
packages=(ffmpeg cmake build-essential libboost-program-options-dev libboost-system-dev
          libboost-thread-dev libboost-test-dev libeigen3-dev zlib1g-dev libbz2-dev liblzma-dev
          espeak-ng flite sox libsndfile1)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "Installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
