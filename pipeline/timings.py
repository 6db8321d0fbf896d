"""Wall-clock times and machine facts of stage runs, kept apart from the results.

Cached outputs hold only what the params, data and code determine, so that their hashes in
`dvc.lock` change exactly when the science does and a fresh `make repro` reproduces the
committed lock byte for byte. How long a run took, how fast it went and on what machine go
to `reports/timings.json` instead: not a DVC output (no hash, no cache), not in git, one
entry per stage and key (the part of `dataset/model/layer/t<t>` the stage depends on), the
latest run's, e.g.

    {"fit_diffc": {"fashion_mnist/fmnist-ddpm/trained/bottleneck/t25":
        {"seconds": 118.3, "train_seconds": 111.0, "train_samples_per_s": 901.2,
         "resumed_from": 0, "machine": {...}, "finished": "2026-12-01T23:10:04+00:00"}}}
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write
from pipeline.paths import Key, reports_dir

# The key fields each stage's output depends on (dvc.yaml's path templates); the rest: all five.
_KEY_FIELDS = {"data": ("dataset",), "model": ("model",), "encode": ("dataset", "model")}


def timings_path(root: Path = Path(".")) -> Path:
    return reports_dir(root) / "timings.json"


def machine_facts() -> dict[str, Any]:
    """What a timing depends on besides the code: the machine and the software on it."""
    import torch  # here, not at import: the stages without torch record timings too

    return {
        "cpu": _cpu_model() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def timing_key(stage: str, key: Key) -> str:
    names = _KEY_FIELDS.get(stage, ("dataset", "model", "control", "layer", "t"))
    return "/".join(f"t{key.t}" if n == "t" else str(getattr(key, n)) for n in names)


def record_fit_timing(stage: str, what: str, key: Key, fit: Any, root: Path = Path(".")) -> Path:
    """Print and record a finished training loop's speed: `fit` has `train_seconds`,
    `samples_per_s` and `resumed_from` (the k-SAE's and Diff-C's fit results)."""
    print(f"{what} trained for {fit.train_seconds:.1f} s, {fit.samples_per_s:.0f} samples/s")
    fields = {"train_seconds": fit.train_seconds, "train_samples_per_s": fit.samples_per_s,
              "resumed_from": fit.resumed_from}
    return record_timing(stage, key, fields, root)


def record_timing(stage: str, key: Key, fields: dict[str, Any], root: Path = Path(".")) -> Path:
    """Merge `fields` into the entry of `stage` and `key` in `reports/timings.json`,
    with the machine facts and the time of recording; returns the file's path.

    Read, update and replaced atomically (a kill leaves the old file). A torn or foreign file
    is started afresh: timings are informative, never worth failing a run for.
    """
    path = timings_path(root)
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    entry = table.setdefault(stage, {}).setdefault(timing_key(stage, key), {})
    entry.update(fields)
    entry["machine"] = machine_facts()
    entry["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return atomic_write(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
