"""Stage deps derived, not remembered: each DVC stage's code deps in dvc.yaml must be exactly
the modules its entry point can run — the import closure of `python -m stages.<name>` over
this repository's packages, lazy (function-level) imports included. A module missing from
dvc.yaml leaves cached results stale when it changes; a listed one the stage never imports
reruns the stage for nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Repository modules a file imports (as dotted names), anywhere in it."""
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] in PACKAGES and _module_file(m) is not None}


def import_closure(module: str) -> set[Path]:
    """Files of every repository module `module` can import, itself and parent packages included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        todo.extend(_imports(_module_file(name)))
    return {_module_file(name).relative_to(REPO) for name in seen}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


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
    assert Path("pipeline/ddpm_train.py") in closure  # imported inside run(), only for the embedded model
    assert Path("pipeline/backbones/synthetic.py") in closure
    assert Path("pipeline/sae.py") not in closure
