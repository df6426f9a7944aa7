"""One training run while it runs: its agent, files, checkpoints and evaluations, whatever feeds it.

Offline training, continued offline training and online fine-tuning differ only in where their
batches come from (a ``BatchSource``); opening the run folder, restoring a resume, saving,
evaluating and recording the run are written here once, so every check and every file is the same.
"""

from __future__ import annotations

import functools
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from rql_cli.config import FIXED_ON_RESUME, RunConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent
from rql_cli.data.sources import DataSpec
from rql_cli.device import check_agent_fits, make_generator
from rql_cli.envs.evaluate import KeptEnvs
from rql_cli.envs.make import success_timing
from rql_cli.errors import RQLError
from rql_cli.evaluation import evaluate_agent
from rql_cli.io.checkpoint import (
    load_optimizer_state,
    load_train_state_into,
    load_weights_into,
    save_checkpoint,
    software_versions,
)
from rql_cli.io.checkpoint_meta import CheckpointMeta, check_checkpoint_dims, read_meta
from rql_cli.io.metrics import EvaluationReport
from rql_cli.io.run_checkpoints import (
    check_disk_for_checkpoints,
    latest_resumable,
    prune_checkpoints,
    remove_unfinished_writes,
)
from rql_cli.io.run_layout import check_resumable, checkpoint_dir
from rql_cli.io.run_lock import RunLock
from rql_cli.io.run_logs import EVAL_COLUMNS, CsvLog, eval_row, logged_wall_time
from rql_cli.io.run_record import (
    RunOrigin,
    RunRecord,
    read_run_record,
    write_run_record,
)
from rql_cli.names import ParsedName
from rql_cli.results import EvalResult
from rql_cli.training.loggers import RunLogger, open_loggers
from rql_cli.training.loss_window import LossWindow
from rql_cli.training.observer import TrainObserver
from rql_cli.training.runtime import Runtime, set_up_runtime
from rql_cli.training.signals import StopNow, StopSignals


class BatchSource:
    """Where a run's steps get their batches; ``offline.OfflineSource`` and ``online.OnlineSource``.

    A source is opened before the agent exists: it knows the data's sizes, the env and the dataset
    it names. It takes the loop's steps (``advance``) and may add CSV logs, checkpoint files, start
    information and generators of its own. The defaults are those of offline training.
    """

    command = "rql train"
    """The command whose ``--resume`` continues a run of this source."""
    checkpoint_files: tuple[str, ...] = ()
    """Files besides the train state that a checkpoint needs to resume this source."""
    generator_names: tuple[str, ...] = ("sample", "noise")
    """The run's generators, seeded ``seed + i`` in this order ('sample' on ``sample_device``)."""

    data: DataSpec
    env_id: str
    """The singletask env the rewards are for (a checkpoint's ``env_id``)."""
    task_name: ParsedName
    obs_dim: int
    action_dim: int
    total: int
    """The run's length in its own steps (gradient steps offline, environment steps online)."""
    sample_device: torch.device
    metric_columns: list[str]
    extra_bytes: int = 0
    """Bytes each checkpoint holds besides weights and Adam moments (an online buffer)."""

    @property
    def dataset_name(self) -> str:
        """The dataset a checkpoint of this run records."""
        return self.data.name

    @property
    def env_spec(self) -> str | None:
        """The gymnasium spec (JSON) a checkpoint records for a Minari or gymnasium env; None for OGBench."""
        return getattr(self.task_name, "env_spec", None)

    def position(self, agent: RQLAgent) -> int:
        """The run's own step count now."""
        return agent.step

    def updates_left(self, agent: RQLAgent) -> int:
        """Gradient steps the run still has to take (``compile=auto`` weighs its compile against them)."""
        return self.total - agent.step

    def example_batch(self, agent: RQLAgent) -> ChunkBatch | None:
        """A batch to compile the update on (drawn without touching the run's generators), or None."""
        raise NotImplementedError

    def open_logs(self, run_dir: Path) -> dict[str, CsvLog]:
        """The source's own CSV logs in the run folder, which the session trims on a resume."""
        return {}

    def start(self, session: RunSession) -> None:
        """Last step of opening the run, once the agent and its generators are ready."""

    def advance(self, session: RunSession, window: LossWindow, observer: TrainObserver) -> None:
        """Take one of the run's steps: gradient updates whose metrics go into ``window``."""
        raise NotImplementedError

    def log_fields(self, agent: RQLAgent) -> dict[str, float]:
        """Columns of a metrics row that the source fills (besides the losses and timing)."""
        return {}

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Safetensors files the source adds to each checkpoint, by file name."""
        return {}

    def restore(self, folder: Path, agent: RQLAgent) -> None:
        """Continue from the checkpoint ``folder`` (weights and train state are loaded already)."""

    def start_info(self, agent: RQLAgent) -> dict[str, Any]:
        """What the source adds to the start information an observer gets."""
        return {}

    def plot(self, session: RunSession) -> None:
        """Redraw the run's curves.png after an evaluation."""

    @functools.cached_property
    def eval_envs(self) -> KeptEnvs:
        """The periodic evaluations' envs (and the start-up check's), built once and kept to ``close``."""
        return KeptEnvs()

    def close(self) -> None:
        """Release what the source holds (a shard reader thread, an env); a subclass's calls this last."""
        self.eval_envs.close()


