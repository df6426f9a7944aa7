"""Fine-tuning a checkpoint: online in its environment, or by more offline training (``rql finetune``).

Online (as in the FQL code base the official RQL code builds on): each iteration takes one env step
with the **online** velocity field and fresh noise (a chunk of h actions runs open loop, each step
stored as its own transition), then ``utd`` gradient steps of the full RQL loss on batches from a
replay buffer that starts with the checkpoint's offline dataset. Periodic evaluation (EMA field),
checkpoints, Ctrl-C / SIGTERM and NaN checks behave as in ``train.py`` (through ``loop.py``).

Offline continuation is ``train.train`` started from the checkpoint's weights (``RunOrigin``).

The source checkpoint is never written to: a fine-tune writes a new run folder whose
``train_config.json`` and checkpoints carry the lineage.
"""

from __future__ import annotations

import time
from collections import deque
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
from rql_cli.io.resolve import LoadedCheckpoint
from rql_cli.loop import LOGGED_TERMS, LossWindow, StopSignals, due_work
from rql_cli.names import TaskName
from rql_cli.train import TrainObserver, TrainOutcome

BUFFER_FILE = "online_buffer.safetensors"
"""The online part of the replay buffer in a fine-tuning checkpoint (finished episodes only)."""
METRIC_COLUMNS = ["step", "grad_step", *LOGGED_TERMS, "episodes", "online_success", "steps_per_second", "wall_time"]
ONLINE_COLUMNS = ["step", "episode", "return", "length", "success"]
RUNNING_EPISODES = 20
"""Online success is shown as the mean over this many most recent episodes."""


@dataclass
class FinetuneSettings:
    """How a fine-tuning run improves its checkpoint (kept in ``train_config.json`` as ``finetune``).

    Attributes:
        online_steps: environment steps to run (0: continued offline training on ``data``).
        utd: gradient steps per environment step (update-to-data ratio).
        balanced: draw half of each batch from the offline part and half from the online part.
        offline_data: start the replay buffer with the checkpoint's offline dataset.
    """

    online_steps: int = 0
    utd: int = 1
    balanced: bool = False
    offline_data: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return dict(online_steps=self.online_steps, utd=self.utd, balanced=self.balanced,
                    offline_data=self.offline_data)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FinetuneSettings:
        """The settings a run recorded."""
        return cls(**{k: payload[k] for k in ("online_steps", "utd", "balanced", "offline_data") if k in payload})


class FinetuneObserver(TrainObserver):
    """TrainObserver plus the online episodes; ``on_log`` rows also carry grad_step and episodes."""

    def on_episode(self, step: int, episode: Any, running_success: float) -> None:
        """After each online episode: env step, its FinishedEpisode, success over recent episodes."""


def lineage_of(loaded: LoadedCheckpoint, settings: FinetuneSettings, steps: int | None = None) -> dict[str, Any]:
    """What a fine-tuned run records about its source: REF as given, what it resolved to, how."""
    resolved, folder = loaded.resolved, loaded.folder
    lineage: dict[str, Any] = dict(ref=resolved.ref, source=resolved.source, step=loaded.meta.step,
                                   dataset=loaded.meta.dataset)
    if resolved.hub_ref is not None:
        lineage["repo_id"] = resolved.hub_ref.repo_id
        lineage["commit"] = folder.name if folder.parent.name == "snapshots" else resolved.hub_ref.revision
    else:
        lineage["path"] = str(folder.resolve())
    if settings.online_steps > 0:
        lineage["method"] = "online"
        lineage.update(settings.to_dict())
    else:
        lineage.update(method="offline", steps=steps)
    return lineage


def finetune(
    loaded: LoadedCheckpoint | None,
    config: RQLConfig,
    settings: FinetuneSettings,
    data: DataSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: FinetuneObserver | None = None,
) -> TrainOutcome:
    """Fine-tune ``loaded`` into a new run folder (or, with ``resume``, continue ``run_dir``).

    ``data`` is the offline dataset: the checkpoint's own for online runs (its part of the replay
    buffer), the one to keep training on for offline runs. ``config`` is the checkpoint's config
    with the user's overrides; ``config.steps`` is the offline run's length in gradient steps and
    ``config.eval_interval`` counts environment steps in an online run.
    """
    observer = observer or FinetuneObserver()
    origin = None
    if not resume:
        if loaded is None:
            raise RQLError("A new fine-tuning run needs a checkpoint to start from.")
        origin = run_files.RunOrigin(
            loaded.folder, lineage_of(loaded, settings, config.steps), settings.to_dict(), loaded.agent, loaded.meta
        )
    if settings.online_steps <= 0:
        from rql_cli.train import train

        return train(config, data, run_dir, resume=resume, observer=observer, origin=origin)
    return _online(config, settings, data, Path(run_dir), origin, observer)


