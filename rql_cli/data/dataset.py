"""The in-memory offline dataset and its action-chunk sampler.

One dataset type for every source: flat per-transition tensors that may live on the GPU, plus the
episode structure the chunk sampler needs. Sources (OGBench files, ...) build it in ``sources.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from rql_cli.core.batch import ChunkBatch
from rql_cli.device import check_fits
from rql_cli.errors import DatasetError

ACTION_CLIP = 1.0 - 1e-5


def sparse_reward(rewards: torch.Tensor) -> torch.Tensor:
    """The paper's sparse rewards: every non-zero reward becomes -1 (solved: 0). Same shape, float32.

    Offline rows and online transitions both go through this, so they mean the same thing.
    """
    return -(torch.as_tensor(rewards) != 0).float()


def episode_structure(terminals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(episode_end (N,), start_rows (M,)) of rows whose episodes are all finished.

    ``episode_end[i]`` is the last row of row i's episode; ``start_rows`` are the rows a window may
    start at: every row but each episode's last one (the official sampler's range [first, last)).
    ``terminals``: (N,) float or bool, 1 on each episode's last row; the last row must be one.
    """
    is_last = terminals > 0
    last_rows = torch.nonzero(is_last).flatten()
    episode_index = torch.cumsum(is_last.long(), dim=0) - is_last.long()
    return last_rows[episode_index], torch.nonzero(~is_last).flatten()


@dataclass
class OfflineDataset:
    """N transitions, in episode order.

    observations, next_observations: (N, obs_dim) float32.  actions: (N, A) float32 in [-1, 1].
    rewards, masks: (N,) float32 (mask 0 = no bootstrap: task solved).  terminals: (N,) float32,
    1 on each episode's last transition (the dataset trajectory ends; not a Bellman terminal).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    masks: torch.Tensor
    terminals: torch.Tensor
    next_observations: torch.Tensor

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        *,
        sparse_rewards: bool = False,
        clip_actions: bool = True,
        device: torch.device | str = "cpu",
    ) -> OfflineDataset:
        """Build from numpy arrays keyed like the fields; applies the reward and action conventions.

        ``sparse_rewards`` turns every non-zero reward into -1; ``clip_actions`` clips actions to
        +-(1 - 1e-5) like the official loaders. The last row is always marked terminal.
        """
        tensors = {}
        for f in fields(cls):
            if f.name not in arrays:
                raise KeyError(f"dataset is missing '{f.name}'")
            tensors[f.name] = torch.as_tensor(np.asarray(arrays[f.name], dtype=np.float32))
            bad = ~torch.isfinite(tensors[f.name])
            if bad.any():
                row = int(torch.nonzero(bad)[0][0])
                raise DatasetError(
                    f"The dataset's {f.name} hold {int(bad.sum()):,} NaN or infinite values (the first in row "
                    f"{row:,}); training on them would only produce NaN losses. Fix or regenerate the file."
                )
        if sparse_rewards:
            tensors["rewards"] = sparse_reward(tensors["rewards"])
        if clip_actions:
            tensors["actions"] = tensors["actions"].clamp(-ACTION_CLIP, ACTION_CLIP)
        tensors["terminals"][-1] = 1.0
        device = torch.device(device)
        if device.type != "cpu":
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            check_fits(size, device, f"The dataset ({tensors['rewards'].numel():,} transitions)",
                       "Keep it in host memory with --set dataset_on_device=false.")
        return cls(**tensors).to(device)

    def to(self, device: torch.device | str) -> OfflineDataset:
        """The same transitions on ``device``."""
        return OfflineDataset(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def size(self) -> int:
        """N, the number of transitions."""
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        """Size of one observation."""
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        """Size of one action."""
        return self.actions.shape[1]

    @property
    def num_episodes(self) -> int:
        """Episodes (rows marked terminal)."""
        return int(self.terminals.sum().item())

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.observations.device

    def statistics(self) -> dict[str, float | int]:
        """Sizes and reward statistics, JSON-friendly."""
        rewards = self.rewards.double()
        ends = torch.nonzero(self.terminals > 0).flatten()
        lengths = torch.diff(ends, prepend=torch.tensor([-1], device=ends.device))
        return dict(
            transitions=self.size,
            episodes=self.num_episodes,
            mean_episode_length=float(lengths.double().mean().item()),
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            reward_mean=float(rewards.mean().item()),
            reward_min=float(rewards.min().item()),
            reward_max=float(rewards.max().item()),
            solved_fraction=float((self.masks == 0).double().mean().item()),
            nonzero_reward_fraction=float((rewards != 0).double().mean().item()),
        )


class ChunkSampler:
    """Samples windows of h consecutive rows, on the dataset's device.

    Start rows are uniform over transitions, excluding each episode's last row (the official
    sampler's range [first row, last row)); row indices are clamped to the episode's last row,
    so rows past the end repeat it. For equal-length episodes (OGBench) this equals the official
    episode-uniform sampler.
    """

    def __init__(self, dataset: OfflineDataset, horizon: int):
        self.dataset = dataset
        self.horizon = horizon
        device = dataset.device
        self.episode_end, self.start_rows = episode_structure(dataset.terminals)
        if self.start_rows.numel() == 0:  # every episode has one row: sample them as they are
            self.start_rows = torch.arange(dataset.size, device=device)
        self.offsets = torch.arange(horizon, device=device)

    def sample(self, batch_size: int, generator: torch.Generator) -> ChunkBatch:
        """A ChunkBatch of ``batch_size`` windows; ``generator`` must live on the dataset's device."""
        data = self.dataset
        pick = torch.randint(
            0, self.start_rows.numel(), (batch_size,), generator=generator, device=data.device
        )
        return self.windows(self.start_rows[pick])

    def windows(self, starts: torch.Tensor) -> ChunkBatch:
        """The windows beginning at rows ``starts`` (B,)."""
        data = self.dataset
        rows = torch.minimum(starts[:, None] + self.offsets, self.episode_end[starts][:, None])
        return ChunkBatch(
            observations=data.observations[starts],
            actions=data.actions[rows],
            rewards=data.rewards[rows],
            masks=data.masks[rows],
            terminals=data.terminals[rows],
            # The official code bootstraps from the observation of row h, which for a chunk ending
            # on an episode's very last transition is that row's own state; we use the true next
            # observation of the chunk's last row instead.
            next_observations=data.next_observations[rows[:, -1]],
        )
