"""The committed results are the committed code's: `dvc.lock` records, for every stage, the
hash of each code file and param it ran with. A code file or param that differs from it means
the committed `dvc.lock` and `reports/metrics.json` were not produced by this tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _tracked(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def stale_entries(status: dict, tracked: list[str]) -> list[str]:
    """The deps and params of `dvc status --json` that are in git and differ from dvc.lock.
    Data and model deps (outputs of other stages, not in git) are left to DVC."""

    def in_git(path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(t == path or t.startswith(prefix) for t in tracked)

    stale = []
    for stage, changes in status.items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            for path, what in change.get("changed deps", {}).items():
                if in_git(path):
                    stale.append(f"{stage}: {path} ({what})")
            for file, keys in change.get("changed params", {}).items():
                stale.extend(f"{stage}: {file}:{key} ({what})" for key, what in keys.items())
    return stale


def test_stale_entries_picks_code_and_params_only() -> None:
    status = {
        "fit_sae": [
            {"changed deps": {"pipeline/sae/model.py": "modified", "features/x/t25.zarr": "deleted"}},
            {"changed outs": {"models/sae/x": "not in cache"}},
        ],
        "model": [{"changed deps": {"pipeline/backbones": "modified"}}, {"changed params": {"params.yaml": {"model_train.steps": "modified"}}}],
        "data": ["always changed"],
    }
    tracked = ["pipeline/sae/model.py", "pipeline/backbones/sd.py"]
    assert stale_entries(status, tracked) == [
        "fit_sae: pipeline/sae/model.py (modified)",
        "model: pipeline/backbones (modified)",
        "model: params.yaml:model_train.steps (modified)",
    ]


def test_dvc_lock_matches_the_code_and_params(repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=repo_root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    stale = stale_entries(json.loads(proc.stdout or "{}"), _tracked(repo_root))
    assert not stale, (
        "dvc.lock was made with other code or params than this tree holds: run `make repro` on a fresh "
        "clone and commit its dvc.lock and reports/metrics.json. Differing: " + "; ".join(stale)
    )
