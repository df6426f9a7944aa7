"""Offline training: sample, update, log, evaluate, save, stop, until ``config.steps``.

It reports through a ``TrainObserver`` so the CLI can draw progress and tests can read it; it never
prints. Ctrl-C / SIGTERM save a checkpoint at the current step; ``resume`` continues bit-for-bit on
CPU (batches and flow noise come from generators saved in the train state).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rql_cli.config import RQLConfig
from rql_cli.data.sources import DataSpec
from rql_cli.errors import RQLError
from rql_cli.io import run_files
from rql_cli.io.checkpoint import CheckpointMeta, save_checkpoint
from rql_cli.io.metrics import EvaluationReport
from rql_cli.loop import LOGGED_TERMS, LossWindow, StopSignals, due_work, resume_command
from rql_cli.names import TaskName, parse_task_name

__all__ = ["DataSpec", "TrainObserver", "TrainOutcome", "train"]

METRIC_COLUMNS = ["step", *LOGGED_TERMS, "steps_per_second", "wall_time"]
SHARD_COLUMNS = ["step", "shard", "file", "load_seconds", "wait_seconds", "wall_time"]
"""shards.csv (shard folders only): which shard became resident at which step, and what it cost."""


class TrainObserver:
    """Hooks the loop calls; the defaults do nothing. Override what you want to see."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: run_dir, device, start_step, steps, dataset stats, env_id."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Every log_interval steps: mean losses of the window, steps_per_second, wall_time (s)."""

    def on_eval_start(self, step: int, episodes: int) -> None:
        """Before a periodic evaluation of ``episodes`` episodes."""

    def on_eval_episode(self, done: int, total: int, success_rate: float) -> None:
        """After each evaluation episode: running success rate in [0, 1]."""

    def on_eval(self, step: int, result: dict[str, Any]) -> None:
        """After a periodic evaluation: ``EvalResult.to_dict()``."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint folder was written."""


@dataclass
class TrainOutcome:
    """How a call to ``train`` ended.

    Attributes:
        run_dir: the run folder.
        step: gradient steps done.
        last_checkpoint: the newest checkpoint folder written (or resumed from), None if none.
        interrupted: stopped by Ctrl-C / SIGTERM (a checkpoint of this step was saved).
        last_eval: the last periodic evaluation (``EvalResult.to_dict()``), None if none ran.
        resume_command: the command that continues the run, when interrupted.
    """

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    interrupted: bool = False
    last_eval: dict[str, Any] | None = None
    resume_command: str | None = None


@dataclass
class _Session:
    """Everything one training run holds while it runs."""

    config: RQLConfig
    run_dir: Path
    agent: Any
    rotation: Any
    meta: CheckpointMeta
    generators: dict[str, torch.Generator]
    data_device: torch.device
    metrics_log: run_files.CsvLog
    eval_log: run_files.CsvLog
    dataset_stats: dict[str, Any]
    task_name: TaskName
    runtime: Any = None
    last_checkpoint: Path | None = None
    started: float = field(default_factory=time.perf_counter)

    def sample(self) -> Any:
        """One batch of chunk windows on the training device."""
        batch = self.rotation.sampler(self.agent.step).sample(self.config.batch_size, self.generators["sample"])
        return batch if self.data_device == self.agent.device else batch.to(self.agent.device)

    def save(self, observer: TrainObserver, report: EvaluationReport | None = None) -> Path:
        """A checkpoint of the current step with its train state (and evaluation, if given)."""
        self.meta.step = self.agent.step
        path = save_checkpoint(
            run_files.checkpoint_dir(self.run_dir, self.agent.step), self.agent, self.meta,
            generators=self.generators, metrics=report,
        )
        self.last_checkpoint = path
        observer.on_checkpoint(self.agent.step, path)
        run_files.prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def wall_time(self) -> float:
        """Training seconds of the run: since this session started, plus the sessions before a resume."""
        return time.perf_counter() - self.started


def train(
    config: RQLConfig,
    data: DataSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainObserver | None = None,
    origin: run_files.RunOrigin | None = None,
) -> TrainOutcome:
    """Train (or resume) an RQL agent until ``config.steps`` gradient steps.

    With ``resume`` the run folder's latest checkpoint with a train state is loaded and training
    continues from its step; rows logged after that step are dropped from the CSV logs. With
    ``origin`` (continued offline training, ``rql finetune --dataset``) a new run starts from that
    checkpoint's weights (and its Adam state when it has one) at step 0, and records the lineage.
    """
    with run_files.RunLock(run_dir) as lock:
        return _train_locked(config, data, lock, resume, observer or TrainObserver(), origin)


