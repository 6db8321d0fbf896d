"""Training curves as CSV files, the format DVC plots read."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.files import atomic_path


def write_curve(path: Path, rows: Iterable[Mapping[str, object]], fields: Sequence[str]) -> None:
    """One row per step or epoch; floats with 6 significant digits; keys outside `fields` dropped."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
