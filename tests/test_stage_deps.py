"""Stage deps derived, not remembered: each DVC stage's code deps in dvc.yaml must be exactly
the modules its entry point can run — the import closure of `python -m stages.<name>` over
this repository's packages, lazy (function-level) imports included. A module missing from
dvc.yaml leaves cached results stale when it changes; a listed one the stage never imports
reruns the stage for nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.import_graph import PACKAGES, REPO, import_closure


def _stages() -> dict[str, dict]:
    """Each stage definition's body (a `foreach` stage's `do`: one body for all its rows)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _code_deps(stage: dict) -> list[Path]:
    return [Path(d) for d in stage.get("deps", []) if Path(d).parts[0] in PACKAGES]


def _covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_lists_every_module_it_runs(name: str) -> None:
    stage = _stages()[name]
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    closure, deps = import_closure(module), _code_deps(stage)
    missing = sorted(str(p) for p in closure if not _covered(p, deps))
    assert not missing, f"dvc.yaml: stage {name} runs but does not list: {', '.join(missing)}"
    unused = sorted(str(d) for d in deps if not any(p == d or d in p.parents for p in closure))
    assert not unused, f"dvc.yaml: stage {name} lists code it never imports: {', '.join(unused)}"


def test_closure_follows_lazy_and_package_imports() -> None:
    closure = import_closure("stages.model")
    assert Path("stages/__init__.py") in closure and Path("pipeline/__init__.py") in closure
    assert Path("pipeline/embedded/train.py") in closure  # imported inside run(), only for the embedded model
    assert Path("pipeline/backbones/synthetic.py") in closure
    assert Path("pipeline/sae/model.py") not in closure
