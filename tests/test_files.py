"""pipeline.files: a write that fails leaves the old file or folder, never a torn one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.files import atomic_path, atomic_write, bytes_on_disk, human_bytes, publish_dir


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "fig.png"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == path.parent  # writers pick the format by suffix
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_publish_dir_swaps_a_folder_in_whole(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("x")
    with publish_dir(final) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir()) and (final / "stale.txt").exists()
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), publish_dir(final) as tmp:
        (tmp / "half.txt").write_text("z")
        raise RuntimeError("killed")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left


def test_human_bytes_and_bytes_on_disk(tmp_path: Path) -> None:
    assert [human_bytes(n) for n in (512, 3.5 * 1024, 1024**3 * 1.25, 72 * 1024**4)] == [
        "512 B", "3.5 KiB", "1.2 GiB", "72.0 TiB"
    ]
    assert bytes_on_disk(tmp_path / "missing") == 0
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").write_bytes(b"12345")
    (tmp_path / "a" / "b" / "y").write_bytes(b"123")
    assert bytes_on_disk(tmp_path / "a") == 8 and bytes_on_disk(tmp_path / "a" / "x") == 5
