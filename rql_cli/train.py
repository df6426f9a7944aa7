"""The training loop: data, agent, periodic evaluation and checkpoints, tied together.

It reports through a ``TrainObserver`` so the CLI can draw progress and tests can read it; it
never prints. Ctrl-C / SIGTERM save a checkpoint at the current step; ``resume`` continues
bit-for-bit on CPU (batches and flow noise come from generators saved in the train state).
"""

from __future__ import annotations

import shlex
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from rql_cli.config import RQLConfig
from rql_cli.errors import NonFiniteLossError, RQLError
from rql_cli.io import run_files
from rql_cli.io.checkpoint import (
    CheckpointMeta,
    load_train_state_into,
    load_weights_into,
    read_meta,
    save_checkpoint,
    software_versions,
)

LOSS_TERMS = ("value", "bc", "policy", "total")  # checked in this order: name the first bad term
METRIC_COLUMNS = ["step", *LOSS_TERMS, "value_mean", "target_mean", "steps_per_second", "wall_time"]
EVAL_COLUMNS = [
    "step", "success_rate", "success_low", "success_high", "mean_return", "episodes", "wall_time",
]


@dataclass
class DataSpec:
    """Which dataset a run trains on and where its files are."""

    name: str
    dataset_dir: str | None = None
    dataset_path: str | None = None
    task: int | None = None


class TrainObserver:
    """Hooks the loop calls; the defaults do nothing. Override what you want to see."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_log(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval_start(self, step: int, episodes: int) -> None: ...
    def on_eval_episode(self, done: int, total: int, success_rate: float) -> None: ...
    def on_eval(self, step: int, result: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...


@dataclass
class TrainOutcome:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    interrupted: bool = False
    last_eval: dict[str, Any] | None = None
    resume_command: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class _StopRequest:
    """Set by SIGINT/SIGTERM; the loop checks it between steps. A second signal stops at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


@contextmanager
def _catch_stop_signals() -> Iterator[_StopRequest]:
    request = _StopRequest()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request)
    except ValueError:  # not the main thread: the caller handles interruption
        previous = {}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_command(run_dir: Path) -> str:
    return f"rql train --resume {shlex.quote(str(run_dir))}"


def train(
    config: RQLConfig,
    data: DataSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainObserver | None = None,
) -> TrainOutcome:
    """Train (or resume) an RQL agent until ``config.steps`` gradient steps.

    With ``resume`` the run folder's latest checkpoint with a train state is loaded and training
    continues from its step; rows logged after that step are dropped from the CSV logs.
    """
    from rql_cli.core.device import make_generator, resolve_device
    from rql_cli.core.rql import RQLAgent
    from rql_cli.data.dataset import ChunkSampler
    from rql_cli.data.sources import load_ogbench

    observer = observer or TrainObserver()
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    data_device = device if config.dataset_on_device else torch.device("cpu")
    torch.manual_seed(config.seed)  # network initialisation

    loaded = load_ogbench(
        data.name,
        task=data.task,
        dataset_dir=Path(data.dataset_dir) if data.dataset_dir else None,
        dataset_path=Path(data.dataset_path) if data.dataset_path else None,
        sparse_rewards=config.sparse_rewards,
        device=data_device,
        with_val=False,
    )
    dataset = loaded.train
    sampler = ChunkSampler(dataset, config.horizon)
    agent = RQLAgent(config, dataset.obs_dim, dataset.action_dim, device)
    generators = {
        "sample": make_generator(data_device, config.seed),
        "noise": make_generator(device, config.seed + 1),
    }
    meta = CheckpointMeta(
        config=config,
        dataset=data.name,
        env_id=loaded.env_id,
        obs_dim=dataset.obs_dim,
        action_dim=dataset.action_dim,
        step=0,
        versions=software_versions(),
        success_timing=_success_timing(loaded.env_id),
    )

    metrics_log = run_files.CsvLog(_ensure_dir(run_dir) / "metrics.csv", METRIC_COLUMNS)
    eval_log = run_files.CsvLog(run_dir / "eval.csv", EVAL_COLUMNS)
    last_checkpoint: Path | None = None
    if resume:
        last_checkpoint = _resume_from(run_dir, agent, generators)
        metrics_log.truncate_after(agent.step)
        eval_log.truncate_after(agent.step)
    run_files.write_run_record(
        run_dir,
        dict(
            format_version=1,
            dataset=data.name,
            data=dict(
                dataset_dir=data.dataset_dir, dataset_path=data.dataset_path, task=data.task
            ),
            env_id=loaded.env_id,
            obs_dim=dataset.obs_dim,
            action_dim=dataset.action_dim,
            versions=meta.versions,
            config=config.to_dict(),
        ),
    )
    observer.on_start(
        dict(
            run_dir=str(run_dir), device=str(device), start_step=agent.step, steps=config.steps,
            dataset=dataset.statistics(), env_id=loaded.env_id,
            parameters=sum(p.numel() for p in agent.parameters()) // 2,  # online networks only
        )
    )

    def checkpoint(metrics: dict[str, Any] | None = None) -> Path:
        meta.step = agent.step
        path = save_checkpoint(
            run_files.checkpoint_dir(run_dir, agent.step), agent, meta,
            generators=generators, metrics=metrics,
        )
        observer.on_checkpoint(agent.step, path)
        return path

    outcome = TrainOutcome(run_dir=run_dir, step=agent.step, last_checkpoint=last_checkpoint)
    pending: list[torch.Tensor] = []
    window_start, wall_start = time.perf_counter(), time.perf_counter()
    with _catch_stop_signals() as stop:
        while agent.step < config.steps:
            batch = sampler.sample(config.batch_size, generators["sample"])
            if data_device != device:
                batch = _to_device(batch, device)
            metrics = agent.update(batch, generators["noise"])
            pending.append(torch.stack([metrics[k] for k in (*LOSS_TERMS, "value_mean", "target_mean")]))
            step = agent.step
            log_due = step % config.log_interval == 0 or step == config.steps
            eval_due = _due(step, config.eval_interval, config.steps)
            save_due = config.save_interval > 0 and step % config.save_interval == 0
            if log_due or eval_due or save_due or stop.signal_name:
                rows = torch.stack(pending).double().cpu()
                _check_finite(rows, step - len(pending) + 1, last_checkpoint)
                pending.clear()
                if log_due:
                    now = time.perf_counter()
                    mean = rows.mean(dim=0).tolist()
                    row = dict(zip((*LOSS_TERMS, "value_mean", "target_mean"), mean))
                    row.update(
                        step=step,
                        steps_per_second=len(rows) / max(now - window_start, 1e-9),
                        wall_time=now - wall_start,
                    )
                    window_start = now
                    metrics_log.append(row)
                    outcome.history.append(row)
                    observer.on_log(step, row)
            if eval_due:
                result = None
                if config.eval_episodes > 0:
                    try:
                        result = _evaluate(agent, loaded.env_id, config, observer)
                    except Exception:
                        # Ctrl-C also reaches evaluation worker processes, which then fail; the
                        # checkpoint below matters more than this evaluation.
                        if not stop.signal_name:
                            raise
                    if result is not None:
                        eval_log.append(_eval_row(step, result, time.perf_counter() - wall_start))
                        outcome.last_eval = result
                        observer.on_eval(step, result)
                last_checkpoint = checkpoint(metrics=result)
                run_files.plot_curves(run_dir, metrics_log.read(), eval_log.read())
            elif save_due:
                last_checkpoint = checkpoint()
            if stop.signal_name:
                if not eval_due and not save_due:
                    last_checkpoint = checkpoint()
                outcome.interrupted = True
                outcome.resume_command = resume_command(run_dir)
                break
    outcome.step = agent.step
    outcome.last_checkpoint = last_checkpoint
    return outcome


