#!/usr/bin/env bash
# The prepared device check (see benchmarks/device_check.py): one table + JSON, <= 8 minutes on one H100/H200.
#   bash benchmarks/device_check.sh [--json OUT.json]   |   bash benchmarks/device_check.sh --smoke  (CPU, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout 480 "$PYTHON" benchmarks/device_check.py "$@"
