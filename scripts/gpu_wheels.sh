#!/usr/bin/env bash
# Download, once and here, the wheels a lent GPU machine lacks (it has torch, lightning,
# transformers, peft, torchmetrics, ...; no registry) into .whl/, which git ignores: name it in
# the device call's `carry` and scripts/gpu_check.sh installs from it. Versions are the pins of
# requirements/constraints.txt, for the machine's Python 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(diffusers importlib_metadata jsonargparse docstring_parser typeshed_client bitsandbytes)
pins=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i -E "^${name}==" requirements/constraints.txt) || { echo "error: no pin for $name in requirements/constraints.txt" >&2; exit 2; }
  pins+=("$pin")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
du -sh .whl
