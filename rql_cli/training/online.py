"""Fine-tuning a checkpoint: online in its environment, or by more offline training (``rql finetune``).

Online (as in the FQL code base the official RQL code builds on): each of the run's steps takes one
env step with the **online** velocity field and fresh noise (a chunk of h actions runs open loop,
each step stored as its own transition), then ``utd`` gradient steps of the full RQL loss on batches
from a replay buffer that starts with the checkpoint's offline dataset (``OnlineSource``). The loop,
evaluation, checkpoints, Ctrl-C / SIGTERM and NaN checks are those of every run (``loop.py``).

Offline continuation is ``offline.train`` started from the checkpoint's weights (``RunOrigin``).

The source checkpoint is never written to: a fine-tune writes a new run folder whose
``train_config.json`` and checkpoints carry the lineage.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rql_cli.config import RQLConfig, RunConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent
from rql_cli.data.dataset import ACTION_CLIP, OfflineDataset, sparse_reward
from rql_cli.data.replay import ReplayBuffer, buffer_bytes
from rql_cli.data.sources import DataSpec
from rql_cli.device import make_generator
from rql_cli.envs.collect import OnlineCollector
from rql_cli.envs.policy import chunk_policy
from rql_cli.errors import DatasetNotFoundError, RQLError
from rql_cli.io.checkpoint import load_tensors
from rql_cli.io.checkpoint_meta import CheckpointMeta, check_checkpoint_dims
from rql_cli.io.curves import plot_online_curves
from rql_cli.io.resolve import LoadedCheckpoint
from rql_cli.io.run_logs import CsvLog
from rql_cli.io.run_record import RunOrigin
from rql_cli.results import Episode
from rql_cli.training.group import train_group
from rql_cli.training.loop import LOGGED_TERMS, LossWindow, run
from rql_cli.training.observer import TrainObserver, TrainOutcome
from rql_cli.training.offline import train
from rql_cli.training.session import BatchSource, RunSession, latest_checkpoint_meta

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
    config: RunConfig,
    settings: FinetuneSettings,
    data: DataSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainObserver | None = None,
) -> TrainOutcome:
    """Fine-tune ``loaded`` into a new run folder (or, with ``resume``, continue ``run_dir``).

    ``data`` is the offline dataset: the checkpoint's own for online runs (its part of the replay
    buffer), the one to keep training on for offline runs. ``config`` is the checkpoint's config
    with the user's overrides; ``config.steps`` is the offline run's length in gradient steps and
    ``config.eval_interval`` counts environment steps in an online run.
    """
    origin = None
    if not resume:
        if loaded is None:
            raise RQLError("A new fine-tuning run needs a checkpoint to start from.")
        origin = RunOrigin(
            loaded.folder, lineage_of(loaded, settings, config.steps), settings.to_dict(), loaded.agent, loaded.meta
        )
    if settings.online_steps <= 0:
        return train(config, data, run_dir, resume=resume, observer=observer, origin=origin, command="rql finetune")
    if settings.utd < 1:
        raise RQLError(f"--utd must be at least 1, got {settings.utd}.")

    def open_source(device: torch.device) -> OnlineSource:
        source_meta = origin.meta if origin else latest_checkpoint_meta(Path(run_dir), (BUFFER_FILE,))
        return OnlineSource(config, settings, data, device, source_meta, resume=resume)

    return run(config, Path(run_dir), open_source, resume=resume, observer=observer, origin=origin)


def finetune_group(
    loaded: dict[int, LoadedCheckpoint] | None,
    config: RunConfig,
    settings: FinetuneSettings,
    data: DataSpec,
    group_dir: Path,
    seeds: list[int],
    *,
    resume: bool = False,
    observer: TrainObserver | None = None,
) -> TrainOutcome:
    """Continued offline training of every seed of a group (``loaded``: each seed's checkpoint) into a
    new group, each seed from its own weights, as ``finetune`` would continue it alone; or, with
    ``resume``, continue ``group_dir``. Online fine-tuning takes one seed at a time."""
    if settings.online_steps > 0:
        raise RQLError("Online fine-tuning takes one agent: name one seed's run folder (GROUP/seed_S) as "
                       "--checkpoint, or continue the whole group offline with --dataset NAME --steps N.")
    origins = None
    if not resume:
        if loaded is None:
            raise RQLError("A new fine-tuning group needs the checkpoints to start from.")
        origins = {s: RunOrigin(c.folder, lineage_of(c, settings, config.steps), settings.to_dict(), c.agent, c.meta)
                   for s, c in loaded.items()}
    return train_group(config, data, group_dir, seeds, resume=resume, observer=observer, origins=origins,
                       command="rql finetune")


class OnlineSource(BatchSource):
    """One env step into the replay buffer, then ``utd`` updates on batches from it, per run step.

    Args:
        config: the run's config.  settings: the fine-tuning settings.
        data: the checkpoint's offline dataset (loaded into the buffer unless ``settings.offline_data``
            is off).
        device: the training device (the buffer lives there).
        source_meta: the checkpoint the run starts from (or, on resume, the run's own): its sizes, env.
    """

    command = "rql finetune"
    checkpoint_files = (BUFFER_FILE,)
    generator_names = ("sample", "noise", "act")
    metric_columns = METRIC_COLUMNS

    def __init__(
        self, config: RunConfig, settings: FinetuneSettings, data: DataSpec, device: torch.device,
        source_meta: CheckpointMeta, *, resume: bool,
    ):
        self.config, self.settings, self.batch_size = config, settings, config.agent.batch_size
        self.task_name = source_meta.task_name  # carries a recorded env spec (Minari, gymnasium envs)
        self.env_id, self._dataset_name = source_meta.env_id, source_meta.dataset
        self.obs_dim, self.action_dim = source_meta.obs_dim, source_meta.action_dim
        offline = None
        if settings.offline_data:
            if resume:
                data.check_fingerprint()
            offline = _load_offline(data, config.agent, device)
            if not resume:
                data = data.with_fingerprint()
            check_checkpoint_dims(source_meta.dataset, source_meta, offline.obs_dim, offline.action_dim,
                                  "the offline dataset")
        self.data = data
        self.buffer = ReplayBuffer(offline, settings.online_steps, self.obs_dim, self.action_dim,
                                   config.agent.horizon, device)
        self.total, self.sample_device = settings.online_steps, device
        self.extra_bytes = buffer_bytes(settings.online_steps, self.obs_dim, self.action_dim)
        self.env_step, self.episodes = 0, 0
        self.recent: deque[float] = deque(maxlen=RUNNING_EPISODES)
        self.collector: OnlineCollector | None = None
        self.online_log: CsvLog | None = None

    @property
    def dataset_name(self) -> str:
        return self._dataset_name

    @property
    def online_success(self) -> float:
        """Success rate over the most recent online episodes (NaN before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else float("nan")

    def position(self, agent: RQLAgent) -> int:
        return self.env_step

    def updates_left(self, agent: RQLAgent) -> int:
        return (self.total - self.env_step) * self.settings.utd

    def example_batch(self, agent: RQLAgent) -> ChunkBatch | None:
        if self.buffer.start_rows.numel() < self.batch_size:  # an empty buffer compiles nothing
            return None
        return self.buffer.sample(self.batch_size, make_generator(agent.device, 0))

    def open_logs(self, run_dir: Path) -> dict[str, CsvLog]:
        self.online_log = CsvLog(run_dir / "online.csv", ONLINE_COLUMNS)
        return {"online": self.online_log}

    def start(self, session: RunSession) -> None:
        self.policy = chunk_policy(session.agent, session.generators["act"], use_ema=False)
        self.collector = OnlineCollector(self.task_name, None, seed=1_000_000 + self.config.seed * 10_000,
                                         first_episode=self.episodes, action_clip=ACTION_CLIP)

    def advance(self, session: RunSession, window: LossWindow, observer: TrainObserver) -> None:
        assert self.collector is not None
        transition, finished = self.collector.step(self.policy)
        self.buffer.add(_stored(transition, self.config.agent))
        self.env_step += 1
        if finished is not None:
            self._record_episode(finished, observer)
        if self.buffer.start_rows.numel() >= self.batch_size:  # a buffer without offline data warms up
            for _ in range(self.settings.utd):
                batch = self.buffer.sample(self.batch_size, session.generators["sample"],
                                           balanced=self.settings.balanced)
                window.add(session.agent.update(batch, session.generators["noise"]))

    def _record_episode(self, finished: Episode, observer: TrainObserver) -> None:
        assert self.online_log is not None
        self.episodes += 1
        self.recent.append(float(finished.success))
        self.online_log.append(dict(step=self.env_step, episode=finished.index, length=finished.length,
                                    success=int(finished.success), **{"return": finished.episode_return}))
        observer.on_episode(self.env_step, finished, self.online_success)

    def log_fields(self, agent: RQLAgent) -> dict[str, float]:
        return dict(grad_step=agent.step, episodes=self.episodes, online_success=self.online_success)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        part = self.buffer.online_part()
        finished = int(part["terminals"].sum().item())
        counters = torch.tensor([self.env_step, finished], dtype=torch.int64)
        return {BUFFER_FILE: {**part, "counters": counters}}

    def restore(self, folder: Path, agent: RQLAgent) -> None:
        part = load_tensors(folder / BUFFER_FILE)
        counters = part.pop("counters").tolist()
        self.env_step, self.episodes = int(counters[0]), int(counters[1])
        self.buffer.restore_online(part)
        assert self.online_log is not None
        kept = [row for row in self.online_log.read() if int(float(row["step"])) <= self.env_step]
        self.recent.extend(float(row["success"]) for row in kept[-RUNNING_EPISODES:])

    def start_info(self, agent: RQLAgent) -> dict[str, Any]:
        return dict(offline_rows=self.buffer.n_offline, grad_step=agent.step, episodes=self.episodes)

    def plot(self, session: RunSession) -> None:
        assert self.online_log is not None
        plot_online_curves(session.run_dir, self.online_log.read(), session.logs["eval"].read())

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()
        super().close()


def _stored(transition: dict[str, Any], config: RQLConfig) -> dict[str, Any]:
    """The transition as the buffer keeps it: rewards under the checkpoint's reward convention."""
    if not config.sparse_rewards:
        return transition
    return {**transition, "rewards": float(sparse_reward(torch.tensor(transition["rewards"])))}


def _load_offline(data: DataSpec, config: RQLConfig, device: torch.device) -> OfflineDataset:
    """The checkpoint's offline dataset on ``device``; a missing file also names --no-offline-data."""
    try:
        return data.load(sparse_rewards=config.sparse_rewards, device=device, with_val=False).train
    except DatasetNotFoundError as error:
        raise DatasetNotFoundError(
            f"{error} Or fine-tune without it: --no-offline-data starts the replay buffer empty."
        ) from None
