"""Small pieces every training loop shares: stop signals, the loss window with its NaN check, due steps.

``train.py`` (offline training) uses them, and so does any other loop (fine-tuning) so that Ctrl-C,
SIGTERM, a NaN loss and the CSV bookkeeping behave the same way everywhere.
"""

from __future__ import annotations

import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from rql_cli.errors import NonFiniteLossError

LOSS_TERMS = ("value", "bc", "policy", "total")
"""Loss terms in the order a NaN check names them: the first bad term is reported."""

LOGGED_TERMS = (*LOSS_TERMS, "value_mean", "target_mean")
"""What ``RQLAgent.update`` returns per step and metrics.csv keeps (besides step and timing)."""


class StopSignals:
    """Catch SIGINT and SIGTERM while a loop runs; the loop checks ``requested`` between steps.

    The first signal asks the loop to stop at the next step boundary (after saving a checkpoint);
    a second one stops at once (KeyboardInterrupt). Handlers are restored on exit. Outside the main
    thread signals cannot be caught, and the caller handles interruption.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
        if not self._rows:
            return None
        rows = torch.stack(self._rows).double().cpu()
        first_step = step - len(self._rows) + 1
        self._rows.clear()
        bad = ~torch.isfinite(rows)
        if bad.any():
            index, term = (int(i) for i in torch.nonzero(bad)[0])
            raise NonFiniteLossError(first_step + index, LOGGED_TERMS[term], float(rows[index, term]), last_checkpoint)
        now = time.perf_counter()
        row: dict[str, float] = dict(zip(LOGGED_TERMS, rows.mean(dim=0).tolist()))
        row.update(step=step, steps_per_second=len(rows) / max(now - self._started, 1e-9))
        self._started = now
        return row


@dataclass(frozen=True)
class DueWork:
    """What a loop owes at one step: a metrics row, an evaluation (with its checkpoint), a checkpoint."""

    log: bool
    evaluate: bool
    save: bool
    stop: bool

    @property
    def flush(self) -> bool:
        """Whether the loss window must be checked now (anything is due, or a stop was asked for)."""
        return self.log or self.evaluate or self.save or self.stop


def due_work(step: int, total: int, log_interval: int, eval_interval: int, save_interval: int, stop: bool) -> DueWork:
    """The work due at ``step`` of ``total`` for these intervals (0: never, except at the last step)."""
    return DueWork(
        log=is_due(step, log_interval, total), evaluate=is_due(step, eval_interval, total),
        save=save_interval > 0 and step % save_interval == 0, stop=stop,
    )


def is_due(step: int, interval: int, total: int) -> bool:
    """Whether ``step`` is a multiple of ``interval`` (0: never) or the last step ``total``."""
    return step == total or (interval > 0 and step % interval == 0)


def resume_command(run_dir: Path, command: str = "rql train") -> str:
    """The shell command (``command`` plus ``--resume``) that continues the run in ``run_dir``."""
    return f"{command} --resume {shlex.quote(str(run_dir))}"
