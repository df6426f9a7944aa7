"""The training batch every data source produces and the agent consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class ChunkBatch:
    """B windows of h consecutive dataset rows starting at s_0.

    observations: (B, obs_dim) s_0.  actions: (B, h, A) the dataset chunk a_0..a_{h-1}.
    rewards, masks, terminals: (B, h) per row (rows past an episode's end repeat its last row).
    next_observations: (B, obs_dim) the state after the chunk's last action (bootstrap state).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    masks: torch.Tensor
    terminals: torch.Tensor
    next_observations: torch.Tensor

    def to(self, device: torch.device) -> ChunkBatch:
        """The same windows on ``device`` (non-blocking copies; a no-op when already there)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})
