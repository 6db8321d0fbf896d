#!/usr/bin/env bash
# The one-shot GPU benchmark: one table (SD-1.5 and DiT-XL/2 extraction with the store writer,
# the k-SAE against sparsify, Diff-C and its loader, classify against the Diffusion
# Classifier), each row printed and saved as it finishes (bench/device.py says what each is).
#
#   bash bench/device.sh             # on the GPU machine: results in $OUT (else bench/out)
#   bash bench/device.sh --dry-run   # tiny shapes on the CPU, in seconds
#
# Python: $PYTHON, else the repository's .venv, else python3 (a GPU image whose python3 holds
# PyTorch). Packages that image lacks (diffusers, zarr, pydantic, eai-sparsify, ...) travel
# as wheels: `bash bench/device_wheels.sh` fetches them into .whl/ here, and this script
# installs .whl/*.whl into a private folder first when the python lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c 'import diffusers, zarr, pydantic' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  site=${TMPDIR:-/tmp}/revelio-bench-site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$py" -m bench.device "$@"
