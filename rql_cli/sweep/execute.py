"""Running a sweep's plan: where each run stands, one run, and the two ways to run them all.

Every run goes through ``training.offline.train`` into its own folder (or, with seeds together, through
``training.group.train_group`` with its grid point's other seeds), so a finished run is one whose
latest checkpoint reached its steps, an interrupted one resumes from its latest checkpoint, and a run
cut short before its first checkpoint starts again. ``run_local`` trains the runs one after another
in this process; ``run_on_ray`` hands them to Ray (a local Ray sized to this machine, or a cluster),
``threads`` CPU threads and ``gpus`` of a GPU each (a seed group is one task). On a cluster the workers
must see the sweep folder and the data at the same paths (a shared filesystem).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rql_cli.data.sources import DataSpec
from rql_cli.errors import RQLError
from rql_cli.io.atomic import read_json
from rql_cli.io.group_record import is_group_dir, read_group_record, seed_dir
from rql_cli.io.run_checkpoints import latest_resumable
from rql_cli.io.run_layout import is_run_dir
from rql_cli.io.run_record import read_run_record
from rql_cli.sweep.plan import PlannedRun, units
from rql_cli.training.loggers import logger_group
from rql_cli.training.observer import TrainObserver
from rql_cli.training.offline import train
from rql_cli.training.session import latest_checkpoint_meta

STATES = ("new", "partial", "running", "done", "stopped", "failed", "interrupted")
SCHEDULER_FILE = "scheduler.json"
FINISHED = ("done", "stopped")


@dataclass
class RunState:
    """Where one run of a sweep stands: ``state`` (one of STATES; stopped: early, by a scheduler), its step of
    ``total``, its last success."""

    name: str
    state: str
    step: int
    total: int
    success: float | None = None
    steps_per_second: float | None = None
    message: str = ""


def _resumable(folder: Path) -> bool:
    if not is_run_dir(folder):
        return False
    try:
        latest_resumable(folder, ())
    except RQLError:
        return False
    return True


def state_of(run: PlannedRun, sweep_dir: Path) -> RunState:
    """Read the run's folder: new (nothing saved), partial (a checkpoint short of its steps), done,
    stopped (named in SWEEP/scheduler.json), or failed (a seed its group stopped on a non-finite loss)."""
    folder, total = Path(sweep_dir) / run.name, run.config().steps
    if not _resumable(folder):
        return RunState(run.name, "new", 0, total)
    step = latest_checkpoint_meta(folder).step
    success, speed = _last_rows(folder)
    group_dir = Path(sweep_dir) / run.group if run.group else None
    if group_dir is not None and is_group_dir(group_dir) and run.seed in read_group_record(group_dir).stopped:
        stopped = read_group_record(group_dir).stopped[run.seed]
        return RunState(run.name, "failed", step, total, success, speed, stopped.get("message", "non-finite loss"))
    stopped_at = stopped_runs(sweep_dir).get(run.name)
    if stopped_at is not None and step < total:
        return RunState(run.name, "stopped", step, total, success, speed, f"by ASHA at step {stopped_at:,}")
    return RunState(run.name, "done" if step >= total else "partial", step, total, success, speed)


def stopped_runs(sweep_dir: Path) -> dict[str, int]:
    """Runs a scheduler stopped early (SWEEP/scheduler.json), by name, with the step each stopped at."""
    path = Path(sweep_dir) / SCHEDULER_FILE
    if not path.is_file():
        return {}
    return {str(k): int(v) for k, v in read_json(path).get("stopped", {}).items()}


def _last_rows(folder: Path) -> tuple[float | None, float | None]:
    """(the last evaluation's success, the last logged steps/s) of a run folder."""
    values: list[float | None] = []
    for name, column in (("eval.csv", "success_rate"), ("metrics.csv", "steps_per_second")):
        try:
            with open(folder / name, newline="") as handle:
                rows = list(csv.DictReader(handle))
            values.append(float(rows[-1][column]) if rows and rows[-1].get(column) else None)
        except (OSError, ValueError):
            values.append(None)
    return values[0], values[1]


def train_one(run: dict[str, Any], sweep_dir: str, dataset_dir: str | None, threads: int,
              observer: TrainObserver | None = None) -> dict[str, Any]:
    """Train (or resume) one planned run in ``SWEEP/<name>``; what a Ray task, a Tune trial or the local
    loop calls."""
    planned = PlannedRun(**run)
    folder = Path(sweep_dir) / planned.name
    config = planned.config().replace(threads=threads)
    resume = _resumable(folder)
    if resume:
        record = read_run_record(folder)
        data = DataSpec(name=record.dataset, **record.data)
    else:
        if folder.exists():  # a start cut short before its first checkpoint: nothing to keep
            shutil.rmtree(folder)
        data = DataSpec(name=planned.dataset, dataset_dir=dataset_dir, task=planned.task)
    with logger_group(Path(sweep_dir).resolve().name):  # the sweep's runs: one W&B group
        outcome = train(config, data, folder, resume=resume, observer=observer)
    return {"name": planned.name, "step": outcome.step, "interrupted": outcome.interrupted}


def train_unit(runs: list[dict[str, Any]], sweep_dir: str, dataset_dir: str | None, threads: int) -> dict[str, Any]:
    """Train (or resume) one unit of a plan (``plan.units``): a run alone, or a grid point's seeds as one
    seed group in ``SWEEP/<group>`` (each seed exactly as ``rql train --seeds`` trains it)."""
    planned = [PlannedRun(**run) for run in runs]
    group = planned[0].group
    if group is None:
        [run] = runs
        return train_one(run, sweep_dir, dataset_dir, threads)
    from rql_cli.training.group import train_group

    folder, seeds = Path(sweep_dir) / group, [run.seed for run in planned]
    config = planned[0].config().replace(threads=threads)
    resume = is_group_dir(folder) and all(_resumable(seed_dir(folder, seed)) for seed in seeds)
    if resume:
        record = read_run_record(seed_dir(folder, seeds[0]))
        data = DataSpec(name=record.dataset, **record.data)
    else:
        if folder.exists():  # a start cut short before every seed's first checkpoint: nothing to keep
            shutil.rmtree(folder)
        data = DataSpec(name=planned[0].dataset, dataset_dir=dataset_dir, task=planned[0].task)
    with logger_group(Path(sweep_dir).resolve().name):
        outcome = train_group(config, data, folder, seeds, resume=resume)
    return {"name": group, "step": outcome.step, "interrupted": outcome.interrupted}


Progress = Callable[[list[RunState]], None]


def run_local(runs: list[PlannedRun], sweep_dir: Path, dataset_dir: str | None, threads: int,
              on_progress: Progress) -> list[RunState]:
    """Train the unfinished runs (or seed groups) one after another in this process; stop at the first
    interrupted one."""
    states = {r.name: state_of(r, sweep_dir) for r in runs}
    for unit in units(runs):
        if all(states[run.name].state in (*FINISHED, "failed") for run in unit):  # failed: stopped in its group
            continue
        for run in unit:
            states[run.name].state = "running"
        on_progress(list(states.values()))
        result = train_unit([asdict(run) for run in unit], str(sweep_dir), dataset_dir, threads)
        for run in unit:
            states[run.name] = state_of(run, sweep_dir)
            if result["interrupted"] and states[run.name].state not in FINISHED:
                states[run.name].state = "interrupted"
        if result["interrupted"]:
            break
        on_progress(list(states.values()))
    return list(states.values())


def run_on_ray(runs: list[PlannedRun], sweep_dir: Path, dataset_dir: str | None, *, threads: int, gpus: float,
               address: str | None, on_progress: Progress, poll_seconds: float = 0.5) -> list[RunState]:
    """Train the unfinished runs (a seed group: one task) as Ray tasks; refresh the states from the run
    folders while they train.

    Ctrl-C stops the tasks still running at once (each resumes from its latest checkpoint next time),
    shuts down a Ray this call started, and re-raises.
    """
    states = {r.name: state_of(r, sweep_dir) for r in runs}
    if all(s.state in (*FINISHED, "failed") for s in states.values()):
        return list(states.values())  # nothing left: no Ray to start
    ray = _ray()
    started_here = start_ray(address)
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(train_unit)
    pending = {remote.remote([asdict(r) for r in unit], str(sweep_dir), dataset_dir, threads): unit
               for unit in units(runs) if any(states[r.name].state not in (*FINISHED, "failed") for r in unit)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds)
            for ref in ready:
                unit = pending.pop(ref)
                for run in unit:
                    states[run.name] = state_of(run, sweep_dir)
                try:
                    ray.get(ref)
                except Exception as error:  # the unit's own error, raised in its worker
                    for run in unit:
                        if states[run.name].state not in FINISHED:
                            states[run.name].state = "failed"
                            states[run.name].message = str(error).splitlines()[-1]
            for unit in pending.values():
                for run in unit:
                    current = state_of(run, sweep_dir)
                    current.state = "running" if (Path(sweep_dir) / run.name).exists() else current.state
                    states[run.name] = current
            on_progress(list(states.values()))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)  # a worker kill: the run's latest checkpoint stands, its lock is stale
        if started_here:
            ray.shutdown()
        raise
    return list(states.values())


def start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or RAY_ADDRESS), else start a local Ray sized to this
    machine's cores; True when this call started or joined it (False: Ray was already up)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        # Ray starts its workers at niceness 15; a run's worker then waits behind every other busy process
        # (torch's import took 60 s instead of 3 beside two training runs): runs get the caller's priority
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
    return True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RQLError('Sweeping on Ray needs Ray: pip install "rql-cli[sweep]" (or run here one run after another '
                       "with --executor local).") from None
    return ray
