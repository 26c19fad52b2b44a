#!/usr/bin/env bash
# The GPU figures on a lent machine, from the repository root (README: "Figures on a GPU"):
#   bash scripts/gpu_check.sh [--stages recipe evaluation ...]
# Installs the carried wheels of .whl/ (scripts/gpu_wheels.sh) beside the machine's own
# packages, then runs scripts/gpu_check.py, which writes gpu_check.json and gpu_check.md under
# $OUT (the device's folder that comes back; ./gpu-check elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PERSONALIZE_CACHE="${PERSONALIZE_CACHE:-/tmp/personalize-cache}"
exec python3 scripts/gpu_check.py --out "${OUT:-gpu-check}" "$@"
