"""User-facing errors.

Every layer raises :class:`RQLError` (or a subclass) for problems the user can fix: a missing
dataset file, an unknown field, a corrupt checkpoint. The CLI prints the message, exits with code 1
and shows a traceback only with ``--debug``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib


class RQLError(Exception):
    """A problem with the user's input or files, with a message that says how to fix it."""


class DatasetNotFoundError(RQLError):
    """A dataset file is not where we looked."""


class DatasetError(RQLError):
    """A dataset file that exists but cannot be used: unreadable, wrong sizes, non-finite values."""


class UnknownNameError(RQLError):
    """An unknown dataset, environment or preset name."""


class ConfigError(RQLError):
    """An unknown config field or a value of the wrong type."""


class CheckpointError(RQLError):
    """A checkpoint folder that is missing a file, is corrupt, or does not fit the environment."""


class HubError(RQLError):
    """A Hugging Face Hub repo that cannot be found, reached, read or written (or no token to write)."""


class NonFiniteLossError(RQLError):
    """A loss became NaN or infinite during training."""

    def __init__(self, step: int, term: str, value: float, last_checkpoint: object = None):
        kept = (
            f"the last good checkpoint is kept at {last_checkpoint}"
            if last_checkpoint
            else "no checkpoint had been saved yet"
        )
        super().__init__(
            f"Loss term '{term}' became {value} at step {step}. Training stopped; {kept}. "
            "Try a lower learning rate (--set lr=1e-4) or check the dataset for NaN or huge values."
        )
        self.step = step
        self.term = term
        self.value = value


def closest_names(name: str, choices: list[str], n: int = 3) -> list[str]:
    """The ``n`` entries of ``choices`` closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