@dataclass
class _Online:
    """Everything an online fine-tuning run holds while it runs."""

    config: RQLConfig
    settings: FinetuneSettings
    run_dir: Path
    agent: Any
    buffer: Any
    collector: Any
    meta: CheckpointMeta
    task_name: TaskName
    generators: dict[str, torch.Generator]
    logs: dict[str, run_files.CsvLog]
    env_step: int = 0
    episodes: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=RUNNING_EPISODES))
    runtime: Any = None
    last_checkpoint: Path | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def online_success(self) -> float:
        """Success rate over the most recent online episodes (NaN before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else float("nan")

    def save(self, observer: TrainObserver, report: EvaluationReport | None = None) -> Path:
        """A checkpoint at this env step: weights, train state and the online buffer's finished episodes."""
        self.meta.step = self.agent.step
        part = self.buffer.online_part()
        finished = int(part["terminals"].sum().item())
        counters = torch.tensor([self.env_step, finished], dtype=torch.int64)
        path = save_checkpoint(
            run_files.checkpoint_dir(self.run_dir, self.env_step), self.agent, self.meta,
            generators=self.generators, metrics=report,
            extra_tensors={BUFFER_FILE: {**part, "counters": counters}},
        )
        self.last_checkpoint = path
        observer.on_checkpoint(self.env_step, path)
        run_files.prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path


def _online(
    config: RQLConfig, settings: FinetuneSettings, data: DataSpec, run_dir: Path,
    origin: run_files.RunOrigin | None, observer: FinetuneObserver,
) -> TrainOutcome:
    with run_files.RunLock(run_dir) as lock:
        run = _open_online(config, settings, data, lock, origin)
        try:
            return _run_online(run, observer)
        finally:
            run.collector.close()


def _run_online(run: _Online, observer: FinetuneObserver) -> TrainOutcome:
    """The loop: act one env step, store it, update ``utd`` times, then log, evaluate, save, stop."""
    from rql_cli.envs.policy import chunk_policy
    from rql_cli.loop import resume_command

    config, settings, agent, buffer = run.config, run.settings, run.agent, run.buffer
    policy = chunk_policy(agent, run.generators["act"], use_ema=False)
    observer.on_start(_start_info(run))
    outcome = TrainOutcome(run_dir=run.run_dir, step=run.env_step, last_checkpoint=run.last_checkpoint)
    window = LossWindow()
    with StopSignals() as stop:
        while run.env_step < settings.online_steps:
            transition, finished = run.collector.step(policy)
            buffer.add(_stored(transition, config))
            run.env_step += 1
            if finished is not None:
                _record_episode(run, finished, observer)
            if buffer.start_rows.numel() >= config.batch_size:  # a buffer without offline data warms up
                for _ in range(settings.utd):
                    batch = buffer.sample(config.batch_size, run.generators["sample"], balanced=settings.balanced)
                    window.add(agent.update(batch, run.generators["noise"]))
            run.runtime.poll()
            due = due_work(run.env_step, settings.online_steps, config.log_interval, config.eval_interval,
                           config.save_interval, stop.requested)
            if due.flush:
                row = window.flush(run.env_step, run.last_checkpoint)  # raises on a NaN loss
                if due.log:
                    _log(run, row, observer)
            if due.evaluate:
                outcome.last_eval = _evaluate_and_save(run, observer, stop) or outcome.last_eval
            elif due.save or stop.requested:  # a signal may have come during this step's logging
                run.save(observer)
            if stop.requested:
                outcome.interrupted = True
                outcome.resume_command = resume_command(run.run_dir, "rql finetune")
                break
    outcome.step, outcome.last_checkpoint = run.env_step, run.last_checkpoint
    return outcome


def _stored(transition: dict[str, Any], config: RQLConfig) -> dict[str, Any]:
    """The transition as the buffer keeps it: rewards under the checkpoint's reward convention."""
    from rql_cli.data.dataset import sparse_reward

    if not config.sparse_rewards:
        return transition
    return {**transition, "rewards": float(sparse_reward(torch.tensor(transition["rewards"])))}


