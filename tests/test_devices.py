"""pipeline.devices: `auto` on a machine with several GPUs takes one no other process holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pipeline.devices as devices
from pipeline.devices import claim_gpu, resolve_device


@pytest.fixture
def release_locks():
    yield
    while devices._held_locks:
        devices._held_locks.pop().close()
    devices._auto_gpu.cache_clear()


def _claim_in_subprocess(lock_dir: Path, names: list[str]) -> str:
    code = f"from pathlib import Path; from pipeline.devices import claim_gpu; print(claim_gpu({names!r}, Path({str(lock_dir)!r})))"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_each_claim_takes_the_first_free_gpu(tmp_path: Path, release_locks) -> None:
    names = ["gpu-a", "gpu-b"]
    assert _claim_in_subprocess(tmp_path, names) == "0"  # its lock ended with it
    assert claim_gpu(names, tmp_path) == 0
    assert _claim_in_subprocess(tmp_path, names) == "1"  # another process: the next GPU
    assert claim_gpu(names, tmp_path) == 1  # (a second claim here counts as another holder)
    assert claim_gpu(names, tmp_path) is None and _claim_in_subprocess(tmp_path, names) == "None"
    devices._held_locks.pop(0).close()  # gpu-a released
    assert _claim_in_subprocess(tmp_path, names) == "0"


def test_auto_on_two_gpus_takes_a_free_one_once_per_process(tmp_path: Path, monkeypatch, release_locks) -> None:
    monkeypatch.setattr(devices, "GPU_LOCK_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"uuid-{i}"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert claim_gpu(["gpu-uuid-0"], tmp_path) == 0  # as if another worker held cuda:0
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)  # the same GPU for the whole process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-uuid-0.lock", "gpu-uuid-1.lock"]
    devices._auto_gpu.cache_clear()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)  # torchrun's rank decides, no lock
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")  # one GPU: as before, no lock taken
