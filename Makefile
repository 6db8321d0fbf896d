# Two-command quickstart: `make repro` runs the embedded default pipeline, `make test` the tests.
# Both set up .venv first (once; again when pyproject.toml changes).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# DVC stage commands call `python -m stages.X`: make them find the venv's python.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup sysdeps testdeps interopdeps repro test test-all test-interop bench clean-venv

setup: $(STAMP) sysdeps

# torch/torchvision first and pinned: on the development machines pip takes these builds
# from local disk; letting a dependency pull "torch" unpinned would fetch a multi-GB build.
# Byte-compiled once, on every core, after pip (whose own compile is serial). Where
# PYTHONDONTWRITEBYTECODE is set (it is on our development machines), Python never caches
# what it compiles, so without .pyc files every stage, Diff-C worker and test subprocess
# compiled torch's and diffusers' sources again: `import torch, diffusers` took 36-45 s
# without them vs 15-16 s with them (a 2-core AVX2 machine, another job running).
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -e '.[dev]'
	@# (exit status ignored: a few of torch's test helpers are Python 3.12 syntax)
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	@touch $(STAMP)

# Fashion-MNIST comes from Debian's package (offline); install it where we can.
sysdeps:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	   && [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# The latent browser's test opens the page in headless Chromium (Debian's package).
testdeps:
	@if ! command -v chromium >/dev/null && [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package chromium (for the latent browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

repro: setup
	$(VENV)/bin/dvc repro

test: setup testdeps
	$(PY) -m pytest

# SAELens and sparsify (~50 packages with transformer-lens, wandb, datasets), for the tests
# that load exported k-SAEs with them; kept out of `make test` for CI's time on 2 cores.
INTEROP := $(VENV)/.interop
interopdeps: $(INTEROP)
$(INTEROP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[interop]'
	@touch $(INTEROP)

test-interop: setup interopdeps
	$(PY) -m pytest -m interop

# Everything: the slow end-to-end, full-size-model and interop tests included.
test-all: setup testdeps interopdeps
	$(PY) -m pytest -m ''

clean-venv:
	rm -rf $(VENV)