def _train_locked(
    config: RQLConfig, data: DataSpec, lock: run_files.RunLock, resume: bool, observer: TrainObserver,
    origin: run_files.RunOrigin | None,
) -> TrainOutcome:
    session = _open_session(config, data, lock, resume, origin)
    agent = session.agent
    observer.on_start(_start_info(session))
    outcome = TrainOutcome(run_dir=session.run_dir, step=agent.step, last_checkpoint=session.last_checkpoint)
    window = LossWindow()
    with StopSignals() as stop, session.rotation:
        while agent.step < config.steps:
            window.add(agent.update(session.sample(), session.generators["noise"]))
            session.runtime.poll()
            due = due_work(agent.step, config.steps, config.log_interval, config.eval_interval,
                           config.save_interval, stop.requested)
            if due.flush:
                row = window.flush(agent.step, session.last_checkpoint)  # raises on a NaN loss
                if due.log and row is not None:
                    _log(session, row, observer)
            if due.evaluate:
                outcome.last_eval = _evaluate_and_save(session, observer, stop) or outcome.last_eval
            elif due.save or stop.requested:  # a signal may have come during this step's logging
                session.save(observer)
            if stop.requested:
                outcome.interrupted, outcome.resume_command = True, resume_command(session.run_dir)
                break
    outcome.step, outcome.last_checkpoint = agent.step, session.last_checkpoint
    return outcome


def _open_session(
    config: RQLConfig, data: DataSpec, lock: run_files.RunLock, resume: bool, origin: run_files.RunOrigin | None
) -> _Session:
    """Load the data, build (or restore) the agent and its generators, and open the run's files.

    Nothing is written to the run folder (``lock.run_dir``) until the inputs are checked; then the
    lock makes the folder (a new run's) and holds it.
    """
    run_dir = lock.run_dir
    from rql_cli.core.rql import RQLAgent
    from rql_cli.device import check_agent_fits, make_generator, resolve_device
    from rql_cli.envs.make import success_timing
    from rql_cli.io.checkpoint import software_versions
    from rql_cli.runtime import set_up_runtime

    device = resolve_device(config.device)
    data_device = device if config.dataset_on_device else torch.device("cpu")
    torch.manual_seed(config.seed)  # network initialisation
    if resume:
        data.check_fingerprint()
    else:
        data = data.with_fingerprint()
    shard_log = _ShardLog() if data.sharded else None
    start_step = _resume_step(run_dir) if resume else 0
    with contextlib.ExitStack() as on_error:  # a refusal below stops the shard reader it started
        rotation = data.rotation(
            sparse_rewards=config.sparse_rewards, device=data_device, horizon=config.horizon,
            swap_every=config.shard_swap_every, prefetch=config.shard_prefetch,
            on_swap=None if shard_log is None else shard_log.add,
        )
        on_error.callback(rotation.close)
        dataset = rotation.sampler(start_step).dataset
        task_name = parse_task_name(data.env_id)  # parsed once; evaluation and the meta use it
        if config.eval_episodes > 0:
            check_dataset_fits_env(dataset, task_name)
        check_agent_fits(config, dataset.obs_dim, dataset.action_dim, device)
        agent = RQLAgent(config, dataset.obs_dim, dataset.action_dim, device)
        meta = CheckpointMeta(
            config=config, dataset=data.name, env_id=data.env_id, obs_dim=dataset.obs_dim,
            action_dim=dataset.action_dim, step=0, versions=software_versions(),
            success_timing=success_timing(task_name), env_spec=_env_spec(task_name),
        )
        lock.make_folder()
        if shard_log is not None:
            shard_log.open(run_dir, start_step)
        run_files.remove_unfinished_writes(run_dir)
        check_disk(config, agent, run_dir, total=config.steps)
        session = _Session(
            config=config, run_dir=run_dir, agent=agent, rotation=rotation,
            meta=meta, data_device=data_device, task_name=task_name,
            dataset_stats={**dataset.statistics(), **_shard_stats(rotation)},
            generators={"sample": make_generator(data_device, config.seed), "noise": make_generator(device, config.seed + 1)},
            metrics_log=run_files.CsvLog(run_dir / "metrics.csv", METRIC_COLUMNS),
            eval_log=run_files.CsvLog(run_dir / "eval.csv", run_files.EVAL_COLUMNS),
        )
        if resume:
            session.last_checkpoint = _restore(session)
        elif origin is not None:
            start_from_checkpoint(agent, origin)
            meta.lineage = origin.lineage
        example = rotation.sampler(agent.step).sample(config.batch_size, make_generator(data_device, 0)).to(device)
        session.runtime = set_up_runtime(agent, config, config.steps - agent.step, example)
        _write_record(session, data, resume, origin)
        on_error.pop_all()  # from here on the session owns the rotation
        return session


