"""The one training loop: take a step from the batch source, update, log, evaluate, save, stop.

Offline training, continued offline training and online fine-tuning all run here; they differ only
in their ``BatchSource`` (``session.py``). Ctrl-C / SIGTERM save a checkpoint at the current step and
name the command that continues; a NaN loss stops the run naming the step, the term and the last good
checkpoint; losses stay on the device between log rows (``LossWindow``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rql_cli.config import RunConfig
from rql_cli.device import resolve_device
from rql_cli.io.run_lock import RunLock
from rql_cli.io.run_record import RunOrigin
from rql_cli.results import EvalResult
from rql_cli.training.loss_window import LOGGED_TERMS, LOSS_TERMS, LossWindow
from rql_cli.training.observer import TrainObserver, TrainOutcome
from rql_cli.training.runtime import Runtime
from rql_cli.training.session import BatchSource, check_resume, open_session
from rql_cli.training.signals import StopSignals

__all__ = ["LOGGED_TERMS", "LOSS_TERMS", "LossWindow", "LoopSession", "run", "run_loop"]


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
            try:
                return run_loop(session, observer or TrainObserver())
            finally:
                session.close()
        finally:
            source.close()


class LoopSession(Protocol):
    """What the loop drives: one run (``session.RunSession``) or a group of seeds (``group.GroupSession``)."""

    config: RunConfig
    run_dir: Path
    stop: StopSignals
    runtime: Runtime | None
    last_checkpoint: Path | None
    saved_at: int | None

    @property
    def position(self) -> int: ...
    @property
    def total(self) -> int: ...
    def new_window(self) -> LossWindow: ...
    def advance(self, window: LossWindow, observer: TrainObserver) -> None: ...
    def log(self, row: dict[str, float] | None, observer: TrainObserver) -> None: ...
    def evaluate_and_save(self, observer: TrainObserver) -> EvalResult | None: ...
    def save(self, observer: TrainObserver) -> Path: ...
    def resume_command(self) -> str: ...
    def start_info(self) -> dict[str, Any]: ...


def run_loop(session: LoopSession, observer: TrainObserver) -> TrainOutcome:
    """Step until the run's total, logging, evaluating and saving when due; stop on a signal."""
    config, stop, total = session.config, session.stop, session.total
    observer.on_start(session.start_info())
    outcome = TrainOutcome(run_dir=session.run_dir, step=session.position, last_checkpoint=session.last_checkpoint)
    window = session.new_window()
    runtime = session.runtime
    assert runtime is not None, "open_session sets up the runtime"
    while session.position < total and not stop.requested:
        session.advance(window, observer)
        runtime.poll()
        position = session.position
        due = due_work(position, total, config.log_interval, config.eval_interval, config.save_interval,
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
