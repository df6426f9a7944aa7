"""Turning an agent into the numpy policy function the evaluators call."""

from __future__ import annotations

import numpy as np
import torch

from rql_cli.core.rql import RQLAgent
from rql_cli.envs.chunks import PolicyFn


def chunk_policy(agent: RQLAgent, generator: torch.Generator, use_ema: bool = True) -> PolicyFn:
    """The agent as a numpy policy: obs (E, obs_dim) float32 -> action chunks (E, h, A) float32.

    Args:
        agent: an RQL agent; it acts on its own device (``agent.device``).
        generator: torch generator on that device; each call draws fresh flow noise from it, so the
            same generator seed gives the same actions for the same calls.
        use_ema: act with the EMA velocity field, as evaluation does.
    """

    def policy(obs: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=agent.device)
        return agent.act(batch, generator, use_ema=use_ema).cpu().numpy()

    return policy