def _env_spec(task_name: Any) -> str | None:
    """The env spec a checkpoint of a Minari or gymnasium env records (None for OGBench)."""
    from rql_cli.envs.external import env_spec_json
    from rql_cli.names import ExternalName

    return env_spec_json(task_name) if isinstance(task_name, ExternalName) else None


def _resume_step(run_dir: Path) -> int:
    """The step a resume continues from: that of the run's latest checkpoint with a train state (0 if none)."""
    from rql_cli.io.checkpoint import read_meta

    candidates = [p for p in run_files.list_checkpoints(run_dir) if (p / "train_state.safetensors").is_file()]
    return read_meta(candidates[-1])[0].step if candidates else 0


class _ShardLog:
    """shards.csv of a shard-folder run: rows wait in memory until the run folder may be written."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waiting: list[dict[str, Any]] = []
        self.log: run_files.CsvLog | None = None

    def add(self, swap: Any) -> None:
        """Record one ``ShardSwap`` (called by the rotation, possibly before the folder exists)."""
        row = {**swap.__dict__, "wall_time": time.perf_counter() - self.started}
        if self.log is None:
            self.waiting.append(row)
        else:
            self.log.append(row)

    def open(self, run_dir: Path, start_step: int) -> None:
        """Open the CSV (dropping rows from ``start_step`` on: they are about to be redone), write what waited."""
        self.log = run_files.CsvLog(run_dir / "shards.csv", SHARD_COLUMNS)
        self.log.truncate_after(start_step - 1)
        for row in self.waiting:
            self.log.append(row)
        self.waiting = []


def _shard_stats(rotation: Any) -> dict[str, Any]:
    """What the start message says about a shard folder: how many shards, how often they change."""
    if len(rotation.shards) == 1:
        return {}
    return {"shards": len(rotation.shards), "shard_swap_every": rotation.swap_every,
            "shard_prefetch": rotation.prefetch}


def start_from_checkpoint(agent: Any, origin: run_files.RunOrigin) -> None:
    """Copy the loaded source's weights (and its saved Adam moments, if any) into a fresh agent.

    The dims must match the agent's (built for the data it will train on); CheckpointError shows
    both shapes otherwise. ``origin.lineage['optimizer']`` records whether Adam continued.
    """
    from rql_cli.errors import CheckpointError
    from rql_cli.io.checkpoint import load_optimizer_state

    meta = origin.meta
    if (meta.obs_dim, meta.action_dim) != (agent.obs_dim, agent.action_dim):
        raise CheckpointError(
            f"The checkpoint {origin.lineage.get('ref', origin.folder)} has observations of size "
            f"{meta.obs_dim} and actions of size {meta.action_dim}; the data to fine-tune on has "
            f"observations of size {agent.obs_dim} and actions of size {agent.action_dim}."
        )
    for name in ("velocity", "velocity_target", "value", "value_target"):
        getattr(agent, name).load_state_dict(getattr(origin.agent, name).state_dict())
    continued = load_optimizer_state(agent, origin.folder)
    origin.lineage["optimizer"] = "continued from its train state" if continued else "fresh (no train state)"
    agent.step = 0


def check_disk(config: RQLConfig, agent: Any, run_dir: Path, total: int, extra_bytes: int = 0) -> None:
    """Refuse a run whose checkpoints (as many as it keeps, or all it saves) will not fit on disk."""
    parameters = sum(p.numel() for p in agent.parameters()) // 2
    checkpoint_bytes = 4 * 4 * parameters + extra_bytes  # weights, targets and two Adam moments
    intervals = [i for i in (config.eval_interval, config.save_interval) if i > 0]
    saves = 1 + sum(total // i for i in intervals)
    count = min(saves, config.keep_checkpoints + 2) if config.keep_checkpoints > 0 else saves
    run_files.check_disk_for_checkpoints(run_dir, checkpoint_bytes, count)


def check_dataset_fits_env(dataset: Any, task_name: TaskName) -> None:
    """Refuse, before the first gradient step, a dataset whose sizes differ from its environment's."""
    from rql_cli.envs.make import make_eval_env
    from rql_cli.errors import DatasetError

    env = make_eval_env(task_name)
    try:
        env_obs, env_act = int(env.observation_space.shape[-1]), int(env.action_space.shape[-1])
    finally:
        env.close()
    if (env_obs, env_act) != (dataset.obs_dim, dataset.action_dim):
        raise DatasetError(
            f"The dataset has observations of size {dataset.obs_dim} and actions of size {dataset.action_dim}, "
            f"but its environment {task_name.env_id()} gives observations of size {env_obs} and actions of "
            f"size {env_act}; the first evaluation would fail. Check that the file belongs to "
            f"{task_name.dataset_name}."
        )


