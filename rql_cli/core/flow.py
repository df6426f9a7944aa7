"""Flow maths: Euler generation, flow reversal, the reversal-depth sampler, flow-matching targets.

Flow time runs from 0 (noise) to 1 (finished chunk) in ``flow_steps`` Euler steps of 1/F.
A ``velocity_fn(obs, chunk, flow_time)`` maps (B, obs_dim), (B, D), (B, 1) -> (B, D).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def euler_generate(
    velocity_fn: VelocityFn, obs: torch.Tensor, noise: torch.Tensor, flow_steps: int
) -> torch.Tensor:
    """Integrate x <- x + v(s, x, i/F) / F for i = 0..F-1 from ``noise`` (B, D); unclipped (B, D)."""
    x = noise
    for i in range(flow_steps):
        flow_time = torch.full((x.shape[0], 1), i / flow_steps, device=x.device, dtype=x.dtype)
        x = x + velocity_fn(obs, x, flow_time) / flow_steps
    return x


def sample_reversal_depth(
    batch_size: int, flow_steps: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Reversal depths d (B, 1): the first half ~ U[0, 1), the second half uniform on {0, 1/F, .., 1}."""
    n_continuous = batch_size // 2
    continuous = torch.rand(n_continuous, 1, generator=generator, device=device)
    grid = torch.randint(
        0, flow_steps + 1, (batch_size - n_continuous, 1), generator=generator, device=device
    ).float() / flow_steps
    return torch.cat([continuous, grid], dim=0)


def reverse_flow(
    velocity_fn: VelocityFn,
    obs: torch.Tensor,
    final_chunk: torch.Tensor,
    depth: torch.Tensor,
    flow_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Follow the ODE backwards from the finished chunk x^1 to flow time 1 - d.

    F backward Euler steps of size d/F each: x <- x - v(s, x, t) * d / F, t <- t - d / F.

    Args:
        obs: (B, obs_dim); final_chunk: (B, D) dataset chunk at t = 1; depth: (B, 1) in [0, 1].
    Returns:
        (reversed_chunk (B, D), flow_time (B, 1) = 1 - depth). No gradient is tracked.
    """
    with torch.no_grad():
        x = final_chunk
        flow_time = torch.ones_like(depth)
        step = depth / flow_steps
        for _ in range(flow_steps):
            x = x - velocity_fn(obs, x, flow_time) * step
            flow_time = flow_time - step
        # Repeated subtraction leaves float noise around 1 - d; pin the time exactly.
        return x, (1.0 - depth)


def flow_matching_points(
    final_chunk: torch.Tensor, noise: torch.Tensor, flow_time: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-path interpolation x^t = (1 - t) x^0 + t x^1 and its target velocity x^1 - x^0.

    final_chunk, noise: (B, D); flow_time: (B, 1). Returns (x^t (B, D), target velocity (B, D)).
    """
    interpolated = (1.0 - flow_time) * noise + flow_time * final_chunk
    return interpolated, final_chunk - noise
