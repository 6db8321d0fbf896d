"""Shared test set-up: the repository root and a valid params mapping to mutate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def default_params_raw() -> dict:
    """params.yaml as committed, parsed: tests mutate a deep copy."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture(scope="session")
def fashion_mnist_train(tmp_path_factory: pytest.TempPathFactory):
    """Fashion-MNIST's train images, uint8 (60000, 28, 28), from Debian's package (offline);
    skips where it is not installed (`make test` installs it)."""
    from pipeline.data.datasets import SYSTEM_FASHION_MNIST, fashion_mnist_arrays

    if not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{SYSTEM_FASHION_MNIST} missing: `make test` installs Debian's dataset-fashion-mnist")
    images, _ = fashion_mnist_arrays("train", tmp_path_factory.mktemp("raw"), download=False)
    return images


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module (`pytestmark = pytest.mark.usefixtures(...)`):
    tiny models run as fast on one, the run time stays steady when other processes load the
    CPU (two-thread OpenMP on a busy 2-core machine slowed tests more than 10x), and runs
    compared bit for bit with `OMP_NUM_THREADS=1` subprocesses use the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