@dataclass
class RunSession:
    """Everything one training run holds while it runs."""

    config: RunConfig
    run_dir: Path
    agent: RQLAgent
    meta: CheckpointMeta
    source: BatchSource
    generators: dict[str, torch.Generator]
    logs: dict[str, CsvLog]
    stop: StopSignals
    runtime: Runtime | None = None
    last_checkpoint: Path | None = None
    saved_at: int | None = None
    """The run's step of the newest checkpoint written or resumed from."""
    started: float = field(default_factory=time.perf_counter)
    loggers: list[RunLogger] = field(default_factory=list)
    """TensorBoard, W&B: what ``log_to`` asks for besides the CSVs."""

    def close(self) -> None:
        """Flush and close the run's loggers."""
        for logger in self.loggers:
            logger.close()

    @property
    def position(self) -> int:
        """The run's own step count now (gradient steps offline, environment steps online)."""
        return self.source.position(self.agent)

    @property
    def total(self) -> int:
        """The run's length in its own steps."""
        return self.source.total

    def new_window(self) -> LossWindow:
        """The window that keeps this run's per-step losses until a log row or a check needs them."""
        return LossWindow()

    def advance(self, window: LossWindow, observer: TrainObserver) -> None:
        """Take one of the run's steps (the source's)."""
        self.source.advance(self, window, observer)

    def wall_time(self) -> float:
        """Training seconds of the run: since this session started, plus the sessions before a resume."""
        return time.perf_counter() - self.started

    def resume_command(self) -> str:
        """The shell command that continues this run."""
        return resume_command(self.run_dir, self.source.command)

    def save(self, observer: TrainObserver, report: EvaluationReport | None = None) -> Path:
        """A checkpoint of the current step with its train state, the source's files and ``report``."""
        position = self.position
        self.meta.step = self.agent.step
        path = save_checkpoint(
            checkpoint_dir(self.run_dir, position), self.agent, self.meta,
            generators=self.generators, metrics=report, extra_tensors=self.source.checkpoint_tensors(),
        )
        self.last_checkpoint, self.saved_at = path, position
        observer.on_checkpoint(position, path)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def log(self, row: dict[str, float] | None, observer: TrainObserver) -> None:
        """Write a metrics row (the window's mean losses, if any, and the source's columns)."""
        extra = self.source.log_fields(self.agent)
        if row is None and not extra:
            return
        full = {"steps_per_second": 0.0, **(row or {}), **extra, "step": self.position, "wall_time": self.wall_time()}
        self.logs["metrics"].append(full)
        for logger in self.loggers:
            logger.log_metrics(self.position, full)
        if row is not None:
            observer.on_log(self.position, full)

    def evaluate_and_save(self, observer: TrainObserver) -> EvalResult | None:
        """Evaluate (when episodes are asked for), then save the checkpoint whatever the evaluation did.

        Ctrl-C or SIGTERM stops an evaluation at once and drops it (the signal may also have broken its
        worker processes): the checkpoint of this step matters more. Any other failure saves the
        step's checkpoint first and names the command that continues.
        """
        result = None
        if self.config.eval_episodes > 0:
            observer.on_eval_start(self.position, self.config.eval_episodes)
            result = guarded_evaluation(
                lambda: evaluate_agent(self.agent, self.source.task_name, self.config, self.position,
                                       on_episode=observer.on_eval_episode, kept=self.source.eval_envs),
                self.stop, lambda: self.save(observer), self.resume_command(),
            )
        return self.record_and_save(result, observer)

    def record_and_save(self, result: EvalResult | None, observer: TrainObserver) -> EvalResult | None:
        """Write this step's evaluation (None: none was made) to the run's files and loggers, then save."""
        report = None
        if result is not None:
            self.logs["eval"].append(eval_row(self.position, result, self.wall_time()))
            for logger in self.loggers:
                logger.log_eval(self.position, result)
            observer.on_eval(self.position, result)
            report = EvaluationReport(
                checkpoint=str(checkpoint_dir(self.run_dir, self.position)), dataset=self.meta.dataset,
                step=self.agent.step, device=str(self.agent.device), tasks=[result],
            )
        self.save(observer, report)
        self.source.plot(self)
        return result

    def start_info(self) -> dict[str, Any]:
        """What an observer's ``on_start`` gets."""
        agent = self.agent
        return dict(
            run_dir=str(self.run_dir), device=str(agent.device), start_step=self.position,
            steps=self.source.total, env_id=self.meta.env_id, lineage=self.meta.lineage,
            parameters=sum(p.numel() for p in agent.parameters()) // 2,  # online networks only
            runtime=self.runtime.to_dict() if self.runtime else None, **self.source.start_info(agent),
        )


