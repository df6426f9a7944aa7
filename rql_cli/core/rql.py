"""The Reversal Q-Learning agent (Oberai, Park and Levine, 2026), as specified in algorithm.md.

Reads top to bottom like the algorithm box: the value target, the three losses, one update, act.
Pure torch: no files, no terminal, no environments. Randomness comes from explicit generators.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rql_cli.config import RQLConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.flow import (
    euler_generate,
    flow_matching_points,
    reverse_flow,
    sample_reversal_depth,
)
from rql_cli.core.networks import ValueEnsemble, VelocityField


def past_end_flags(terminals: torch.Tensor) -> torch.Tensor:
    """Shifted terminals u (B, h): u_i = 1 when row i lies past the episode end (u_0 = 0)."""
    shifted = torch.cat([torch.zeros_like(terminals[:, :1]), terminals[:, :-1]], dim=1)
    # Clamped rows repeat the last row, so its terminal repeats too; cummax makes that explicit.
    return shifted.cummax(dim=1).values


def chunk_value_target(
    rewards: torch.Tensor,
    masks: torch.Tensor,
    terminals: torch.Tensor,
    next_values: torch.Tensor,
    discount: float,
    rho: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step target y and the window validity, both (B,).

    y = sum_{i<h} gamma^i r_i (1 - u_i) + gamma^h * mask_{h-1} * (mean_k - rho * std_k)(next_values)
    next_values: (K, B) target-ensemble values at (s_h, fresh noise, t = 0).
    A window is valid when the episode does not end before the chunk's last action (u_{h-1} = 0).
    """
    horizon = rewards.shape[1]
    past_end = past_end_flags(terminals)
    powers = discount ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    chunk_reward = (rewards * (1.0 - past_end) * powers).sum(dim=1)
    std = next_values.std(dim=0, unbiased=False) if next_values.shape[0] > 1 else 0.0
    aggregated = next_values.mean(dim=0) - rho * std
    target = chunk_reward + (discount**horizon) * masks[:, -1] * aggregated
    valid = 1.0 - past_end[:, -1]
    return target, valid


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """|kappa - 1(diff < 0)| * diff^2 elementwise, with diff = target - prediction."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


class RQLAgent(nn.Module):
    """Velocity field, value ensemble, their targets and one Adam over both online networks."""

    def __init__(self, config: RQLConfig, obs_dim: int, action_dim: int, device: torch.device):
        super().__init__()
        self.config = config
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.chunk_dim = config.horizon * action_dim
        self.velocity = VelocityField(obs_dim, self.chunk_dim, config.actor_hidden_dims)
        self.value = ValueEnsemble(
            obs_dim,
            self.chunk_dim,
            config.value_hidden_dims,
            config.ensemble_size,
            layer_norm=config.value_layer_norm,
        )
        self.velocity_target = copy.deepcopy(self.velocity).requires_grad_(False)
        self.value_target = copy.deepcopy(self.value).requires_grad_(False)
        self.to(device)
        self.device = device
        self.optimizer = torch.optim.Adam(
            [*self.velocity.parameters(), *self.value.parameters()], lr=config.lr
        )
        self.step = 0

    # ---------------------------------------------------------------------------------------
    # Losses
    # ---------------------------------------------------------------------------------------
    def value_loss(
        self, batch: ChunkBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Expectile regression of V at the reversed point on the one-step chunk target.

        Returns the loss and detached diagnostics (mean prediction, mean target).
        """
        cfg = self.config
        obs = batch.observations
        final_chunk = batch.actions.flatten(1)
        depth = sample_reversal_depth(obs.shape[0], cfg.flow_steps, generator, obs.device)
        reversed_chunk, flow_time = reverse_flow(self.velocity, obs, final_chunk, depth, cfg.flow_steps)
        with torch.no_grad():
            next_noise = self._noise(obs.shape[0], generator)
            start_time = torch.zeros(obs.shape[0], 1, device=obs.device)
            next_values = self.value_target(batch.next_observations, next_noise, start_time)
            target, valid = chunk_value_target(
                batch.rewards, batch.masks, batch.terminals, next_values, cfg.discount, cfg.rho
            )
        predicted = self.value(obs, reversed_chunk, flow_time)  # (K, B)
        loss = expectile_loss(target - predicted, cfg.expectile) * valid
        stats = dict(value_mean=predicted.detach().mean(), target_mean=target.mean())
        return loss.mean(), stats

    def bc_and_policy_losses(
        self, batch: ChunkBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching BC loss and the one-step look-ahead policy loss.

        Both are evaluated at the same interpolation points x^t = (1 - t) x^0 + t x^1 (the official
        code's choice), or the policy loss at reversed points when ``policy_loss_points='reversed'``.
        The value ensemble is called with detached weights, so only the velocity field learns here.
        """
        cfg = self.config
        obs = batch.observations
        batch_size = obs.shape[0]
        final_chunk = batch.actions.flatten(1)
        past_end = past_end_flags(batch.terminals)  # (B, h)
        valid = 1.0 - past_end[:, -1]

        noise = self._noise(batch_size, generator)
        flow_time = torch.rand(batch_size, 1, generator=generator, device=obs.device)
        interpolated, target_velocity = flow_matching_points(final_chunk, noise, flow_time)
        velocity = self.velocity(obs, interpolated, flow_time)
        action_mask = (1.0 - past_end).repeat_interleave(self.action_dim, dim=1)  # (B, h*A)
        bc_loss = ((velocity - target_velocity).square() * action_mask).mean()

        if cfg.policy_loss_points == "reversed":
            depth = sample_reversal_depth(batch_size, cfg.flow_steps, generator, obs.device)
            start_chunk, start_time = reverse_flow(self.velocity, obs, final_chunk, depth, cfg.flow_steps)
            start_velocity = self.velocity(obs, start_chunk, start_time)
        else:
            start_chunk, start_time, start_velocity = interpolated, flow_time, velocity
        step_size = torch.clamp(1.0 - start_time, max=1.0 / cfg.flow_steps)
        next_chunk = start_chunk + start_velocity * step_size
        next_time = torch.clamp(start_time + 1.0 / cfg.flow_steps, max=1.0)
        values = self._value_with_frozen_weights(obs, next_chunk, next_time)  # (K, B)
        policy_loss = -(values.mean(dim=0) * valid).mean()
        return bc_loss, policy_loss

    def _value_with_frozen_weights(
        self, obs: torch.Tensor, chunk: torch.Tensor, flow_time: torch.Tensor
    ) -> torch.Tensor:
        """V(s, x, t) with gradient to the inputs only, never to the value weights."""
        frozen = {name: p.detach() for name, p in self.value.named_parameters()}
        return torch.func.functional_call(self.value, frozen, (obs, chunk, flow_time))

    # ---------------------------------------------------------------------------------------
    # One gradient step
    # ---------------------------------------------------------------------------------------
    def losses(
        self, batch: ChunkBatch, generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss terms including 'total', detached diagnostics) for one batch."""
        value_loss, stats = self.value_loss(batch, generator)
        bc_loss, policy_loss = self.bc_and_policy_losses(batch, generator)
        total = policy_loss + self.config.alpha * bc_loss + value_loss
        return dict(total=total, value=value_loss, bc=bc_loss, policy=policy_loss), stats

    def update(self, batch: ChunkBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One Adam step on all losses, then Polyak (value) and EMA (velocity) target updates.

        Returns detached scalar tensors (no host sync here; the caller decides when to read them).
        """
        losses, stats = self.losses(batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        self._update_targets()
        self.step += 1
        return {**{k: v.detach() for k, v in losses.items()}, **stats}

    @torch.no_grad()
    def _update_targets(self) -> None:
        tau, ema = self.config.tau, self.config.actor_ema
        online = list(self.value.parameters())
        torch._foreach_lerp_(list(self.value_target.parameters()), online, tau)
        torch._foreach_lerp_(
            list(self.velocity_target.parameters()), list(self.velocity.parameters()), 1.0 - ema
        )

    # ---------------------------------------------------------------------------------------
    # Acting
    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, generator: torch.Generator, use_ema: bool = True
    ) -> torch.Tensor:
        """Action chunks (B, h, A) in [-1, 1] for observations (B, obs_dim), from fresh noise.

        Evaluation uses the EMA velocity field; online data collection uses the online one.
        """
        field = self.velocity_target if use_ema else self.velocity
        noise = self._noise(obs.shape[0], generator)
        chunk = euler_generate(field, obs, noise, self.config.flow_steps)
        return chunk.clamp(-1.0, 1.0).view(obs.shape[0], self.config.horizon, self.action_dim)

    def _noise(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(batch_size, self.chunk_dim, generator=generator, device=self.device)