def _restore(session: _Session) -> Path:
    """Load the run's latest checkpoint that has a train state; drop log rows past its step."""
    from rql_cli.io.checkpoint import (
        load_train_state_into,
        load_weights_into,
        read_meta,
    )

    agent, run_dir = session.agent, session.run_dir
    candidates = [p for p in run_files.list_checkpoints(run_dir) if (p / "train_state.safetensors").is_file()]
    if not candidates:
        raise RQLError(f"{run_dir} has no checkpoint with a training state to resume from.")
    latest = candidates[-1]
    meta, _ = read_meta(latest)
    if (meta.obs_dim, meta.action_dim) != (agent.obs_dim, agent.action_dim):
        raise RQLError(
            f"Checkpoint {latest} has obs_dim {meta.obs_dim} and action_dim {meta.action_dim}, "
            f"but the dataset has obs_dim {agent.obs_dim} and action_dim {agent.action_dim}."
        )
    load_weights_into(agent, latest)
    load_train_state_into(agent, latest, session.generators)
    session.metrics_log.truncate_after(agent.step)
    session.eval_log.truncate_after(agent.step)
    session.started -= run_files.logged_wall_time([session.metrics_log, session.eval_log])
    return latest


def _write_record(
    session: _Session, data: DataSpec, resume: bool, origin: run_files.RunOrigin | None
) -> None:
    """Write train_config.json; on resume keep its lineage and history and add what changed when."""
    meta, config = session.meta, session.config
    record = run_files.RunRecord(
        dataset=data.name, data=data.location(), env_id=meta.env_id, obs_dim=meta.obs_dim,
        action_dim=meta.action_dim, config=config, versions=meta.versions,
        parent=origin.lineage if origin else None, finetune=origin.settings if origin else None,
    )
    event: dict[str, Any] = {"step": session.agent.step, "event": "resume" if resume else "start",
                             "runtime": session.runtime.to_dict()}
    if resume:
        previous = run_files.read_run_record(session.run_dir)
        record.parent, record.finetune, record.history = previous.parent, previous.finetune, previous.history
        meta.lineage = previous.parent
        old, new = previous.config.to_dict(), config.to_dict()
        event["changes"] = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
    record.history = [*record.history, event]
    run_files.write_run_record(session.run_dir, record)


def _start_info(session: _Session) -> dict[str, Any]:
    agent = session.agent
    return dict(
        run_dir=str(session.run_dir), device=str(agent.device), start_step=agent.step,
        steps=session.config.steps, dataset=session.dataset_stats, env_id=session.meta.env_id,
        parameters=sum(p.numel() for p in agent.parameters()) // 2,  # online networks only
        runtime=session.runtime.to_dict(),
    )


def _log(session: _Session, row: dict[str, float], observer: TrainObserver) -> None:
    row = {**row, "wall_time": session.wall_time()}
    session.metrics_log.append(row)
    observer.on_log(int(row["step"]), row)


def _evaluate_and_save(session: _Session, observer: TrainObserver, stop: StopSignals) -> dict[str, Any] | None:
    """Evaluate (when episodes are asked for), then save the checkpoint whatever the evaluation did.

    An evaluation broken by Ctrl-C (the signal also reaches its worker processes) is dropped: the
    checkpoint of this step matters more.
    """
    config, agent = session.config, session.agent
    result = None
    if config.eval_episodes > 0:
        try:
            result = _evaluate(session, observer)
        except Exception as error:
            if not stop.requested:
                raise _evaluation_failed(error, session.save(observer), session.run_dir) from error
    report = None
    if result is not None:
        session.eval_log.append(run_files.eval_row(agent.step, result, session.wall_time()))
        observer.on_eval(agent.step, result)
        report = EvaluationReport(
            checkpoint=str(run_files.checkpoint_dir(session.run_dir, agent.step)),
            dataset=session.meta.dataset, step=agent.step, device=str(agent.device), tasks=[result],
        )
    session.save(observer, report)
    run_files.plot_curves(session.run_dir, session.metrics_log.read(), session.eval_log.read(),
                          title=f"{session.run_dir.name}: RQL on {session.meta.dataset} ({session.meta.env_id})")
    return result


def _evaluation_failed(error: Exception, saved: Path, run_dir: Path) -> RQLError:
    """The error of a periodic evaluation that failed after the checkpoint of its step was saved."""
    return RQLError(
        f"The evaluation at this step failed ({type(error).__name__}: {error}); the checkpoint of the step "
        f"is saved at {saved}. Fix the cause, then continue with `{resume_command(run_dir)}` (or evaluate "
        "less often with --eval-episodes 0)."
    )


def _evaluate(session: _Session, observer: TrainObserver) -> dict[str, Any]:
    from rql_cli.evaluation import evaluate_agent

    config, agent = session.config, session.agent
    observer.on_eval_start(agent.step, config.eval_episodes)
    return evaluate_agent(agent, session.task_name, config, agent.step, on_episode=observer.on_eval_episode)
