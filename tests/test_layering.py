"""Imports flow one way through the library's layers (README, Layout): a module imports only
from its own unit or from units in lower layers, never back up; `pipeline` never imports the
stages; and the stage entry's closure stays in the core, so editing its error policy or the
timings does not invalidate the cached backbone, features or fits of other code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import REPO, import_closure, imports_of, module_name

# Layer by layer, bottom first. Units of one layer do not import each other (the k-SAE and
# Diff-C are peers; so are the embedded model's trainer and the feature store).
LAYERS: list[list[str]] = [
    ["core"],  # pipeline's top-level modules: errors, paths, devices, distributed, training, ...
    ["pipeline.backbones"],  # the adapters and their registry; no params, no datasets
    ["pipeline.config"],  # params.yaml → Params, validated against the registry
    ["pipeline.data"],
    ["pipeline.embedded", "pipeline.features"],
    ["pipeline.sae", "pipeline.diffc"],
    ["pipeline.report", "pipeline.interop"],  # interop: other libraries' formats for the k-SAE
    ["pipeline.cli"],
    ["stages"],
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    if len(parts) >= 2 and ".".join(parts[:2]) in RANK:
        return ".".join(parts[:2])
    return "core"  # `pipeline` itself and its top-level modules


def _modules() -> list[Path]:
    return sorted(p for pkg in ("pipeline", "stages") for p in (REPO / pkg).rglob("*.py"))


def test_every_library_module_has_a_layer() -> None:
    top = {module_name(p) for p in _modules() if len(module_name(p).split(".")) == 2 and p.name != "__init__.py"}
    core = sorted(m for m in top if unit_of(m) == "core")
    # A new top-level module is a decision: it joins the core here, or goes into a package.
    assert core == [
        "pipeline.allocator", "pipeline.curves", "pipeline.devices", "pipeline.distributed", "pipeline.errors",
        "pipeline.files", "pipeline.paths", "pipeline.seeds", "pipeline.timings", "pipeline.training",
    ]


def _back_arrows(path: Path, name: str) -> list[str]:
    me = unit_of(name)
    return sorted(m for m in imports_of(path, name) if (other := unit_of(m)) != me and RANK[other] >= RANK[me])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_never_run_back_up(path: Path) -> None:
    back = _back_arrows(path, module_name(path))
    assert not back, f"{path.relative_to(REPO)} ({unit_of(module_name(path))}) imports up or sideways: {', '.join(back)}"


def test_the_stage_entry_stays_in_the_core() -> None:
    closure = {module_name(REPO / p) for p in import_closure("stages._entry")}
    allowed = {"core", "pipeline.config", "stages"}
    registry = {"pipeline.backbones", "pipeline.backbones.registry"}  # what config validates against
    outside = sorted(m for m in closure - registry if unit_of(m) not in allowed)
    assert not outside, f"stages/_entry.py pulls in {', '.join(outside)}"


def test_the_layering_check_sees_a_back_arrow(tmp_path: Path) -> None:
    """The check itself: a core module importing a package is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pipeline.sae.model import KSae\n    return KSae\n")
    assert _back_arrows(probe, "pipeline.probe") == ["pipeline.sae.model"]
    # ... and a sideways one between peers of a layer.
    assert _back_arrows(probe, "pipeline.diffc.probe") == ["pipeline.sae.model"]
    assert _back_arrows(probe, "pipeline.report.probe") == []