def _due(step: int, interval: int, total: int) -> bool:
    return step == total or (interval > 0 and step % interval == 0)


def _check_finite(rows: torch.Tensor, first_step: int, last_checkpoint: Path | None) -> None:
    """rows: (n, terms) losses of consecutive steps; raise naming the first bad step and term."""
    bad = ~torch.isfinite(rows)
    if bad.any():
        index, term = (int(i) for i in torch.nonzero(bad)[0])
        names = (*LOSS_TERMS, "value_mean", "target_mean")
        raise NonFiniteLossError(
            first_step + index, names[term], float(rows[index, term]), last_checkpoint
        )


def _to_device(batch: Any, device: torch.device) -> Any:
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True) for f in fields(batch)})


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _success_timing(env_id: str) -> str:
    from rql_cli.envs.make import success_timing

    return success_timing(env_id)


def _resume_from(run_dir: Path, agent: Any, generators: dict[str, torch.Generator]) -> Path:
    """Load the latest checkpoint of ``run_dir`` that has a train state; returns its folder."""
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
    load_train_state_into(agent, latest, generators)
    return latest


def _evaluate(agent: Any, env_id: str, config: RQLConfig, observer: TrainObserver) -> dict[str, Any]:
    from rql_cli.core.device import make_generator
    from rql_cli.envs.evaluate import evaluate
    from rql_cli.envs.policy import chunk_policy

    # Evaluation draws its flow noise from its own generator, so it never shifts the training
    # stream: a run with and without evaluations trains the same weights.
    generator = make_generator(agent.device, config.seed + 7919 * (agent.step + 1))
    observer.on_eval_start(agent.step, config.eval_episodes)
    result = evaluate(
        chunk_policy(agent, generator),
        env_id,
        None,
        episodes=config.eval_episodes,
        num_envs=config.eval_envs,
        seed=config.seed,
        on_episode=observer.on_eval_episode,
    )
    return result.to_dict()


def _eval_row(step: int, result: dict[str, Any], wall_time: float) -> dict[str, Any]:
    low, high = result["success_ci95"]
    return dict(
        step=step, success_rate=result["success_rate"], success_low=low, success_high=high,
        mean_return=result["mean_return"], episodes=result["episodes"], wall_time=wall_time,
    )
