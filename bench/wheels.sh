#!/usr/bin/env bash
# Wheels that the device machine's image lacks, for bench/gpu.sh (run here, where PyPI is
# reachable; they land in .whl/, which git ignores, about 9 MB). The image has torch,
# transformers, peft, numpy, h5py, typer, rich, pyyaml, safetensors; craft also needs these.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 \
    typing_inspection==0.4.5 typing_extensions importlib_metadata
ls -la .whl
