"""The replay buffer of online fine-tuning: the offline dataset, then room for online transitions.

One preallocated ``OfflineDataset`` on the training device holds both parts (offline rows first), so
a batch is one gather, exactly as the offline ``ChunkSampler`` makes it; adding a transition writes
one row in place (no copy of the buffer, no host round trip of what is stored).

Windows never cross episodes: a row becomes a start row once its whole window is stored (h rows of
its episode) or its episode has ended (the window then repeats the last row, as offline). Each
episode's last row is never a start, as offline. Sampling is uniform over all start rows, or with
``balanced`` half of each batch from the offline part and half from the online part.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from rql_cli.core.batch import ChunkBatch
from rql_cli.data.dataset import (
    ACTION_CLIP,
    ChunkSampler,
    OfflineDataset,
    episode_structure,
)
from rql_cli.device import check_fits
from rql_cli.errors import RQLError

TRANSITION_FIELDS = tuple(f.name for f in fields(OfflineDataset))
"""observations, actions, rewards, masks, terminals, next_observations: one row each per transition."""


def buffer_bytes(rows: int, obs_dim: int, action_dim: int) -> int:
    """Bytes of ``rows`` stored transitions with their bookkeeping (float32 rows, int64 indices)."""
    return rows * (4 * (2 * obs_dim + action_dim + 3) + 8 * 2)


def check_buffer_fits(rows: int, obs_dim: int, action_dim: int, device: torch.device) -> int:
    """Refuse, before allocating, a buffer that would not fit in free memory; returns its size in bytes."""
    needed = buffer_bytes(rows, obs_dim, action_dim)
    check_fits(
        needed, device,
        f"The replay buffer ({rows:,} transitions of {obs_dim} observation and {action_dim} action values)",
        "Use fewer --online-steps, --no-offline-data, or a device with more memory.",
    )
    return needed


class ReplayBuffer(ChunkSampler):
    """Offline rows [0, n_offline) then up to ``capacity`` online rows, sampled as chunk windows.

    Args:
        offline: the offline dataset on the training device, or None to start empty.
        capacity: online transitions it can hold (the number of environment steps to run).
        obs_dim, action_dim: sizes of one observation and one action.
        horizon: chunk length h of the windows.
        device: where everything lives.
    """

    def __init__(
        self, offline: OfflineDataset | None, capacity: int, obs_dim: int, action_dim: int, horizon: int,
        device: torch.device,
    ):
        self.n_offline = offline.size if offline is not None else 0
        total = self.n_offline + capacity
        check_buffer_fits(total, obs_dim, action_dim, device)
        shapes = dict(observations=(obs_dim,), actions=(action_dim,), next_observations=(obs_dim,))
        data = OfflineDataset(**{
            name: torch.zeros((total, *shapes.get(name, ())), dtype=torch.float32, device=device)
            for name in TRANSITION_FIELDS
        })
        self.dataset, self.horizon, self.capacity = data, horizon, capacity
        self.offsets = torch.arange(horizon, device=device)
        self.episode_end = torch.full((total,), max(total - 1, 0), dtype=torch.long, device=device)
        self._starts = torch.empty(total, dtype=torch.long, device=device)
        self.n_offline_starts = 0
        if offline is not None:
            self._load_offline(offline)
        self.online_size = 0  # online rows stored
        self._episode_start = 0  # online index of the first row of the episode being collected
        self._num_starts = self.n_offline_starts

    def _load_offline(self, offline: OfflineDataset) -> None:
        for name in TRANSITION_FIELDS:
            getattr(self.dataset, name)[: self.n_offline] = getattr(offline, name)
        episode_end, starts = episode_structure(offline.terminals)
        self.episode_end[: self.n_offline] = episode_end
        self._starts[: starts.numel()] = starts
        self.n_offline_starts = starts.numel()

    # The base sampler holds its start rows as a fixed tensor; here they grow with the buffer, so they
    # are a view computed on access, which mypy reports as a read-only property over a writable field.
    @property
    def start_rows(self) -> torch.Tensor:  # type: ignore[override]
        """Rows a window may start at now: offline ones first, then online ones."""
        return self._starts[: self._num_starts]

    @property
    def num_online_starts(self) -> int:
        """Online rows a window may start at now."""
        return self._num_starts - self.n_offline_starts

    def add(self, transition: dict[str, np.ndarray | float | bool]) -> None:
        """Store one online transition (the keys of ``TRANSITION_FIELDS``) in the next row.

        ``terminals`` 1 ends the episode (terminated or truncated); ``masks`` is 1 - terminated.
        Actions are stored clipped to +-ACTION_CLIP, like the offline loader's.
        """
        if self.online_size >= self.capacity:
            raise RQLError(f"The replay buffer is full ({self.capacity:,} online transitions).")
        row = self.n_offline + self.online_size
        for name in TRANSITION_FIELDS:
            value = torch.as_tensor(np.asarray(transition[name], dtype=np.float32))
            if name == "actions":
                value = value.clamp(-ACTION_CLIP, ACTION_CLIP)
            getattr(self.dataset, name)[row] = value.to(self.dataset.device, non_blocking=True)
        self.online_size += 1
        first = self.n_offline + self._episode_start
        if bool(transition["terminals"]):
            # The episode ended: rows whose windows run past its end become starts now (they
            # repeat the last row, as offline); the last row itself never starts a window.
            self._append_starts(max(first, row - self.horizon + 1), row)
            self.episode_end[first : row + 1] = row
            self._episode_start = self.online_size
        elif row - self.horizon + 1 >= first:
            self._append_starts(row - self.horizon + 1, row - self.horizon + 2)

    def _append_starts(self, begin: int, end: int) -> None:
        count = max(0, end - begin)
        if count:
            self._starts[self._num_starts : self._num_starts + count] = torch.arange(
                begin, end, device=self._starts.device
            )
            self._num_starts += count

    def sample(self, batch_size: int, generator: torch.Generator, balanced: bool = False) -> ChunkBatch:
        """``batch_size`` windows: uniform over every start row, or half offline, half online.

        ``balanced`` falls back to uniform while either part has no start row yet.
        """
        device = self.dataset.device
        if not balanced or self.n_offline_starts == 0 or self.num_online_starts == 0:
            if self._num_starts == 0:
                raise RQLError("The replay buffer holds no complete window yet.")
            pick = torch.randint(0, self._num_starts, (batch_size,), generator=generator, device=device)
            return self.windows(self.start_rows[pick])
        half = batch_size // 2
        offline = torch.randint(0, self.n_offline_starts, (half,), generator=generator, device=device)
        online = torch.randint(
            self.n_offline_starts, self._num_starts, (batch_size - half,), generator=generator, device=device
        )
        return self.windows(self.start_rows[torch.cat([offline, online])])

    def online_part(self) -> dict[str, torch.Tensor]:
        """The online rows of finished episodes (an episode still running is left out), on the CPU."""
        rows = slice(self.n_offline, self.n_offline + self._episode_start)
        return {name: getattr(self.dataset, name)[rows].cpu() for name in TRANSITION_FIELDS}

    def restore_online(self, part: dict[str, torch.Tensor]) -> None:
        """Put back what ``online_part`` returned (into an empty online part)."""
        count = int(part["terminals"].shape[0])
        if self.online_size or count > self.capacity:
            raise RQLError(f"Cannot restore {count:,} online transitions into this replay buffer.")
        if count == 0:
            return
        if not bool(part["terminals"][-1] > 0):
            raise RQLError("The saved online transitions end inside an episode; the buffer file is damaged.")
        rows = slice(self.n_offline, self.n_offline + count)
        for name in TRANSITION_FIELDS:
            getattr(self.dataset, name)[rows] = part[name].to(self.dataset.device)
        episode_end, starts = episode_structure(self.dataset.terminals[rows])
        self.episode_end[rows] = episode_end + self.n_offline
        self._starts[self._num_starts : self._num_starts + starts.numel()] = starts + self.n_offline
        self._num_starts += starts.numel()
        self.online_size = self._episode_start = count
