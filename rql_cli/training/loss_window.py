"""Per-step losses kept on the device between log rows, checked for NaN and averaged when a row is due."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rql_cli.errors import NonFiniteLossError

LOSS_TERMS = ("value", "bc", "policy", "total")
"""Loss terms in the order a NaN check names them: the first bad term is reported."""

LOGGED_TERMS = (*LOSS_TERMS, "value_mean", "target_mean")
"""What ``RQLAgent.update`` returns per step and metrics.csv keeps (besides step and timing)."""


class LossWindow:
    """Per-step metrics kept on the device until they are needed, then checked and averaged.

    ``add`` takes the dict ``RQLAgent.update`` returns without a host sync; ``flush`` copies the
    window to the host once, raises NonFiniteLossError naming the first bad step and term, and
    returns the window's mean row with its speed.
    """

    def __init__(self) -> None:
        self._rows: list[torch.Tensor] = []
        self._started = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Keep one step's scalars (``LOGGED_TERMS``), still on the device."""
        self._rows.append(torch.stack([metrics[k] for k in LOGGED_TERMS]))

    def flush(self, step: int, last_checkpoint: Path | None) -> dict[str, float] | None:
        """Check and average the window ending at ``step``; None when it is empty.

        Returns ``{term: mean, ..., 'step': step, 'steps_per_second': ...}``.
        """
        taken = self.take(step)
        if taken is None:
            return None
        rows, first_step, speed = taken
        check_finite(rows, first_step, last_checkpoint)
        return mean_row(rows, step, speed)

    def take(self, step: int) -> tuple[torch.Tensor, int, float] | None:
        """Empty the window ending at ``step``: (its rows on the host as float64, (steps, terms, ...);
        the step of its first row; steps per second since the last take), or None when it is empty."""
        if not self._rows:
            return None
        rows = torch.stack(self._rows).double().cpu()
        first_step = step - len(self._rows) + 1
        self._rows.clear()
        now = time.perf_counter()
        speed = len(rows) / max(now - self._started, 1e-9)
        self._started = now
        return rows, first_step, speed


def check_finite(rows: torch.Tensor, first_step: int, last_checkpoint: Path | None) -> None:
    """Raise NonFiniteLossError naming the first non-finite step and term of ``rows`` (steps, terms)."""
    bad = ~torch.isfinite(rows)
    if bad.any():
        index, term = (int(i) for i in torch.nonzero(bad)[0])
        raise NonFiniteLossError(first_step + index, LOGGED_TERMS[term], float(rows[index, term]), last_checkpoint)


def mean_row(rows: torch.Tensor, step: int, speed: float) -> dict[str, float]:
    """The metrics row of a window's ``rows`` (steps, terms): each term's mean, ``step``, ``steps_per_second``."""
    row: dict[str, float] = dict(zip(LOGGED_TERMS, rows.mean(dim=0).tolist(), strict=True))
    row.update(step=step, steps_per_second=speed)
    return row
