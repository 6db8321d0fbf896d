"""Writes a kill cannot tear: a file or a whole folder appears complete or not at all.

Every output the pipeline writes goes through one of two moves: `atomic_path` (write a
sibling temporary file, then `os.replace` it over the target) or `publish_dir` (fill a fresh
sibling folder, then swap it in with renames). Readers, and a rerun after an interruption,
see the old content or the new, never a mix. Temporaries carry the process id, so two
processes writing the same target do not share one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces
    `path` (parents created), otherwise it is removed. The temporary keeps `path`'s suffix, so
    writers that choose a format by extension (matplotlib, safetensors) pick the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def swap_in(tmp: str | Path, final: str | Path) -> Path:
    """Replace the folder (or file) `final` by `tmp` with renames: the old one is moved aside
    first and removed last, and put back if the second rename fails."""
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(final: str | Path) -> None:
    """Delete the temporary and set-aside folders of `final` left by killed runs (their pid
    is gone); those of a live process are left alone."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.*-*"):
        kind, _, pid = stale.name.rpartition("-")
        if kind in (f".{final.name}.tmp", f".{final.name}.old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def publish_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty folder beside `final` to fill; when the block ends without error
    it replaces `final` (`swap_in`), otherwise it is removed. Folders a killed run left
    beside `final` are removed first (`remove_stale`)."""
    final = Path(final)
    remove_stale(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bytes_on_disk(path: str | Path) -> int:
    """The bytes of every file under `path` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def human_bytes(n: float) -> str:
    """A size for people, in binary units: 512 B, 3.4 KiB, 1.2 GiB, 72.0 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
