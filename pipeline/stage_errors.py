"""Errors a stage reports as one line (the user's to fix: data, params, weights, or a training
run that diverged), not as a traceback (ours to fix)."""

from __future__ import annotations

from pipeline.backbones.common import WeightsMismatch
from pipeline.backbones.weights import WeightsNotFound
from pipeline.checkpoints import NonFiniteLoss
from pipeline.config import ConfigError
from pipeline.datasets import DataError
from pipeline.store import StoreError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    StoreError,
    WeightsNotFound,
    WeightsMismatch,
    FileNotFoundError,
    NonFiniteLoss,
)
