"""Seeded per-image noise, timestep checks, device and dtype choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbones.noise import batch_noise, check_timestep, noise_seed, sample_noise
from pipeline.devices import cpu_has_native_bf16, resolve_device, resolve_dtype


def test_noise_rows_depend_only_on_their_own_key() -> None:
    shape = (4, 8, 8)
    batch = batch_noise(shape, seed=0, indices=[5, 2, 9], views=[0, 1, 0], draw=2)
    assert batch.shape == (3, *shape) and batch.dtype == torch.float32
    for row, (i, v) in enumerate([(5, 0), (2, 1), (9, 0)]):
        assert torch.equal(batch[row], sample_noise(shape, seed=0, index=i, view=v, draw=2))
    keys = [(0, 5, 0, 0), (1, 5, 0, 0), (0, 6, 0, 0), (0, 5, 1, 0), (0, 5, 0, 1), (0, 4, 0, 0)]
    seeds = {noise_seed(*k) for k in keys}
    assert len(seeds) == len(keys)
    # Not seed + index: (seed 1, image 5) is not (seed 0, image 6).
    assert not torch.equal(
        sample_noise(shape, seed=1, index=5, view=0), sample_noise(shape, seed=0, index=6, view=0)
    )
    # Stable across runs and processes: a fixed value, independent of torch's global RNG.
    torch.manual_seed(123)
    first = sample_noise((3,), seed=0, index=0, view=0)
    torch.manual_seed(456)
    assert torch.equal(first, sample_noise((3,), seed=0, index=0, view=0))
    assert noise_seed(0, 0, 0, 0) == noise_seed(0, 0, 0, 0)


def test_noise_moves_after_drawing_in_fp32() -> None:
    low = batch_noise((2, 2), seed=0, indices=[0], dtype=torch.bfloat16)
    assert torch.equal(low, batch_noise((2, 2), seed=0, indices=[0]).to(torch.bfloat16))
    with pytest.raises(ValueError, match="index must be >= 0"):
        noise_seed(0, -1, 0)
    with pytest.raises(ValueError, match="2 indices but 1 views"):
        batch_noise((2,), seed=0, indices=[0, 1], views=[0])


def test_check_timestep() -> None:
    assert check_timestep(0, 1000) == 0 and check_timestep(999, 1000) == 999
    with pytest.raises(ValueError, match=r"t = 1000 is out of range for m: expected 0 <= t < 1000"):
        check_timestep(1000, 1000, "m")
    with pytest.raises(TypeError):
        check_timestep(True, 1000)  # type: ignore[arg-type]


def test_resolve_device_and_dtype(tmp_path: Path) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16, fp16"):
        resolve_dtype("fp8", "cpu")


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2 avx512f", False)],
)
def test_cpu_bf16_detection(tmp_path: Path, flags: str, native: bool) -> None:
    info = tmp_path / f"cpuinfo-{native}-{len(flags)}"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(info) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False
