"""Exceptions the suite raises for user errors.

A ``UserError`` is something the user can fix (a config value, a path, a dataset). The CLI layer prints
its message without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input: its message names the thing and says how to fix it."""


class ConfigError(UserError):
    """A config value that is invalid or inconsistent with another."""


class DataError(UserError):
    """A dataset that is missing, malformed or inconsistent with the model."""


class UnfreezeError(UserError):
    """An unfreezing rule that selects nothing, overlaps itself or is out of range."""


class CheckpointError(UserError):
    """A checkpoint that does not exist, is unreadable or holds another architecture."""


class TrackingError(UserError):
    """A tracking store that cannot be reached or written."""


class RunDirInUse(UserError):
    """A run directory that a live `ttm-train` process is training in."""


class Pruned(Exception):
    """Raised by an epoch hook when a search prunes the run: not a failure, the run stops early."""


class StoreError(UserError):
    """A store (MLflow, Optuna) that is broken, half-migrated, or on a filesystem without working locks."""
