"""Turning agents into the numpy policy functions the evaluators call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rql_cli.core.rql import RQLAgent
from rql_cli.core.seed_stack import StackedActing
from rql_cli.envs.chunks import PolicyFn
from rql_cli.envs.evaluate import MemberPolicies


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


def seed_policies(agents: Sequence[RQLAgent], generators: Sequence[torch.Generator], stacked: bool) -> MemberPolicies:
    """Several agents (a group's seeds) as the policies ``evaluate_members`` asks together, EMA fields.

    Args:
        agents: agents of one config on one device; member m is ``agents[m]``.
        generators: member m's flow noise comes from ``generators[m]``, drawn as ``chunk_policy`` draws it.
        stacked: one batched forward pass for every member that needs chunks (``StackedActing``: on a
            GPU, N seeds for about the kernels of one); False: each agent's own ``act`` in turn, the
            numbers of ``chunk_policy`` exactly (on a CPU, where the matmuls already fill the cores).
    """
    device = agents[0].device
    acting = StackedActing(agents) if stacked else None

    def policies(rows: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        observations = {m: torch.as_tensor(obs, device=device) for m, obs in rows.items()}
        if acting is not None:
            chunks = acting.act(observations, generators)
        else:
            chunks = {m: agents[m].act(obs, generators[m]) for m, obs in observations.items()}
        return {m: chunk.cpu().numpy() for m, chunk in chunks.items()}

    return policies
