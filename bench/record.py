"""Machine-readable bench results: one JSON line per number, appended as it is measured.

Each bench prints its own human-readable lines; with `--json FILE` it also appends a row here,
so that `bench/device.sh` can gather one table from several benches and a run cut short keeps
every row that finished.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path


def record(path: Path | None, bench: str, row: str, metric: str, value: float) -> None:
    """Append {bench, row, metric, value, host, when} to `path` (nothing when path is None)."""
    if path is None:
        return
    entry = {
        "bench": bench,
        "row": row,
        "metric": metric,
        "value": float(value),
        "host": platform.node(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
