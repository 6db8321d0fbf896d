"""Shared test set-up: the repository root and a valid params mapping to mutate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def default_params_raw() -> dict:
    """params.yaml as committed, parsed: tests mutate a deep copy."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
