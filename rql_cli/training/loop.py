"""The one training loop: take a step from the batch source, update, log, evaluate, save, stop.

Offline training, continued offline training and online fine-tuning all run here; they differ only
in their ``BatchSource`` (``session.py``). Ctrl-C / SIGTERM save a checkpoint at the current step and
name the command that continues; a NaN loss stops the run naming the step, the term and the last good
checkpoint; losses stay on the device between log rows (``LossWindow``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rql_cli.config import RunConfig
from rql_cli.device import resolve_device
from rql_cli.errors import NonFiniteLossError
from rql_cli.io.run_lock import RunLock
from rql_cli.io.run_record import RunOrigin
from rql_cli.training.observer import TrainObserver, TrainOutcome
from rql_cli.training.session import BatchSource, RunSession, check_resume, open_session
from rql_cli.training.signals import StopSignals

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
        row: dict[str, float] = dict(zip(LOGGED_TERMS, rows.mean(dim=0).tolist(), strict=True))
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


def run(
    config: RunConfig,
    run_dir: Path,
    open_source: Callable[[torch.device], BatchSource],
    *,
    resume: bool,
    observer: TrainObserver | None = None,
    origin: RunOrigin | None = None,
) -> TrainOutcome:
    """Open (or resume) the run in ``run_dir`` on the batches ``open_source(device)`` gives, and train it.

    Stop signals are caught from the start: while the data loads a first Ctrl-C stops at once (nothing
    is written yet); from the compile on it stops before the next step, with a checkpoint.
    """
    device = resolve_device(config.device)
    with RunLock(run_dir) as lock, StopSignals() as stop:
        with stop.interruptible():
            previous = check_resume(lock.run_dir, config) if resume else None
            source = open_source(device)
        try:
            session = open_session(config, source, lock, stop, device=device, previous=previous, origin=origin)
            return run_loop(session, observer or TrainObserver())
        finally:
            source.close()


def run_loop(session: RunSession, observer: TrainObserver) -> TrainOutcome:
    """Step until the source's total, logging, evaluating and saving when due; stop on a signal."""
    source, config, stop = session.source, session.config, session.stop
    observer.on_start(session.start_info())
    outcome = TrainOutcome(run_dir=session.run_dir, step=session.position, last_checkpoint=session.last_checkpoint)
    window = LossWindow()
    runtime = session.runtime
    assert runtime is not None, "open_session sets up the runtime"
    while session.position < source.total and not stop.requested:
        source.advance(session, window, observer)
        runtime.poll()
        position = session.position
        due = due_work(position, source.total, config.log_interval, config.eval_interval, config.save_interval,
                       stop.requested)
        if due.flush:
            row = window.flush(position, session.last_checkpoint)  # raises on a NaN loss
            if due.log:
                session.log(row, observer)
        if due.evaluate:
            outcome.last_eval = session.evaluate_and_save(observer) or outcome.last_eval
        elif due.save:
            session.save(observer)
    if stop.requested:
        if session.saved_at != session.position:  # not saved by an evaluation during this step
            session.save(observer)
        outcome.interrupted, outcome.resume_command = True, session.resume_command()
    outcome.step, outcome.last_checkpoint = session.position, session.last_checkpoint
    return outcome
