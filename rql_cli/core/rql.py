"""The Reversal Q-Learning agent (Oberai, Park and Levine, 2026), as specified in algorithm.md.

Reads top to bottom like the algorithm box: the value target, the three losses, one update, act.
Pure torch: no files, no terminal, no environments. Randomness comes from explicit generators.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

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
from rql_cli.core.networks import ValueEnsemble, VelocityField, set_hidden_product_dtype


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


@dataclass
class StepNoise:
    """The random draws of one update, made before it so the update is a pure function of them.

    value_depth: (B, 1) reversal depths of the value loss.  next_noise: (B, D) x^0 at s_h.
    bc_noise: (B, D) x^0 of the flow-matching points.  bc_time: (B, 1) their flow times.
    policy_depth: (B, 1) reversal depths of the policy loss, or None at interpolation points.
    """

    value_depth: torch.Tensor
    next_noise: torch.Tensor
    bc_noise: torch.Tensor
    bc_time: torch.Tensor
    policy_depth: torch.Tensor | None


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
        self.compile_mode: str | None = None
        self._loss_fn = self.loss_terms
        self.step = 0

    @functools.cached_property
    def optimizer(self) -> torch.optim.Adam:
        """One Adam over both online networks, made at its first use: making an optimiser imports
        torch's compiler (``torch._dynamo``, about 2 s of CPU), which acting, evaluating, filming or
        verifying a checkpoint never needs."""
        # One fused kernel per step on CPU and CUDA (same update as the per-tensor loop); on CUDA the
        # step counter stays on the device, so a step needs no host sync and can be graph-captured.
        return torch.optim.Adam(
            [*self.velocity.parameters(), *self.value.parameters()],
            lr=self.config.lr,
            fused=True,
            capturable=self.device.type == "cuda",
        )

    # ---------------------------------------------------------------------------------------
    # Losses
    # ---------------------------------------------------------------------------------------
    def draw_noise(self, batch_size: int, generator: torch.Generator) -> StepNoise:
        """Every random number one update uses, in the order the losses consume them."""
        value_depth, next_noise = self._draw_value_noise(batch_size, generator)
        return StepNoise(value_depth, next_noise, *self._draw_policy_noise(batch_size, generator))

    def value_loss(
        self, batch: ChunkBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Expectile regression of V at the reversed point on the one-step chunk target.

        Returns the loss and detached diagnostics (mean prediction, mean target).
        """
        depth, next_noise = self._draw_value_noise(batch.observations.shape[0], generator)
        return self._value_loss(batch, depth, next_noise)

    def bc_and_policy_losses(
        self, batch: ChunkBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching BC loss and the one-step look-ahead policy loss.

        Both are evaluated at the same interpolation points x^t = (1 - t) x^0 + t x^1 (the official
        code's choice), or the policy loss at reversed points when ``policy_loss_points='reversed'``.
        The value ensemble is called with detached weights, so only the velocity field learns here.
        """
        noise, flow_time, depth = self._draw_policy_noise(batch.observations.shape[0], generator)
        return self._bc_and_policy_losses(batch, noise, flow_time, depth)

    def _draw_value_noise(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        depth = sample_reversal_depth(batch_size, self.config.flow_steps, generator, self.device)
        return depth, self.chunk_noise(batch_size, generator)

    def _draw_policy_noise(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        noise = self.chunk_noise(batch_size, generator)
        flow_time = torch.rand(batch_size, 1, generator=generator, device=self.device)
        depth = None
        if self.config.policy_loss_points == "reversed":
            depth = sample_reversal_depth(batch_size, self.config.flow_steps, generator, self.device)
        return noise, flow_time, depth

    def _value_loss(
        self, batch: ChunkBatch, depth: torch.Tensor, next_noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        obs = batch.observations
        final_chunk = batch.actions.flatten(1)
        reversed_chunk, flow_time = reverse_flow(self.velocity, obs, final_chunk, depth, cfg.flow_steps)
        with torch.no_grad():
            start_time = torch.zeros_like(flow_time)
            next_values = self.value_target(batch.next_observations, next_noise, start_time)
            target, valid = chunk_value_target(
                batch.rewards, batch.masks, batch.terminals, next_values, cfg.discount, cfg.rho
            )
        predicted = self.value(obs, reversed_chunk, flow_time)  # (K, B)
        loss = expectile_loss(target - predicted, cfg.expectile) * valid
        stats = dict(value_mean=predicted.detach().mean(), target_mean=target.mean())
        return loss.mean(), stats

    def _bc_and_policy_losses(
        self,
        batch: ChunkBatch,
        noise: torch.Tensor,
        flow_time: torch.Tensor,
        policy_depth: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        obs = batch.observations
        final_chunk = batch.actions.flatten(1)
        past_end = past_end_flags(batch.terminals)  # (B, h)
        valid = 1.0 - past_end[:, -1]

        interpolated, target_velocity = flow_matching_points(final_chunk, noise, flow_time)
        velocity = self.velocity(obs, interpolated, flow_time)
        action_mask = (1.0 - past_end).repeat_interleave(self.action_dim, dim=1)  # (B, h*A)
        bc_loss = ((velocity - target_velocity).square() * action_mask).mean()

        if policy_depth is not None:
            start_chunk, start_time = reverse_flow(
                self.velocity, obs, final_chunk, policy_depth, cfg.flow_steps
            )
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
        return self.loss_terms(batch, self.draw_noise(batch.observations.shape[0], generator))

    def loss_terms(
        self, batch: ChunkBatch, noise: StepNoise
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``losses`` as a pure function of the batch and the drawn noise (what ``compile_update``
        compiles)."""
        value_loss, stats = self._value_loss(batch, noise.value_depth, noise.next_noise)
        bc_loss, policy_loss = self._bc_and_policy_losses(
            batch, noise.bc_noise, noise.bc_time, noise.policy_depth
        )
        total = policy_loss + self.config.alpha * bc_loss + value_loss
        return dict(total=total, value=value_loss, bc=bc_loss, policy=policy_loss), stats

    def set_hidden_product_dtype(self, dtype: torch.dtype | None) -> None:
        """Multiply between hidden layers in ``dtype`` (None: fp32) in all four networks, acting included
        (``networks.set_hidden_product_dtype``). Set it before ``compile_update``."""
        set_hidden_product_dtype(self, dtype)

    def compile_update(self, mode: str | None = "default", *, cpp_wrapper: bool = False) -> None:
        """Compile the loss terms, forward and backward, with torch.compile (inductor); None: eager.

        ``mode`` is torch.compile's: 'default' fuses the elementwise work between matmuls;
        'reduce-overhead' also replays the step as CUDA graphs (CUDA only). Shapes are static (one
        batch size), so compiling happens once, on the first call, and torch caches it on disk.
        The eager ``loss_terms`` stays the reference the compiled one is tested against.
        ``cpp_wrapper`` (with 'default') runs each compiled graph from inductor's C++ wrapper, which
        releases the GIL for the whole graph: the same kernels, so the same numbers, and other Python
        threads (a CPU seed group's, ``core.seed_stack.ThreadedSeeds``) run meanwhile.
        """
        self.compile_mode = mode
        if mode is None:
            self._loss_fn = self.loss_terms
        elif cpp_wrapper and mode == "default":  # torch.compile takes a mode or inductor options, not both
            self._loss_fn = torch.compile(self.loss_terms, dynamic=False, fullgraph=True,
                                          options={"cpp_wrapper": True})
        else:
            self._loss_fn = torch.compile(self.loss_terms, mode=mode, dynamic=False, fullgraph=True)

    def warm_up(self, batch: ChunkBatch) -> None:
        """Run the loss forward and backward once on ``batch`` with zero noise, so a compiled update
        pays its compile here; the gradients it leaves are cleared by the next ``update``."""
        size = batch.observations.shape[0]
        time_shape, chunk_shape = (size, 1), (size, self.chunk_dim)
        depth = torch.zeros(time_shape, device=self.device)
        noise = StepNoise(
            value_depth=depth, next_noise=torch.zeros(chunk_shape, device=self.device),
            bc_noise=torch.zeros(chunk_shape, device=self.device), bc_time=depth,
            policy_depth=depth if self.config.policy_loss_points == "reversed" else None,
        )
        # One call only. Under CUDA graphs it is the eager warm-up run and the first update records
        # the graphs; a second warm-up call recorded them here instead, and its backward then read
        # activations that recording had overwritten (measured on an H200, torch 2.11).
        self._mark_graph_step()
        losses, _ = self._loss_fn(batch, noise)
        losses["total"].backward()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, batch: ChunkBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One Adam step on all losses, then Polyak (value) and EMA (velocity) target updates.

        Returns detached scalar tensors (no host sync here; the caller decides when to read them).
        """
        noise = self.draw_noise(batch.observations.shape[0], generator)
        self._mark_graph_step()
        losses, stats = self._loss_fn(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        self._update_targets()
        self.step += 1
        return {**{k: v.detach() for k, v in losses.items()}, **stats}

    def _mark_graph_step(self) -> None:
        """Tell CUDA-graph replay that the previous step's outputs are no longer read (they are
        copied by the caller's loss window before the next step)."""
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    @torch.no_grad()
    def _update_targets(self) -> None:
        tau, ema = self.config.tau, self.config.actor_ema
        online: list[torch.Tensor] = list(self.value.parameters())
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
        noise = self.chunk_noise(obs.shape[0], generator)
        chunk = euler_generate(field, obs, noise, self.config.flow_steps)
        return chunk.clamp(-1.0, 1.0).view(obs.shape[0], self.config.horizon, self.action_dim)

    def chunk_noise(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Flow noise x^0 ~ N(0, I), (batch_size, h * A), drawn from ``generator`` as ``act`` draws it."""
        return torch.randn(batch_size, self.chunk_dim, generator=generator, device=self.device)
