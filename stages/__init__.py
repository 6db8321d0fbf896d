"""DVC stage entry points: `python -m stages.<name>`, one per stage of dvc.yaml.

DVC runs each stage with whatever `python` comes first on PATH. In a shell where the
project's venv is not active that is the system python, which lacks the project's packages.
So before any stage imports them, this checks that they can be found (an import-free look-up,
a few milliseconds), and if they cannot:

- with the repository's `.venv` present (what `make repro` / `make test` set up), the stage
  re-runs itself under `.venv/bin/python`, saying so on stderr;
- otherwise it exits with one line saying how to get them (`make repro`, or activate a venv).

Set REVELIO_NO_VENV=1 to turn the re-run off (the one-line error remains).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# Top-level modules of pyproject.toml's dependencies that the stages import.
_REQUIRED = ("numpy", "torch", "torchvision", "diffusers", "safetensors", "zarr", "pydantic", "yaml", "tqdm",
             "matplotlib", "sklearn", "PIL")
_GUARD = "REVELIO_NO_VENV"


def _check_environment() -> None:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = Path(__file__).resolve().parents[1] / ".venv"
    python = venv / "bin" / "python"
    # sys.prefix, not the executable: a venv's python is a link to the system one.
    in_venv = Path(sys.prefix).resolve() == venv.resolve()
    if python.is_file() and not in_venv and not os.environ.get(_GUARD):
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        print(f"stages: {sys.executable} lacks {shown}; running under {python}", file=sys.stderr)
        os.environ[_GUARD] = "1"  # never loop: the venv's python does not re-run itself
        os.execv(python, [str(python), *sys.orig_argv[1:]])
    fix = "run `make setup` (the venv is incomplete)" if in_venv else (
        "run `make repro` (it sets up .venv and runs DVC with it), or activate the venv first "
        "(`. .venv/bin/activate`)"
    )
    raise SystemExit(f"error: {sys.executable} has no module named {missing[0]!r}: {fix}")


_check_environment()
