#!/usr/bin/env bash
# Create .venv and install the project with its test, video and benchmark
# extras, offline-friendly (not low-memory: bitsandbytes, once installed, is imported by diffusers
# on every start, which slows it; CI adds it to test 8-bit AdamW):
# torch 2.13.0 is taken as the CPU build that lies on this machine's disk (a plain `torch`
# requirement would pull a CUDA build of several GB); everything else comes from PyPI,
# pinned by requirements/constraints.txt to the versions the tests ran with.
#
# `install.sh --newest FOLDER`: a venv in FOLDER with the newest versions setup.cfg allows
# (no constraints file, the test and quantization extras), as a plain `pip install -e .`
# resolves them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
constraints=(-c requirements/constraints.txt)
extras="test,video,benchmark"
if [ "${1:-}" = "--newest" ]; then
  venv=${2:?usage: install.sh --newest FOLDER}
  constraints=()
  extras="test,quantization"  # its smoke tier runs the torchao tests (slower imports there)
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade-strategy eager \
  "${constraints[@]}" -e ".[$extras]"
