"""Turning an agent into the numpy policy function the evaluators call."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

PolicyFn = Callable[[np.ndarray], np.ndarray]


def chunk_policy(agent: Any, generator: torch.Generator, use_ema: bool = True) -> PolicyFn:
    """obs (E, obs_dim) float32 -> action chunks (E, h, A) float32, on the agent's device.

    Evaluation uses the EMA velocity field (``use_ema``) and fresh noise from ``generator`` each call.
    """

    def policy(obs: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=agent.device)
        return agent.act(batch, generator, use_ema=use_ema).cpu().numpy()

    return policy