def _record_episode(run: _Online, finished: Any, observer: FinetuneObserver) -> None:
    run.episodes += 1
    run.recent.append(float(finished.success))
    run.logs["online"].append(dict(step=run.env_step, episode=finished.index, length=finished.length,
                                   success=int(finished.success), **{"return": finished.episode_return}))
    observer.on_episode(run.env_step, finished, run.online_success)


def _log(run: _Online, row: dict[str, float] | None, observer: FinetuneObserver) -> None:
    full = dict(row or {}, step=run.env_step, grad_step=run.agent.step, episodes=run.episodes,
                online_success=run.online_success, wall_time=time.perf_counter() - run.started)
    full.setdefault("steps_per_second", 0.0)
    run.logs["metrics"].append(full)
    if row is not None:
        observer.on_log(run.env_step, full)


def _evaluate_and_save(run: _Online, observer: TrainObserver, stop: StopSignals) -> dict[str, Any] | None:
    """Evaluate the EMA policy (when episodes are asked for), then save whatever the evaluation did."""
    from rql_cli.evaluation import evaluate_agent

    config, agent, result, report = run.config, run.agent, None, None
    if config.eval_episodes > 0:
        observer.on_eval_start(run.env_step, config.eval_episodes)
        try:
            result = evaluate_agent(agent, run.task_name, config, run.env_step, on_episode=observer.on_eval_episode)
        except Exception:
            if not stop.requested:
                raise
    if result is not None:
        run.logs["eval"].append(run_files.eval_row(run.env_step, result, time.perf_counter() - run.started))
        observer.on_eval(run.env_step, result)
        report = EvaluationReport(checkpoint=str(run_files.checkpoint_dir(run.run_dir, run.env_step)),
                                  dataset=run.meta.dataset, step=agent.step, device=str(agent.device), tasks=[result])
    run.save(observer, report)
    run_files.plot_online_curves(run.run_dir, run.logs["online"].read(), run.logs["eval"].read())
    return result


def _start_info(run: _Online) -> dict[str, Any]:
    return dict(
        run_dir=str(run.run_dir), device=str(run.agent.device), start_step=run.env_step,
        steps=run.settings.online_steps, env_id=run.meta.env_id, offline_rows=run.buffer.n_offline,
        grad_step=run.agent.step, episodes=run.episodes, lineage=run.meta.lineage,
        parameters=sum(p.numel() for p in run.agent.parameters()) // 2, runtime=run.runtime.to_dict(),
    )


def _open_online(
    config: RQLConfig, settings: FinetuneSettings, data: DataSpec, lock: run_files.RunLock,
    origin: run_files.RunOrigin | None,
) -> _Online:
    """Build the agent, the buffer (offline part loaded), the env and the run's files; restore on resume.

    The run folder (``lock.run_dir``) is made and locked only once the inputs are checked.
    """
    from rql_cli.core.rql import RQLAgent
    from rql_cli.data.dataset import ACTION_CLIP
    from rql_cli.data.replay import ReplayBuffer, buffer_bytes
    from rql_cli.device import check_agent_fits, make_generator, resolve_device
    from rql_cli.envs.collect import OnlineCollector
    from rql_cli.envs.make import success_timing
    from rql_cli.io.checkpoint import read_meta, software_versions
    from rql_cli.runtime import set_up_runtime
    from rql_cli.train import check_disk, start_from_checkpoint

    if settings.utd < 1:
        raise RQLError(f"--utd must be at least 1, got {settings.utd}.")
    run_dir = lock.run_dir
    device = resolve_device(config.device)
    resumed = None if origin is not None else _latest_resumable(run_dir)
    source_meta = origin.meta if origin else read_meta(resumed)[0]
    task_name = source_meta.task_name  # carries a recorded env spec (Minari, gymnasium envs)
    offline = None
    if settings.offline_data:
        if origin is None:
            data.check_fingerprint()
        offline = _load_offline(data, config, device)
        if origin is not None:
            data = data.with_fingerprint()
        _check_dims(offline, source_meta)
    torch.manual_seed(config.seed)
    check_agent_fits(config, source_meta.obs_dim, source_meta.action_dim, device)
    agent = RQLAgent(config, source_meta.obs_dim, source_meta.action_dim, device)
    buffer = ReplayBuffer(offline, settings.online_steps, agent.obs_dim, agent.action_dim, config.horizon, device)
    generators = {name: make_generator(device, config.seed + offset)
                  for offset, name in enumerate(("sample", "noise", "act"))}
    meta = CheckpointMeta(config=config, dataset=source_meta.dataset, env_id=source_meta.env_id,
                          obs_dim=agent.obs_dim, action_dim=agent.action_dim, step=0,
                          versions=software_versions(), success_timing=success_timing(task_name),
                          lineage=origin.lineage if origin else source_meta.lineage, env_spec=source_meta.env_spec)
    lock.make_folder()
    run_files.remove_unfinished_writes(run_dir)
    check_disk(config, agent, run_dir, total=settings.online_steps,
               extra_bytes=buffer_bytes(settings.online_steps, agent.obs_dim, agent.action_dim))
    logs = {name: run_files.CsvLog(run_dir / f"{name}.csv", columns) for name, columns in
            (("metrics", METRIC_COLUMNS), ("eval", run_files.EVAL_COLUMNS), ("online", ONLINE_COLUMNS))}
    run = _Online(config=config, settings=settings, run_dir=run_dir, agent=agent, buffer=buffer, collector=None,
                  meta=meta, task_name=task_name, generators=generators, logs=logs)
    if origin is not None:
        start_from_checkpoint(agent, origin)
    else:
        _restore(run, resumed)
    example = None
    if buffer.start_rows.numel() >= config.batch_size:
        example = buffer.sample(config.batch_size, make_generator(device, 0))
    grad_steps = (settings.online_steps - run.env_step) * settings.utd
    run.runtime = set_up_runtime(agent, config, grad_steps, example)
    if origin is not None:
        _write_record(run, data, origin)
    else:
        _record_resume(run)
    run.collector = OnlineCollector(task_name, None, seed=1_000_000 + config.seed * 10_000,
                                    first_episode=run.episodes, action_clip=ACTION_CLIP)
    return run


