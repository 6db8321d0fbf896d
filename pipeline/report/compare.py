"""The paper's tables from whatever experiments were run (`revelio compare`).

A *record* is one row of one run: its key (dataset, model, control, layer, t, prompt) and
its metrics from `reports/metrics.json`, which holds a block per row of the study
(pipeline.paths.CONTROLS: the trained model, the same architecture at initialisation, the
model's input). Records come from DVC experiments (`dvc.api.exp_show`: the workspace, its
baseline commit and every experiment) or from result folders (each holding params.yaml and
reports/metrics.json). Records are grouped by what varies:
- by control (what diffusion training adds): same dataset, model, layer, t, prompt;
- by layer (paper Table 2a / Fig. 4): same dataset, model, control, t, prompt;
- by timestep (Table 2b / Fig. 6): same dataset, model, control, layer, prompt;
- by model (Tables 2c, 3): same dataset, control, layer, t, prompt;
- by prompt (Tables 6-9): same dataset, model, control, layer, t;
and each group with two or more records becomes a table: Diff-C top-1 (mean ± std over
seeds), the linear probe, σ_label and the order-free purity scores, with the paper's value
alongside when the paper ran that exact configuration at that image size
(pipeline.report.paper_values). The input row's layer is the pseudo-layer `input`: it joins
the control tables of every layer at its t.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.paths import CONTROLS, INPUT_LAYER, Key
from pipeline.report.paper_values import paper_value

KEY = ("dataset", "model", "control", "layer", "t", "prompt")
# column name → path in a row's block of reports/metrics.json
METRICS = {
    "diffc_top1": ("diffc", "top1_pct"),
    "diffc_top1_std": ("diffc", "top1_std"),
    "probe_top1": ("probe", "top1_pct"),
    "diffc_top5": ("diffc", "top5_pct"),
    "clip_top1": ("clip", "top1_pct"),
    "sigma_label": ("sae", "sigma_label"),
    "majority": ("sae", "majority"),
    "entropy": ("sae", "entropy"),
    "sigma_label_code": ("sae", "code", "sigma_label"),
    "sae_fvu": ("sae", "fvu"),
}
GROUPINGS = {
    "control": "Trained model against its controls (what diffusion training adds)",
    "layer": "Accuracy and σ_label by layer (paper Table 2a, Fig. 4)",
    "t": "Accuracy and σ_label by timestep (paper Table 2b, Fig. 6)",
    "model": "Accuracy and σ_label by model (paper Tables 2c, 3)",
    "prompt": "Accuracy by prompt (paper Tables 6-9)",
}


@dataclass(frozen=True)
class Record:
    key: dict[str, Any]
    metrics: dict[str, float | None]
    source: str = ""
    # Every other parameter that can change the numbers, as sorted (name, value) pairs: runs
    # share a table only when these agree (a sweep at diffc.epochs=3 is not compared with a
    # run at 10).
    config: tuple = ()

    def key_tuple(self) -> tuple:
        return tuple(self.key[k] for k in KEY)


@dataclass
class Table:
    title: str
    fixed: dict[str, Any]
    varying: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # params unlike most runs'


def _param_names() -> list[str]:
    """Dotted names of every parameter pipeline.config knows, e.g. "sae.k"."""
    from pydantic import BaseModel

    from pipeline.config import Params

    names = []
    for name, field_info in Params.model_fields.items():
        ann = field_info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += [f"{name}.{sub}" for sub in ann.model_fields]
        else:
            names.append(name)
    return names


# Parameters that cannot change a run's metrics: where it ran and what it drew.
_NOT_RESULTS = ("render.",)
_NOT_RESULTS_SUFFIX = (".device", ".num_workers")


def _config(flat: dict[str, Any]) -> tuple:
    out = []
    for name in _param_names():
        if name in KEY or name.startswith(_NOT_RESULTS) or name.endswith(_NOT_RESULTS_SUFFIX):
            continue
        if name in flat:
            value = flat[name]
            out.append((name, json.dumps(value, sort_keys=True, default=str)))
    return tuple(out)


def _flatten(params: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for k, v in params.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{sub}": sv for sub, sv in v.items()})
        else:
            flat[k] = v
    return flat


def _dig(data: dict[str, Any], path: Sequence[str]) -> float | None:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return float(data) if isinstance(data, (int, float)) else None


def records_from_files(params: dict[str, Any], metrics: dict[str, Any], source: str = "") -> list[Record]:
    """One record per row of the study found in `metrics`."""
    out = []
    config = _config(_flatten(params))
    for control in CONTROLS:
        if not isinstance(metrics.get(control), dict):
            continue
        key = {k: params.get(k, "empty" if k == "prompt" else None) for k in KEY if k != "control"}
        key = {**key, **_row_key(control, key["layer"])}
        metrics_row = {name: _dig(metrics[control], path) for name, path in METRICS.items()}
        out.append(Record(key, metrics_row, source, config))
    return out


def _row_key(control: str, layer: str) -> dict[str, str]:
    # The row's layer as `Key` defines it (the input row's is the pseudo-layer `input`).
    return {"control": control, "layer": Key("", "", layer, 0, control).layer}


def records_from_folders(folders: Iterable[Path]) -> list[Record]:
    out = []
    for folder in folders:
        folder = Path(folder)
        params = yaml.safe_load((folder / "params.yaml").read_text())
        metrics_file = folder / "reports" / "metrics.json"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"{metrics_file} not found: run `dvc repro` in {folder} first")
        out += records_from_files(params, json.loads(metrics_file.read_text()), str(folder))
    return out


def records_from_exp_show(rows: Iterable[dict[str, Any]]) -> list[Record]:
    """dvc.api.exp_show() rows: flat dicts of params and metrics by dotted name."""
    out = []
    # Committed runs first, the workspace last: when both hold a key, the committed numbers win
    # (while `dvc exp run` is running, the workspace's metrics belong to the previous run).
    rows = sorted(rows, key=lambda row: row.get("rev") == "workspace")
    for row in rows:
        if any(row.get(k) is None for k in ("dataset", "model", "layer", "t")):
            continue
        if str(row.get("State") or "").lower() in ("running", "queued", "failed"):
            continue
        base = {k: row.get(k, "empty") if k == "prompt" else row[k] for k in KEY if k != "control"}
        base["t"] = int(base["t"])
        name = row.get("Experiment") or row.get("rev") or ""
        # exp_show gives numbers as floats (t: 25.0): normalise integral values.
        flat = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in row.items()}
        for control in CONTROLS:
            metrics = {}
            for metric, path in METRICS.items():
                value = row.get(".".join((control, *path)))
                metrics[metric] = float(value) if isinstance(value, (int, float)) else None
            if metrics["diffc_top1"] is None and metrics["sigma_label"] is None:
                continue  # not evaluated (e.g. a failed or queued experiment)
            key = {**base, **_row_key(control, base["layer"])}
            out.append(Record(key, metrics, str(name), _config(flat)))
    return out


def unique(records: Iterable[Record]) -> list[Record]:
    """One record per key and config: the first seen."""
    seen: dict[tuple, Record] = {}
    for r in records:
        seen.setdefault((r.key_tuple(), r.config), r)
    return list(seen.values())


def _most_common(records: list[Record]) -> dict[str, str]:
    """Per parameter, its most frequent value over the runs (ties: the first seen)."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        for name, value in r.config:
            counts.setdefault(name, {}).setdefault(value, 0)
            counts[name][value] += 1
    return {name: max(values, key=values.get) for name, values in counts.items()}


