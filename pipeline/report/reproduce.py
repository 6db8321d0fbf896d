"""Does this run reproduce the committed results? `revelio check-metrics` (CI runs it after
`make repro`) compares `reports/metrics.json` with the committed one.

On the machine that made the committed results the run reproduces them byte for byte (the
outputs hold no timings; see pipeline.timings), so the tolerances below are for everywhere
else: another CPU (without bf16 units `auto` trains in fp32), another thread count, a GPU.
They are wide enough for such changes of the last bits and narrow enough to catch a broken
stage (a Diff-C that stopped learning, a k-SAE whose latents lost their purity, a backbone that
did not train).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """`metric` (a dotted path into metrics.json) must stay within `abs_tol` of the reference."""

    metric: str
    abs_tol: float
    unit: str = ""


# Diff-C top-1 is a mean over seeds (its std over 3 seeds is ~0.7 points on the embedded default).
# The probe is one fit on 2,000 test images (standard error ~0.8 points): on another AMX CPU
# (2026-12-03) the model trained to other last bits and the probe moved 1.05 points (Diff-C
# +0.42, σ_label +0.10), so 1.0 was too narrow for what it is meant to let through.
TOLERANCES = (
    Tolerance("trained.diffc.top1_pct", 1.5, " points"),
    Tolerance("init.diffc.top1_pct", 1.5, " points"),
    Tolerance("input.diffc.top1_pct", 1.5, " points"),
    Tolerance("trained.probe.top1_pct", 2.0, " points"),
    Tolerance("trained.sae.sigma_label", 0.15),
)
# The trained backbone's held-out ε-MSE must be below this fraction of the initialisation's.
LEARNT_TIMESTEP, LEARNT_RATIO = 25, 0.5


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def committed_metrics(path: Path = Path("reports/metrics.json"), rev: str = "HEAD") -> dict[str, Any]:
    """The metrics file as committed at `rev` (git show), for comparing a fresh run with it."""
    proc = subprocess.run(["git", "show", f"{rev}:{path.as_posix()}"], capture_output=True, text=True)
    if proc.returncode:
        raise FileNotFoundError(f"{path} at {rev}: {proc.stderr.strip() or 'not in git'}")
    return json.loads(proc.stdout)


def check_metrics(current: dict[str, Any], reference: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(report lines, failures): each tolerance checked against the reference, and that the
    trained backbone learnt (when the metrics have a `model` section or the reference does)."""
    lines: list[str] = []
    failures: list[str] = []
    for tol in TOLERANCES:
        values = {}
        for name, metrics in (("this run's metrics", current), ("the committed metrics", reference)):
            try:
                values[name] = float(lookup(metrics, tol.metric))
            except KeyError:
                failures.append(f"{tol.metric}: missing from {name}")
        if len(values) < 2:
            continue
        now, ref = values.values()
        ok = abs(now - ref) <= tol.abs_tol
        lines.append(
            f"{'ok  ' if ok else 'FAIL'} {tol.metric}: {now:.4f} now, {ref:.4f} committed "
            f"(diff {now - ref:+.4f}, allowed ±{tol.abs_tol}{tol.unit})"
        )
        if not ok:
            failures.append(f"{tol.metric} = {now:.4f} is more than {tol.abs_tol}{tol.unit} from the committed {ref:.4f}")
    key = f"model.heldout_eps_mse.t{LEARNT_TIMESTEP}"
    if "model" in current or "model" in reference:
        try:
            trained, init = float(lookup(current, f"{key}.trained")), float(lookup(current, f"{key}.init"))
        except KeyError:
            failures.append(f"{key}: missing from this run's metrics")
        else:
            ok = trained < LEARNT_RATIO * init
            lines.append(
                f"{'ok  ' if ok else 'FAIL'} {key}: trained {trained:.4f} vs init {init:.4f} "
                f"(ratio {trained / init:.3f}, must be < {LEARNT_RATIO})"
            )
            if not ok:
                failures.append(f"{key}.trained = {trained:.4f} is not below {LEARNT_RATIO} x init ({init:.4f})")
    return lines, failures
