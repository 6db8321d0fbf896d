"""bench/device.sh, the one-shot GPU benchmark: end to end on the CPU with --dry-run, and its
row runner's handling of a bench that fails or hangs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.device import ROWS, Row, run_row

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_gives_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "bench/device.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "device.jsonl").read_text().splitlines()]
    by_bench = {r["bench"] for r in records}
    assert by_bench == {"extract_rate", "sae", "diffc", "classify"}
    assert all(math.isfinite(r["value"]) and r["value"] >= 0 for r in records)
    rates = [r for r in records if r["metric"] == "images/s"]
    assert {r["row"].split()[1] for r in rates} == {"tiny-sd", "tiny-dit"}
    assert all(r["value"] > 0 for r in rates)
    table = (tmp_path / "device.md").read_text()
    for row in ROWS:
        assert f"- {row.name}: ok in" in table
        assert (tmp_path / f"{row.name}.log").stat().st_size > 0
    # The table is also printed at the end, for a run whose files do not come back.
    assert "| extract tiny-sd up_ft1 64px" in proc.stdout


@pytest.mark.parametrize(
    ("source", "timeout_s", "status"),
    [
        ("import sys; print('half a result'); sys.exit(3)", 60, "failed (exit 3"),
        ("import time; print('started', flush=True); time.sleep(120)", 2, "timed out after 2 s"),
    ],
)
def test_a_failing_or_hanging_row_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, timeout_s: int, status: str
) -> None:
    (tmp_path / "fake_bench.py").write_text(source + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    got = run_row(Row("fake", "fake_bench", (), (), timeout_s), out, dry_run=True)
    assert got.startswith(status), got
    assert (out / "fake.log").read_text().splitlines()[1] in ("half a result", "started")