def _sort_value(varying: str, value: Any) -> Any:
    if varying == "control":
        return CONTROLS.index(value) if value in CONTROLS else len(CONTROLS)
    if varying == "layer":  # bottleneck, up_ft0.., block0..: by name, with numbers numerically
        head = value.rstrip("0123456789")
        tail = value[len(head) :]
        return (head != "bottleneck", head, int(tail) if tail else -1)
    return value


def tables(records: Iterable[Record]) -> list[Table]:
    records = unique(records)
    out = []
    for varying, title in GROUPINGS.items():
        fixed_keys = [k for k in KEY if k != varying]
        groups: dict[tuple, list[Record]] = {}
        for r in records:
            if varying == "control" and r.key["control"] == INPUT_LAYER:
                continue  # joins every layer's group at its t, below
            groups.setdefault((tuple(r.key[k] for k in fixed_keys), r.config), []).append(r)
        if varying == "control":
            _add_input_rows(groups, fixed_keys, records)
        common = _most_common(records)
        for (fixed, config), members in groups.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda r: _sort_value(varying, r.key[varying]))
            columns = [varying, "Diff-C top-1 %", "± std", "probe top-1 %", "paper top-1 %", "σ_label",
                       "paper σ_label", "majority", "entropy (bits)", "σ_label (TopK codes)", "k-SAE test FVU"]
            table = Table(title, dict(zip(fixed_keys, fixed)), varying, columns)
            # Name what sets this group apart from most runs.
            table.differs = [f"{n}={json.loads(v)}" for n, v in config if common.get(n, v) != v]
            for r in members:
                table.rows.append([
                    r.key[varying],
                    r.metrics["diffc_top1"],
                    r.metrics["diffc_top1_std"],
                    r.metrics["probe_top1"],
                    _paper(r, "diffc_top1"),
                    r.metrics["sigma_label"],
                    _paper(r, "sigma_label"),
                    r.metrics["majority"],
                    r.metrics["entropy"],
                    r.metrics["sigma_label_code"],
                    r.metrics["sae_fvu"],
                ])
            out.append(table)
    return out


def _add_input_rows(groups: dict[tuple, list[Record]], fixed_keys: list[str], records: list[Record]) -> None:
    """Put each input row into the control group of every layer at its (dataset, model, t, prompt)."""
    layer_at = fixed_keys.index("layer")
    for r in records:
        if r.key["control"] != INPUT_LAYER:
            continue
        for (fixed, config), members in groups.items():
            same = all(fixed[i] == r.key[k] for i, k in enumerate(fixed_keys) if i != layer_at)
            if same and config == r.config:
                members.append(r)


def _paper(r: Record, metric: str) -> float | None:
    """The paper's value for this record (the paper reports trained models only)."""
    if r.key["control"] != "trained":
        return None
    k = r.key
    # The paper measured σ_label at 256 px and Diff-C at 512 px: only a run at that size compares.
    size = dict(r.config).get("data.image_size")
    size = int(json.loads(size)) if size is not None else None
    return paper_value(k["dataset"], k["model"], k["layer"], k["t"], k["prompt"], size, metric)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def to_markdown(table: Table) -> str:
    fixed = ", ".join(f"{k} = {v}" for k, v in table.fixed.items())
    if table.differs:
        fixed += "; unlike most runs: " + ", ".join(table.differs)
    lines = [f"### {table.title}", "", f"{fixed}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*table.fixed.keys(), *table.columns])
    for row in table.rows:
        writer.writerow([*table.fixed.values(), *("" if v is None else v for v in row)])
    return buf.getvalue()


def table_name(table: Table) -> str:
    fixed = "_".join(str(v) for v in table.fixed.values())
    if table.differs:
        fixed += "_" + "_".join(table.differs)
    return f"by_{table.varying}-{fixed}".replace("/", "-").replace(" ", "")