def _load_offline(data: DataSpec, config: RQLConfig, device: torch.device) -> Any:
    """The checkpoint's offline dataset on ``device``; a missing file also names --no-offline-data."""
    from rql_cli.errors import DatasetNotFoundError

    try:
        return data.load(sparse_rewards=config.sparse_rewards, device=device, with_val=False).train
    except DatasetNotFoundError as error:
        raise DatasetNotFoundError(
            f"{error} Or fine-tune without it: --no-offline-data starts the replay buffer empty."
        ) from None


def _check_dims(offline: Any, meta: CheckpointMeta) -> None:
    if (offline.obs_dim, offline.action_dim) != (meta.obs_dim, meta.action_dim):
        raise RQLError(
            f"The offline dataset has observations of size {offline.obs_dim} and actions of size "
            f"{offline.action_dim}; the checkpoint expects observations of size {meta.obs_dim} and "
            f"actions of size {meta.action_dim}."
        )


def _latest_resumable(run_dir: Path) -> Path:
    found = [p for p in run_files.list_checkpoints(run_dir)
             if (p / "train_state.safetensors").is_file() and (p / BUFFER_FILE).is_file()]
    if not found:
        raise RQLError(f"{run_dir} has no fine-tuning checkpoint with a training state and online buffer to resume from.")
    return found[-1]


def _restore(run: _Online, folder: Path) -> None:
    """Continue from ``folder``: weights, Adam, RNG, step counters, the online buffer; trim the logs."""
    from rql_cli.io.checkpoint import (
        load_tensors,
        load_train_state_into,
        load_weights_into,
    )

    load_weights_into(run.agent, folder)
    load_train_state_into(run.agent, folder, run.generators)
    part = load_tensors(folder / BUFFER_FILE)
    counters = part.pop("counters").tolist()
    run.env_step, run.episodes = int(counters[0]), int(counters[1])
    run.buffer.restore_online(part)
    run.last_checkpoint = folder
    for log in run.logs.values():
        log.truncate_after(run.env_step)
    run.started -= run_files.logged_wall_time(list(run.logs.values()))
    run.recent.extend(float(r["success"]) for r in run.logs["online"].read()[-RUNNING_EPISODES:])


def _record_resume(run: _Online) -> None:
    record = run_files.read_run_record(run.run_dir)
    event = {"step": run.env_step, "event": "resume", "runtime": run.runtime.to_dict()}
    record.history = [*record.history, event]
    run_files.write_run_record(run.run_dir, record)


def _write_record(run: _Online, data: DataSpec, origin: run_files.RunOrigin) -> None:
    meta = run.meta
    record = run_files.RunRecord(
        dataset=data.name, data=data.location(), env_id=meta.env_id, obs_dim=meta.obs_dim,
        action_dim=meta.action_dim, config=run.config, versions=meta.versions, parent=origin.lineage,
        finetune=origin.settings, history=[{"step": 0, "event": "start", "runtime": run.runtime.to_dict()}],
    )
    run_files.write_run_record(run.run_dir, record)
