"""Early stopping for a search: a sweep's runs as Ray Tune trials under ASHA on their periodic evaluations.

Asynchronous successive halving (Li et al., 2020; Ray Tune's ``ASHAScheduler``): at each rung
(``grace_steps`` x ``reduction_factor``^k gradient steps) a run whose periodic ``metric`` falls below
the best 1/``reduction_factor`` of the runs that reached that rung before it is stopped there. A
stopped run keeps its folder, logs and latest checkpoint, and ``SWEEP/scheduler.json`` names it with the
step it stopped at, so `rql report` shows it and the same command again leaves it stopped.

Tune keeps its experiment state in ``SWEEP/tune/`` and the same command restores it (trial bookkeeping:
finished and stopped trials stay so, interrupted ones start again and their runs resume from their
latest checkpoints). ASHA's rung records are not part of that state: after a resume, runs still going
are judged against the results reported since.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rql_cli.errors import RQLError
from rql_cli.io.atomic import write_json_atomic
from rql_cli.results import EvalResult
from rql_cli.sweep.execute import (
    FINISHED,
    SCHEDULER_FILE,
    Progress,
    RunState,
    start_ray,
    state_of,
    stopped_runs,
    train_one,
)
from rql_cli.sweep.plan import PlannedRun
from rql_cli.training.observer import TrainObserver

TUNE_DIR = "tune"
METRICS = ("success_rate", "mean_return")


@dataclass
class AshaSettings:
    """ASHA's knobs: the periodic evaluation ``metric`` it ranks runs by (higher is better), the first
    rung ``grace_steps`` (gradient steps) and the ``reduction_factor`` (keep the best 1/factor at each rung)."""

    metric: str = "success_rate"
    grace_steps: int = 0
    reduction_factor: float = 3.0

    def check(self, eval_interval: int) -> AshaSettings:
        """These settings with the grace period resolved (0: two evaluation intervals), or one message."""
        if self.metric not in METRICS:
            raise RQLError(f"--asha-metric takes {' or '.join(METRICS)}, got '{self.metric}'.")
        if self.reduction_factor < 2:
            raise RQLError(f"--reduction-factor must be 2 or more, got {self.reduction_factor}.")
        if eval_interval <= 0:
            raise RQLError("ASHA ranks runs by their periodic evaluations: give --eval-interval a positive value.")
        grace = self.grace_steps or 2 * eval_interval
        if grace < eval_interval:
            raise RQLError(f"--grace-steps {grace} comes before the first evaluation (step {eval_interval}): ASHA "
                           "would have nothing to rank runs by.")
        return AshaSettings(self.metric, grace, self.reduction_factor)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "asha", **asdict(self)}


def _record_stop(sweep_dir: Path, settings: AshaSettings, name: str, step: int) -> None:
    stopped = {**stopped_runs(sweep_dir), name: step}
    write_json_atomic(Path(sweep_dir) / SCHEDULER_FILE, {"scheduler": settings.to_dict(), "stopped": stopped})


class _Reporter(TrainObserver):
    """In the trial's worker: each periodic evaluation goes to Tune once its step's checkpoint is written
    (Tune may stop the trial at once, and a run stopped, or ended at its last step, keeps that step)."""

    def __init__(self) -> None:
        self.evaluated: tuple[int, EvalResult] | None = None

    def on_eval(self, step: int, result: EvalResult) -> None:
        self.evaluated = (step, result)

    def on_checkpoint(self, step: int, path: Path) -> None:
        if self.evaluated is None or self.evaluated[0] != step:
            return
        from ray import tune

        result, self.evaluated = self.evaluated[1], None
        mean_return = result.mean_return if result.mean_return is not None else math.nan
        tune.report({"step": step, "success_rate": result.success_rate, "mean_return": mean_return})


def _trial(config: dict[str, Any], sweep_dir: str, dataset_dir: str | None, threads: int) -> None:
    """One Tune trial: train (or resume) its planned run, reporting every periodic evaluation."""
    train_one(config["run"], sweep_dir, dataset_dir, threads, observer=_Reporter())


def _recording_asha(sweep_dir: Path, settings: AshaSettings, steps: dict[str, int]) -> Any:
    """Tune's ASHAScheduler that writes each early stop to SWEEP/scheduler.json as it decides it."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            name = _trial_name(trial)
            if decision == TrialScheduler.STOP and int(result.get("step", 0)) < steps[name]:
                _record_stop(sweep_dir, settings, name, int(result["step"]))
            return str(decision)

    return RecordingASHA(time_attr="step", metric=settings.metric, mode="max", max_t=max(steps.values()),
                         grace_period=settings.grace_steps, reduction_factor=settings.reduction_factor)


