"""The errors a stage reports as one line, not a traceback: problems the user fixes (params,
data, a store, weights, a training run that diverged), each naming the key, file or value at
fault. Anything else is ours to fix and keeps its traceback.

Defined here, in the core, so that the stage entry (`stages/_entry.py`) can catch them all
without importing the backbones, the store or the datasets: editing its error policy must not
rerun the model stage. Each keeps the builtin base callers already catch (`ValueError` for a
bad value, `RuntimeError` for a missing resource).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error a stage reports as `error: <message>` with exit status 1."""


class ConfigError(UserError, ValueError):
    """A parameter problem, phrased as one line for the user (params.yaml keys are exit 2)."""


class DataError(UserError, ValueError):
    """A problem with the input data; the message names the files or folders to fix."""


class StoreError(UserError, RuntimeError):
    """A feature-store problem, phrased for the user (names the store path)."""


class WeightsNotFound(UserError, RuntimeError):
    """No usable weights; the message says where they were looked for and how to provide them."""


class WeightsMismatch(UserError, ValueError):
    """Weights whose structure disagrees with what the registry / params expect."""


class NonFiniteLoss(UserError, FloatingPointError):
    """A training loss (or the weights) went inf/NaN. The loop stops before writing another
    checkpoint, so the one on disk is the last good state."""


# What the stage entry reports as one line: ours, and a missing input file (an upstream
# stage not run yet: the message names the file).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
