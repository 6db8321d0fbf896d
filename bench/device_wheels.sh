#!/usr/bin/env bash
# Wheels for the GPU machine, fetched here (it reaches no registry): what bench/device.sh
# needs beyond the GPU image's own packages (PyTorch, transformers, numpy, ... are there; the
# image's package list: /work/.library/device/KINDS.md). For its Python 3.12, x86-64; no
# dependencies resolved (the list below is the closure the image lacks, pinned like
# pyproject.toml). Carry `.whl` (git-ignored) with the run: bench/device.sh installs it.
# sparsify's trainer (datasets, which wants pyarrow >= 24: a 55 MB wheel, over the transfer's
# 64 MiB with the rest) is left out: bench/sae.py imports its SparseCoder alone then.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  importlib-metadata==10.2.0 eai-sparsify==1.3.3 simple-parsing==0.1.9 docstring-parser==0.18.0 \
  natsort==8.4.0
du -sh .whl
