"""Device and precision choice for `*.device` / `*.dtype` params (`auto` or an explicit name).

`auto` picks the fastest setting that is numerically safe for reading activations:
cuda, then mps, then cpu (on a machine with several GPUs, one no other revelio process holds:
`claim_gpu`); bf16 where the hardware multiplies bf16 natively (CUDA with bf16
support, CPUs with AMX or AVX512-BF16, where the SD-1.5 UNet ran ~3.3x faster than fp32), fp16
on older GPUs, fp32 elsewhere. Exactness tests pin fp32 explicitly.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import torch

from pipeline.errors import ConfigError

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags meaning the CPU has native bf16 matrix / dot-product instructions.
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` → cuda if available, then mps, then cpu; an explicit name must be available."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            return torch.device("cuda") if count == 1 else torch.device("cuda", _auto_gpu(count))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device = 'cuda' was asked for but no CUDA device is available; use device: auto or cpu"
        )
    if name == "mps" and not _mps_available():
        raise ConfigError("device = 'mps' was asked for but MPS is not available; use device: auto or cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ConfigError(f"device = {name!r} is invalid; valid: auto, cpu, cuda, mps")
    return torch.device(name)


# One lock file per GPU, held from the first `auto` resolution to the process's exit. Several
# processes on one machine — `dvc queue start -j N` runs N experiments at once, each stage its
# own process — then take distinct GPUs instead of all landing on cuda:0.
GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "revelio-gpu-locks"
_held_locks: list[IO[str]] = []


def claim_gpu(names: list[str], lock_dir: Path | None = None) -> int | None:
    """The index of the first GPU in `names` whose lock no other process holds, now held by this
    one until it exits; None when every one is held (or the OS has no flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    lock_dir = GPU_LOCK_DIR if lock_dir is None else lock_dir
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        handle = open(lock_dir / f"{name}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held_locks.append(handle)  # kept open: closing it would release the lock
        return index
    return None


@functools.cache
def _auto_gpu(count: int) -> int:
    """`auto`'s GPU among `count` visible ones, chosen once per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each rank has its own
        return int(os.environ.get("LOCAL_RANK", "0"))
    # Locks are named by the GPU's UUID, so processes with different CUDA_VISIBLE_DEVICES agree.
    names = [f"gpu-{getattr(torch.cuda.get_device_properties(i), 'uuid', i)}" for i in range(count)]
    index = claim_gpu(names)
    if index is None:
        index = os.getpid() % count  # every GPU taken: share one, spread by process
        print(f"device auto: all {count} GPUs are held by other revelio processes; sharing cuda:{index}",
              file=sys.stderr)
    return index


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`auto` → bf16/fp16 on GPU, bf16 on CPUs with native bf16 units, else fp32."""
    device = torch.device(device)
    if name != "auto":
        try:
            return _DTYPES[name]
        except KeyError:
            raise ConfigError(f"dtype = {name!r} is invalid; valid: auto, {', '.join(_DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        # MPS's bf16 support depends on the macOS version; fp16 is always there.
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (Linux; False elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
