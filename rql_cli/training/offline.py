"""Offline training: batches of chunk windows from a dataset file or a shard folder (``rql train``).

``train`` runs the one loop (``loop.py``) on an ``OfflineSource``; with ``origin`` it starts a new run
from a checkpoint's weights (``rql finetune --dataset``, continued offline training). ``resume``
continues bit-for-bit on CPU: batches and flow noise come from generators saved in the train state,
and which shard a step uses depends on the step alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rql_cli.config import RunConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent
from rql_cli.data.dataset import OfflineDataset
from rql_cli.data.shards import ShardRotation, ShardSwap
from rql_cli.data.sources import DataSpec
from rql_cli.device import make_generator
from rql_cli.envs.external import env_spec_json
from rql_cli.errors import DatasetError
from rql_cli.io.curves import plot_curves
from rql_cli.io.run_logs import CsvLog
from rql_cli.io.run_record import RunOrigin
from rql_cli.names import ExternalName, ParsedName, parse_task_name
from rql_cli.training.loop import LOGGED_TERMS, LossWindow, run
from rql_cli.training.observer import TrainObserver, TrainOutcome
from rql_cli.training.session import BatchSource, RunSession, latest_checkpoint_meta

__all__ = ["DataSpec", "OfflineSource", "TrainObserver", "TrainOutcome", "train"]

METRIC_COLUMNS = ["step", *LOGGED_TERMS, "steps_per_second", "wall_time"]
SHARD_COLUMNS = ["step", "shard", "file", "load_seconds", "wait_seconds", "wall_time"]
"""shards.csv (shard folders only): which shard became resident at which step, and what it cost."""


def train(
    config: RunConfig,
    data: DataSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainObserver | None = None,
    origin: RunOrigin | None = None,
    command: str = "rql train",
) -> TrainOutcome:
    """Train (or resume) an RQL agent until ``config.steps`` gradient steps.

    With ``resume`` the run folder's latest checkpoint with a train state is loaded and training
    continues from its step; rows logged after that step are dropped from the CSV logs. With
    ``origin`` (continued offline training) a new run starts from that checkpoint's weights (and its
    Adam state when it has one) at step 0, and records the lineage. ``command`` is the one whose
    ``--resume`` continues the run (``rql finetune`` for continued offline training).
    """
    def open_source(device: torch.device) -> OfflineSource:
        start_step = latest_checkpoint_meta(Path(run_dir)).step if resume else 0
        source = OfflineSource(config, data, device, start_step=start_step, resume=resume)
        source.command = command
        return source

    return run(config, Path(run_dir), open_source, resume=resume, observer=observer, origin=origin)


class OfflineSource(BatchSource):
    """Uniform chunk windows of one dataset, or of a shard folder's shards in turn.

    Args:
        config: the run's config (reward convention, horizon, batch size, steps, data placement).
        data: the dataset; its fingerprint is taken now, or checked against the run's on ``resume``.
        device: the training device.
        start_step: the step the run starts or resumes at (picks the resident shard).
    """

    metric_columns = METRIC_COLUMNS

    def __init__(self, config: RunConfig, data: DataSpec, device: torch.device, *, start_step: int, resume: bool):
        if resume:
            data.check_fingerprint()
        else:
            data = data.with_fingerprint()
        self.data, self.env_id = data, data.env_id
        self.batch_size, self.total, self.start_step = config.agent.batch_size, config.steps, start_step
        self.sample_device = device if config.dataset_on_device else torch.device("cpu")
        self.shard_log = _ShardLog() if data.sharded else None
        self.task_name = parse_task_name(data.env_id)
        # An OGBench file is relabelled in the env the run's evaluations step (one build, not two).
        shares_env = data.external is None and not data.sharded
        self.rotation = data.rotation(
            sparse_rewards=config.agent.sparse_rewards, device=self.sample_device, horizon=config.agent.horizon,
            swap_every=config.shard_swap_every, prefetch=config.shard_prefetch,
            on_swap=None if self.shard_log is None else self.shard_log.add,
            relabel_env=self.eval_envs.in_process_env(self.task_name, config.eval_episodes, config.eval_envs)
            if shares_env else None,
        )
        try:
            dataset = self.rotation.sampler(start_step).dataset
            if config.eval_episodes > 0:  # the envs it builds are the first evaluation's
                check_dataset_fits_env(dataset, self.task_name, self.eval_envs.dims(
                    self.task_name, config.eval_episodes, config.eval_envs))
        except BaseException:
            self.close()
            raise
        self.obs_dim, self.action_dim = dataset.obs_dim, dataset.action_dim
        self.statistics = {**dataset.statistics(), **_shard_stats(self.rotation)}

    @property
    def env_spec(self) -> str | None:
        return env_spec_json(self.task_name) if isinstance(self.task_name, ExternalName) else None

    def example_batch(self, agent: RQLAgent) -> ChunkBatch:
        sampler = self.rotation.sampler(agent.step)
        return sampler.sample(self.batch_size, make_generator(self.sample_device, 0)).to(agent.device)

    def open_logs(self, run_dir: Path) -> dict[str, CsvLog]:
        if self.shard_log is not None:  # trims itself: a swap at the resume step is logged again
            self.shard_log.open(run_dir, self.start_step)
        return {}

    def advance(self, session: RunSession, window: LossWindow, observer: TrainObserver) -> None:
        agent = session.agent
        window.add(agent.update(self.batch(agent.step, session.generators["sample"], agent.device),
                                session.generators["noise"]))

    def batch(self, step: int, generator: torch.Generator, device: torch.device) -> ChunkBatch:
        """The batch of gradient step ``step`` drawn with ``generator`` (a run's 'sample'), on ``device``."""
        batch = self.rotation.sampler(step).sample(self.batch_size, generator)
        return batch.to(device) if self.sample_device != device else batch

    def start_info(self, agent: RQLAgent) -> dict[str, Any]:
        return {"dataset": self.statistics}

    def plot(self, session: RunSession) -> None:
        meta = session.meta
        plot_curves(session.run_dir, session.logs["metrics"].read(), session.logs["eval"].read(),
                              title=f"{session.run_dir.name}: RQL on {meta.dataset} ({meta.env_id})")

    def close(self) -> None:
        self.rotation.close()
        super().close()


class _ShardLog:
    """shards.csv of a shard-folder run: rows wait in memory until the run folder may be written."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waiting: list[dict[str, Any]] = []
        self.log: CsvLog | None = None

    def add(self, swap: ShardSwap) -> None:
        """Record one swap (called by the rotation, possibly before the folder exists)."""
        row = {**swap.__dict__, "wall_time": time.perf_counter() - self.started}
        if self.log is None:
            self.waiting.append(row)
        else:
            self.log.append(row)

    def open(self, run_dir: Path, start_step: int) -> None:
        """Open the CSV (dropping rows from ``start_step`` on: they are about to be redone), write what waited."""
        self.log = CsvLog(run_dir / "shards.csv", SHARD_COLUMNS)
        self.log.truncate_after(start_step - 1)
        for row in self.waiting:
            self.log.append(row)
        self.waiting = []


def _shard_stats(rotation: ShardRotation) -> dict[str, Any]:
    """What the start message says about a shard folder: how many shards, how often they change."""
    if len(rotation.shards) == 1:
        return {}
    return {"shards": len(rotation.shards), "shard_swap_every": rotation.swap_every,
            "shard_prefetch": rotation.prefetch}


def check_dataset_fits_env(dataset: OfflineDataset, task_name: ParsedName, env_sizes: tuple[int, int]) -> None:
    """Refuse, before the first gradient step, a dataset whose sizes differ from its environment's
    (``env_sizes``: its observation and action sizes)."""
    env_obs, env_act = env_sizes
    if (env_obs, env_act) != (dataset.obs_dim, dataset.action_dim):
        raise DatasetError(
            f"The dataset has observations of size {dataset.obs_dim} and actions of size {dataset.action_dim}, "
            f"but its environment {task_name.env_id()} gives observations of size {env_obs} and actions of "
            f"size {env_act}; the first evaluation would fail. Check that the file belongs to "
            f"{task_name.dataset_name}."
        )
