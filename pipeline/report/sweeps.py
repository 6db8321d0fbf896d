"""Sweeps as queued DVC experiments: one `dvc exp run --queue` per key, run by N workers.

`revelio sweep` queues a layer × t grid and starts DVC's own queue (`dvc queue start -j N`):
each worker runs one experiment at a time in its own copy of the repository
(`.dvc/tmp/exps/`), all sharing the repository's DVC cache, so what two keys share (data,
model, latents) is computed once and restored for the other. On a machine with several GPUs
each stage's `device: auto` takes a GPU no other revelio process holds
(`pipeline.devices.claim_gpu`), so N workers spread over N GPUs. `revelio compare` reads the
finished experiments like any others.

Two things the queue needs that a workspace loop does not: DVC names experiments uniquely per
commit (`sweep-<layer>-t<t>`, with a prefix of your choice), and a queued stage runs
`python -m stages.X` with the `python` on the worker's PATH in a copy that has no `.venv`,
so the workers get this interpreter's folder first on PATH (`worker_env`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from pipeline.config import Params, parse_params

# What `dvc queue status` calls a task that has not finished.
PENDING = ("Queued", "Running")


def experiment_name(prefix: str, layer: str, t: int) -> str:
    return f"{prefix}-{layer}-t{t}"


def sweep_commands(
    layers: Iterable[str], timesteps: Iterable[int], overrides: Iterable[str] = (), prefix: str = "sweep"
) -> list[list[str]]:
    """One `dvc exp run --queue` per (layer, t), layers outermost; `overrides` (KEY=VALUE, as
    for `-S`) apply to every experiment."""
    extra = [part for override in overrides for part in ("-S", override)]
    return [
        ["dvc", "exp", "run", "--queue", "-n", experiment_name(prefix, layer, t), "-S", f"layer={layer}",
         "-S", f"t={t}", *extra]
        for layer, t in itertools.product(layers, timesteps)
    ]


def resolve_overrides(params_file: Path, overrides: Iterable[str]) -> Params:
    """The validated params an experiment would run with: `params_file` with the `-S` overrides
    applied by DVC's own code for `dvc exp run -S` (on a copy; the file is untouched)."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        shutil.copy(params_file, path)
        apply_overrides(path, list(overrides))
        return parse_params(yaml.safe_load(path.read_text()))


def dvc_executable() -> str:
    """`dvc` on PATH, else the one beside this interpreter (`.venv/bin/revelio` run without
    activating the venv)."""
    beside = Path(sys.executable).parent / "dvc"
    return shutil.which("dvc") or (str(beside) if beside.exists() else "dvc")


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this interpreter's folder first on PATH, so that the
    queue workers' stages run with this environment's python and packages."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def queue_status(root: Path = Path(".")) -> dict[str, str]:
    """{experiment name (or task id): status} of the repository's queue, as `dvc queue status`
    reads it (DVC's own celery queue API)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {task.get("name") or task["rev"][:7]: task["status"] for task in repo.experiments.celery_queue.status()}


def wait_for(
    names: list[str],
    status: Callable[[], dict[str, str]],
    *,
    poll_s: float = 10.0,
    report: Callable[[Counter[str]], None] = lambda counts: None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Poll `status()` until none of `names` is queued or running; `report(counts)` on every
    change. Returns each name's final status ("Success", "Failed", ...; "missing" when the
    queue lost it)."""
    last: Counter[str] | None = None
    while True:
        now = status()
        final = {name: now.get(name, "missing") for name in names}
        counts = Counter(final.values())
        if counts != last:
            report(counts)
            last = counts
        if not any(counts[state] for state in PENDING):
            return final
        sleep(poll_s)