T = TypeVar("T")


def guarded_evaluation(
    evaluation: Callable[[], T], stop: StopSignals, save: Callable[[], Path], resume: str
) -> T | None:
    """Run a periodic ``evaluation``; None when Ctrl-C or SIGTERM stopped it.

    A signal stops it at once and drops it (it may also have broken its worker processes): the
    checkpoint of this step matters more. Any other failure calls ``save`` (the step's checkpoint)
    first and raises an RQLError naming where it went and the ``resume`` command.
    """
    try:
        with stop.interruptible():
            return evaluation()
    except StopNow:
        return None
    except Exception as error:
        if stop.requested:
            return None
        raise RQLError(
            f"The evaluation at this step failed ({type(error).__name__}: {error}); the checkpoint of the "
            f"step is saved at {save()}. Fix the cause, then continue with `{resume}` (or evaluate less "
            "often with --eval-episodes 0)."
        ) from error


def resume_command(run_dir: Path, command: str = "rql train") -> str:
    """The shell command (``command`` plus ``--resume``) that continues the run in ``run_dir``."""
    return f"{command} --resume {shlex.quote(str(run_dir))}"


def check_resume(run_dir: Path, config: RunConfig) -> RunRecord:
    """The record of a run to resume with ``config``; refuses changes to fields that shape the agent.

    The saved weights and Adam moments were made for the run's networks and data: a change there
    needs a new run from the weights (``rql finetune``), which the message names.
    """
    check_resumable(run_dir)
    previous = read_run_record(run_dir)
    old, new = previous.config.flat(), config.flat()
    fixed = sorted(name for name in FIXED_ON_RESUME if old[name] != new[name])
    if fixed:
        raise RQLError(
            f"--resume cannot change {', '.join(fixed)}: the run's checkpoints were made for "
            f"{', '.join(f'{n}={old[n]}' for n in fixed)}. Start a new run from its weights "
            f"with `rql finetune --checkpoint {run_dir} --dataset {previous.dataset} --set ...` instead."
        )
    return previous


def open_session(
    config: RunConfig, source: BatchSource, lock: RunLock, stop: StopSignals, *,
    device: torch.device, previous: RunRecord | None, origin: RunOrigin | None,
) -> RunSession:
    """Build (or restore) the agent on ``source``'s data, open the run's files, compile, record the start.

    Nothing is written to the run folder (``lock.run_dir``) until the inputs are checked; then the
    lock makes the folder (a new run's) and holds it. ``previous`` is the record of a run to resume;
    ``origin`` the checkpoint a new fine-tuning run starts from.
    """
    session = build_session(config, source, lock, stop, device=device, previous=previous, origin=origin)
    agent = session.agent
    runtime = set_up_runtime(agent, config, source.updates_left(agent), source.example_batch(agent), stop,
                             dims=(agent.obs_dim, agent.action_dim))
    start_session(session, runtime, previous, origin)
    return session


def build_session(
    config: RunConfig, source: BatchSource, lock: RunLock, stop: StopSignals, *,
    device: torch.device, previous: RunRecord | None, origin: RunOrigin | None, source_logs: bool = True,
) -> RunSession:
    """``open_session`` up to the compile: the agent (restored or started from ``origin``), the run
    folder, its logs and generators. A seed group opens the source's own logs once, not per seed
    (``source_logs=False``)."""
    run_dir = lock.run_dir
    torch.manual_seed(config.seed)  # network initialisation
    check_agent_fits(config.agent, source.obs_dim, source.action_dim, device)
    agent = RQLAgent(config.agent, source.obs_dim, source.action_dim, device)
    meta = CheckpointMeta(
        config=config.agent, seed=config.seed, dataset=source.dataset_name, env_id=source.env_id, obs_dim=agent.obs_dim,
        action_dim=agent.action_dim, step=0, versions=software_versions(),
        success_timing=success_timing(source.task_name), env_spec=source.env_spec,
        lineage=origin.lineage if origin else previous.parent if previous else None,
    )
    lock.make_folder()
    remove_unfinished_writes(run_dir)
    check_disk(config, agent, run_dir, total=source.total, extra_bytes=source.extra_bytes)
    logs = {"metrics": CsvLog(run_dir / "metrics.csv", source.metric_columns),
            "eval": CsvLog(run_dir / "eval.csv", EVAL_COLUMNS),
            **(source.open_logs(run_dir) if source_logs else {})}
    generators = {name: make_generator(source.sample_device if name == "sample" else device, config.seed + offset)
                  for offset, name in enumerate(source.generator_names)}
    session = RunSession(config=config, run_dir=run_dir, agent=agent, meta=meta, source=source,
                         generators=generators, logs=logs, stop=stop, loggers=open_loggers(config.loggers, run_dir))
    if previous is not None:
        _restore(session)
    elif origin is not None:
        start_from_checkpoint(agent, origin)
    return session


