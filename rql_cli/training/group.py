"""Many seeds in one process (``rql train --seeds 0-7``), driven by the one training loop.

Each seed is a ``RunSession`` built exactly as ``--seed S`` alone builds it (initialisation,
generators, logs, record, checkpoints) in its own ordinary run folder ``OUT/seed_S``; the group adds
one update over all of them (``core.seed_stack``: stacked, or each seed's own in turn), one data
source (one copy of the dataset on the device), and ``OUT/group.json``. The loop (``loop.run_loop``)
drives a ``GroupSession`` as it drives one run: a Ctrl-C saves every seed, a resume continues every
seed, and a seed whose loss turns non-finite is stopped, named with its last good checkpoint, while
the others go on.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.config import RunConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.core.seed_stack import SeedUpdate, SequentialSeeds, StackedSeeds, ThreadedSeeds
from rql_cli.data.sources import DataSpec
from rql_cli.device import resolve_device
from rql_cli.errors import NonFiniteLossError, RQLError
from rql_cli.evaluation import evaluate_agents
from rql_cli.io.group_record import GroupRecord, read_group_record, seed_dir, write_group_record
from rql_cli.io.run_lock import RunLock
from rql_cli.io.run_record import RunOrigin
from rql_cli.results import EpisodeProgress, EvalResult
from rql_cli.training.loggers import logger_group
from rql_cli.training.loop import LossWindow, run_loop
from rql_cli.training.loss_window import LOGGED_TERMS, check_finite, mean_row
from rql_cli.training.observer import TrainObserver, TrainOutcome
from rql_cli.training.offline import OfflineSource
from rql_cli.training.runtime import Runtime, set_up_runtime
from rql_cli.training.session import (
    RunSession,
    build_session,
    check_resume,
    guarded_evaluation,
    latest_checkpoint_meta,
    resume_command,
    start_session,
)
from rql_cli.training.signals import StopSignals


def make_seed_update(choice: str, agents: list[RQLAgent]) -> SeedUpdate:
    """The group update for ``group_update=choice``: 'auto' stacks on CUDA and steps the seeds side by
    side on a CPU (``ThreadedSeeds``; the runtime gives it the run's threads)."""
    on_cuda = agents[0].device.type == "cuda"
    if choice == "auto":
        choice = "stacked" if on_cuda else "threaded"
    if choice == "threaded" and on_cuda:
        raise RQLError("group_update=threaded runs the seeds on CPU threads; on CUDA use stacked (what auto "
                       "picks) or sequential.")
    if choice == "stacked":
        return StackedSeeds(agents)
    return ThreadedSeeds(agents) if choice == "threaded" else SequentialSeeds(agents)


def update_name(update: SeedUpdate) -> str:
    """The ``group_update`` value that makes ``update`` (what group.json records)."""
    if isinstance(update, StackedSeeds):
        return "stacked"
    return "threaded" if isinstance(update, ThreadedSeeds) else "sequential"


def train_group(
    config: RunConfig, data: DataSpec, group_dir: Path, seeds: list[int], *, resume: bool = False,
    observer: TrainObserver | None = None, origins: dict[int, RunOrigin] | None = None, command: str = "rql train",
) -> TrainOutcome:
    """Train (or resume) one agent per seed of ``seeds`` on ``data`` with ``config`` (its ``seed`` unused).

    A resume continues the group's seeds that were not stopped, from their common latest step. With
    ``origins`` (continued offline training of a group: ``rql finetune --checkpoint GROUP``) seed s
    starts from ``origins[s]``'s weights, as ``train(origin=...)`` starts one run. ``command`` is the
    one whose ``--resume`` continues the group.
    """
    group_dir, observer = Path(group_dir), observer or TrainObserver()
    device = resolve_device(config.device)
    record = read_group_record(group_dir) if resume else None
    active = record.active if record else list(seeds)
    if not active:
        raise RQLError(f"Every seed of {group_dir} was stopped by a non-finite loss; there is nothing to resume.")
    with ExitStack() as stack:
        stop = stack.enter_context(StopSignals())
        locks = {s: stack.enter_context(RunLock(seed_dir(group_dir, s))) for s in active}
        configs = {s: config.replace(seed=s) for s in active}
        with stop.interruptible():
            previous = {s: check_resume(locks[s].run_dir, configs[s]) if resume else None for s in active}
            start_step = _common_step(group_dir, active) if resume else 0
            source = OfflineSource(config, data, device, start_step=start_step, resume=resume)
            source.command = command
        stack.callback(source.close)
        with logger_group(group_dir.resolve().name):  # the seeds: one W&B group
            members = {s: build_session(configs[s], source, locks[s], stop, device=device, previous=previous[s],
                                        origin=(origins or {}).get(s), source_logs=False) for s in active}
        for member in members.values():
            stack.callback(member.close)
        source.open_logs(group_dir)
        update = make_seed_update(config.group_update, [m.agent for m in members.values()])
        if isinstance(update, ThreadedSeeds):
            stack.callback(update.close)
        record = record or GroupRecord(seeds=list(seeds), dataset=source.dataset_name, env_id=source.env_id,
                                       settings={}, update="")
        record.settings = {k: v for k, v in config.flat().items() if k != "seed"}
        record.update = update_name(update)
        write_group_record(group_dir, record)
        first = next(iter(members.values())).agent
        runtime = set_up_runtime(update, config, source.updates_left(first), source.example_batch(first), stop,
                                 dims=(first.obs_dim, first.action_dim),
                                 spread=update.set_threads if isinstance(update, ThreadedSeeds) else None)
        for seed, member in members.items():
            start_session(member, runtime, previous[seed], (origins or {}).get(seed))
        session = GroupSession(config=config, run_dir=group_dir, members=members, update=update, source=source,
                               record=record, stop=stop, runtime=runtime, observer=observer)
        if resume:
            session.last_checkpoint, session.saved_at = group_dir, session.position
        return run_loop(session, observer)


def _common_step(group_dir: Path, seeds: list[int]) -> int:
    """The step every seed's latest checkpoint is at; RQLError when they differ (a save was cut short)."""
    steps = {s: latest_checkpoint_meta(seed_dir(group_dir, s)).step for s in seeds}
    if len(set(steps.values())) > 1:
        listing = ", ".join(f"seed {s} at {step:,}" for s, step in steps.items())
        raise RQLError(
            f"The seeds of {group_dir} were last saved at different steps ({listing}): the process stopped "
            "while saving them. Resume each seed alone with `rql train --resume OUT/seed_S`, or remove the "
            "newer checkpoints so every seed's latest is the same step."
        )
    return next(iter(steps.values()))


@dataclass
class GroupSession:
    """Every seed of a group while it trains; the loop drives it like one ``RunSession``.

    ``members`` are the seeds' sessions in the order of the update's seed dimension (seeds stopped
    during this process keep their slot, and their numbers are ignored).
    """

    config: RunConfig
    run_dir: Path
    members: dict[int, RunSession]
    update: SeedUpdate
    source: OfflineSource
    record: GroupRecord
    stop: StopSignals
    observer: TrainObserver
    runtime: Runtime | None = None
    last_checkpoint: Path | None = None
    saved_at: int | None = None
    pending: dict[int, dict[str, float]] = field(default_factory=dict)
    """Each training seed's metrics row from the last window, until ``log`` writes it."""

    @property
    def active(self) -> dict[int, RunSession]:
        """The seeds that still train."""
        return {s: m for s, m in self.members.items() if s not in self.record.stopped}

    @property
    def position(self) -> int:
        return next(iter(self.members.values())).position

    @property
    def total(self) -> int:
        return self.source.total

    def new_window(self) -> LossWindow:
        return GroupLossWindow(self)

    def advance(self, window: LossWindow, observer: TrainObserver) -> None:
        """One gradient step of every seed: each its own batch and noise, one update for all."""
        step, device = self.position, self.update.device
        members = list(self.members.values())
        batches = [self.source.batch(step, m.generators["sample"], device) for m in members]
        window.add(self.update.update(batches, [m.generators["noise"] for m in members]))

    def stop_seed(self, seed: int, error: NonFiniteLossError) -> None:
        """Stop ``seed`` (a non-finite loss): record it in group.json and tell the observer."""
        member = self.members[seed]
        self.record.stopped[seed] = {"step": error.step, "term": error.term, "message": str(error),
                                     "checkpoint": str(member.last_checkpoint) if member.last_checkpoint else None}
        write_group_record(self.run_dir, self.record)
        self.observer.on_seed_stopped(seed, str(error))

    def log(self, row: dict[str, float] | None, observer: TrainObserver) -> None:
        """Each training seed's row to its metrics.csv; the mean over seeds to the observer."""
        for seed, member in self.active.items():
            member.log(self.pending.get(seed), TrainObserver())
        self.pending = {}
        if row is not None:
            observer.on_log(self.position, row)

    def save(self, observer: TrainObserver) -> Path:
        """A checkpoint of every training seed at the current step."""
        for member in self.active.values():
            member.save(TrainObserver())
        self.last_checkpoint, self.saved_at = self.run_dir, self.position
        observer.on_checkpoint(self.position, self.run_dir)
        return self.run_dir

    def evaluate_and_save(self, observer: TrainObserver) -> EvalResult | None:
        """Evaluate every training seed at once (each with its own episodes and noise, as alone), record
        and save each; None, as the group has no single result (``on_seed_eval`` reported each seed's)."""
        active = self.active
        results: list[EvalResult] | None = None
        if self.config.eval_episodes > 0:
            observer.on_eval_start(self.position, self.config.eval_episodes * len(active))
            results = guarded_evaluation(
                lambda: evaluate_agents(
                    [m.agent for m in active.values()], self.source.task_name, [m.config for m in active.values()],
                    self.position, stacked=isinstance(self.update, StackedSeeds), on_episode=observer.on_eval_episode,
                    kept=self.source.eval_envs,
                ),
                self.stop, lambda: self.save(observer), self.resume_command(),
            )
        for index, (seed, member) in enumerate(active.items()):
            member.record_and_save(None if results is None else results[index], _SeedObserver(observer, seed))
        self.last_checkpoint, self.saved_at = self.run_dir, self.position
        observer.on_checkpoint(self.position, self.run_dir)
        return None

    def resume_command(self) -> str:
        return resume_command(self.run_dir, self.source.command)

    def start_info(self) -> dict[str, Any]:
        info = next(iter(self.members.values())).start_info()
        return {**info, "run_dir": str(self.run_dir), "seeds": list(self.active), "group_update": self.record.update}


class GroupLossWindow(LossWindow):
    """A loss window of (terms, seeds) rows: checked per seed, so a non-finite loss stops that seed only."""

    def __init__(self, group: GroupSession):
        super().__init__()
        self.group = group

    def flush(self, step: int, last_checkpoint: Path | None) -> dict[str, float] | None:
        """Check each training seed's rows; stop the seeds that went non-finite (raise when none is left);
        keep each seed's row for ``GroupSession.log``; return the mean row over the training seeds."""
        taken = self.take(step)
        if taken is None:
            return None
        rows, first_step, speed = taken  # (steps, terms, seeds)
        errors: list[NonFiniteLossError] = []
        for column, (seed, member) in enumerate(self.group.members.items()):
            if seed in self.group.record.stopped:
                continue
            try:
                check_finite(rows[:, :, column], first_step, member.last_checkpoint)
            except NonFiniteLossError as error:
                errors.append(error)
                self.group.stop_seed(seed, error)
                continue
            self.group.pending[seed] = mean_row(rows[:, :, column], step, speed)
        if not self.group.active:
            raise errors[0] if errors else RQLError("Every seed of the group has stopped.")
        kept = [self.group.pending[s] for s in self.group.active if s in self.group.pending]
        row = {term: sum(r[term] for r in kept) / len(kept) for term in LOGGED_TERMS}
        return {**row, "step": step, "steps_per_second": speed, "seeds": len(kept)}


class _SeedObserver(TrainObserver):
    """What one seed's evaluation reports, passed on to the group's observer with the seed."""

    def __init__(self, observer: TrainObserver, seed: int):
        self.observer, self.seed = observer, seed

    def on_eval_start(self, step: int, episodes: int) -> None:
        self.observer.on_eval_start(step, episodes)

    def on_eval_episode(self, progress: EpisodeProgress) -> None:
        self.observer.on_eval_episode(progress)

    def on_eval(self, step: int, result: EvalResult) -> None:
        self.observer.on_seed_eval(self.seed, step, result)