def run_with_asha(runs: list[PlannedRun], sweep_dir: Path, dataset_dir: str | None, *, settings: AshaSettings,
                  threads: int, gpus: float, address: str | None, on_progress: Progress,
                  poll_seconds: float = 2.0) -> list[RunState]:
    """Train the runs as Tune trials under ASHA; refresh the states from the run folders while they train.

    Ctrl-C ends the search: Tune saves its state and stops the running trials (each run resumes from its
    latest checkpoint next time), and KeyboardInterrupt is raised here.
    """
    sweep_dir = Path(sweep_dir).resolve()
    pending = [r for r in runs if state_of(r, sweep_dir).state not in FINISHED]
    if not pending:
        return _states(runs, sweep_dir, {})  # nothing left: no Ray to start
    start_ray(address)
    tune = _tune()
    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep_dir=str(sweep_dir), dataset_dir=dataset_dir, threads=threads),
        {"cpu": threads, "gpu": gpus})
    tune_dir = sweep_dir / TUNE_DIR
    if tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = _recording_asha(sweep_dir, settings, {r.name: r.config().steps for r in runs})
        tuner = tune.Tuner(
            trainable, param_space={"run": tune.grid_search([asdict(r) for r in pending])},
            tune_config=tune.TuneConfig(scheduler=scheduler, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir), verbose=0),
        )
    errors: dict[str, str] = {}
    with _Refresher(lambda: on_progress(_states(runs, sweep_dir, errors, live=True)), poll_seconds):
        results = tuner.fit()
    for result in results:
        if result.error is not None:
            errors[str(result.config["run"]["name"])] = str(result.error).strip().splitlines()[-1]
    states = _states(runs, sweep_dir, errors)
    if any(s.state in ("new", "partial") for s in states):
        raise KeyboardInterrupt  # Tune caught Ctrl-C, saved its state and stopped the trials
    return states


class _Refresher:
    """Calls ``show`` every ``seconds`` from a daemon thread while the block runs (Tune's loop holds the
    main thread)."""

    def __init__(self, show: Any, seconds: float):
        import threading

        self.show, self.seconds, self.done = show, seconds, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.done.wait(self.seconds):
            self.show()

    def __enter__(self) -> _Refresher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def _trial_name(trial: Any) -> str:
    return str(trial.config["run"]["name"])


def _states(runs: list[PlannedRun], sweep_dir: Path, errors: dict[str, str], live: bool = False) -> list[RunState]:
    """Each run's state from its folder, failed with its error; while ``live``, a started run is running."""
    states = []
    for run in runs:
        state = state_of(run, sweep_dir)
        if run.name in errors:
            state.state, state.message = "failed", errors[run.name]
        elif live and state.state in ("new", "partial") and (Path(sweep_dir) / run.name).exists():
            state.state = "running"
        states.append(state)
    return states


def _tune() -> Any:
    # Tune's newer console output (boxes, result paths) would break the runs table: its classic
    # reporter at verbosity 0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # its restore hints name Tune's API, not this command
    try:
        from ray import tune
    except ImportError:
        raise RQLError('--scheduler asha needs Ray Tune: pip install "rql-cli[sweep]".') from None
    return tune