def start_session(session: RunSession, runtime: Runtime, previous: RunRecord | None, origin: RunOrigin | None) -> None:
    """Last step of opening a run: its runtime, its record (train_config.json), the source's start."""
    session.runtime = runtime
    _write_record(session, previous, origin)
    session.source.start(session)


def _restore(session: RunSession) -> None:
    """Load the run's latest resumable checkpoint: weights, Adam, generators, the source's state; trim logs."""
    agent, run_dir = session.agent, session.run_dir
    latest = latest_resumable(run_dir, session.source.checkpoint_files)
    meta, _ = read_meta(latest)
    check_checkpoint_dims(str(latest), meta, agent.obs_dim, agent.action_dim, "the run's data")
    load_weights_into(agent, latest)
    load_train_state_into(agent, latest, session.generators)
    session.source.restore(latest, agent)
    position = session.position
    for log in session.logs.values():
        log.truncate_after(position)
    session.started -= logged_wall_time(list(session.logs.values()))
    session.last_checkpoint, session.saved_at = latest, position


def start_from_checkpoint(agent: RQLAgent, origin: RunOrigin) -> None:
    """Copy the loaded source's weights (and its saved Adam moments, if any) into a fresh agent.

    The dims must match the agent's (built for the data it will train on). ``origin.lineage
    ['optimizer']`` records whether Adam continued.
    """
    check_checkpoint_dims(str(origin.lineage.get("ref", origin.folder)), origin.meta, agent.obs_dim,
                          agent.action_dim, "the data to fine-tune on")
    for name in ("velocity", "velocity_target", "value", "value_target"):
        getattr(agent, name).load_state_dict(getattr(origin.agent, name).state_dict())
    continued = load_optimizer_state(agent, origin.folder)
    origin.lineage["optimizer"] = "continued from its train state" if continued else "fresh (no train state)"
    agent.step = 0


def check_disk(config: RunConfig, agent: RQLAgent, run_dir: Path, total: int, extra_bytes: int = 0) -> None:
    """Refuse a run whose checkpoints (as many as it keeps, or all it saves) will not fit on disk."""
    parameters = sum(p.numel() for p in agent.parameters()) // 2
    checkpoint_bytes = 4 * 4 * parameters + extra_bytes  # weights, targets and two Adam moments
    intervals = [i for i in (config.eval_interval, config.save_interval) if i > 0]
    saves = 1 + sum(total // i for i in intervals)
    count = min(saves, config.keep_checkpoints + 2) if config.keep_checkpoints > 0 else saves
    check_disk_for_checkpoints(run_dir, checkpoint_bytes, count)


def _write_record(
    session: RunSession, previous: RunRecord | None, origin: RunOrigin | None
) -> None:
    """Write train_config.json; on resume keep its lineage and history and add what changed when."""
    meta, config, data = session.meta, session.config, session.source.data
    record = RunRecord(
        dataset=data.name, data=data.location(), env_id=meta.env_id, obs_dim=meta.obs_dim,
        action_dim=meta.action_dim, config=config, versions=meta.versions,
        parent=origin.lineage if origin else None, finetune=origin.settings if origin else None,
    )
    assert session.runtime is not None
    event: dict[str, Any] = {"step": session.position, "event": "resume" if previous else "start",
                             "runtime": session.runtime.to_dict()}
    if previous is not None:
        record.parent, record.finetune, record.history = previous.parent, previous.finetune, previous.history
        old, new = previous.config.flat(), config.flat()
        event["changes"] = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
    record.history = [*record.history, event]
    write_run_record(session.run_dir, record)
    for logger in session.loggers:
        logger.log_record(record.to_dict())


def latest_checkpoint_meta(run_dir: Path, files: tuple[str, ...] = ()) -> CheckpointMeta:
    """The meta of the run's latest checkpoint that can resume it (with ``files`` besides the train state)."""
    return read_meta(latest_resumable(run_dir, files))[0]
