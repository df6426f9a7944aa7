"""The RQL maths: gradient routing, flow integration, reversal, value targets, target updates."""

from __future__ import annotations

import copy

import pytest
import torch

from rql_cli.config import RQLConfig
from rql_cli.core.flow import euler_generate, reverse_flow, sample_reversal_depth
from rql_cli.core.networks import ValueEnsemble, VelocityField
from rql_cli.core.rql import (
    ChunkBatch,
    RQLAgent,
    chunk_value_target,
    expectile_loss,
    past_end_flags,
)

OBS, ACT, H = 6, 2, 3


def small_config(**changes) -> RQLConfig:
    base = dict(
        actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=4, horizon=H,
        flow_steps=5, batch_size=16, rho=0.5, expectile=0.7,
    )
    base.update(changes)
    return RQLConfig(**base)


def random_batch(batch_size: int = 16, seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    return ChunkBatch(
        observations=torch.randn(batch_size, OBS, generator=g),
        actions=torch.rand(batch_size, H, ACT, generator=g) * 2 - 1,
        rewards=-torch.rand(batch_size, H, generator=g),
        masks=torch.ones(batch_size, H),
        terminals=torch.zeros(batch_size, H),
        next_observations=torch.randn(batch_size, OBS, generator=g),
    )


@pytest.fixture
def agent() -> RQLAgent:
    torch.manual_seed(0)
    return RQLAgent(small_config(), OBS, ACT, torch.device("cpu"))


def grads_of(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def has_nonzero_grad(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads_of(module))


def has_no_grad(module: torch.nn.Module) -> bool:
    return all(g is None or g.abs().sum() == 0 for g in grads_of(module))


# --------------------------------------------------------------------------------------------
# Gradient routing, parameter group by parameter group
# --------------------------------------------------------------------------------------------


def test_value_loss_moves_only_value_weights(agent):
    loss, _ = agent.value_loss(random_batch(), torch.Generator().manual_seed(1))
    loss.backward()
    assert has_nonzero_grad(agent.value)
    assert has_no_grad(agent.velocity)


def test_bc_loss_moves_only_velocity_weights(agent):
    bc, _ = agent.bc_and_policy_losses(random_batch(), torch.Generator().manual_seed(1))
    bc.backward()
    assert has_nonzero_grad(agent.velocity)
    assert has_no_grad(agent.value)


@pytest.mark.parametrize("points", ["interpolation", "reversed"])
def test_policy_loss_reaches_velocity_and_leaves_value_and_targets_untouched(points):
    torch.manual_seed(0)
    agent = RQLAgent(small_config(policy_loss_points=points), OBS, ACT, torch.device("cpu"))
    value_before = copy.deepcopy(agent.value.state_dict())
    targets_before = copy.deepcopy(
        (agent.value_target.state_dict(), agent.velocity_target.state_dict())
    )
    _, policy = agent.bc_and_policy_losses(random_batch(), torch.Generator().manual_seed(1))
    policy.backward()
    assert has_nonzero_grad(agent.velocity), "the policy loss must train the velocity field"
    assert all(p.grad is None for p in agent.value.parameters()), "the value got policy gradient"
    agent.optimizer.step()
    for key, tensor in agent.value.state_dict().items():
        assert torch.equal(tensor, value_before[key]), key
    for module, before in zip((agent.value_target, agent.velocity_target), targets_before):
        for key, tensor in module.state_dict().items():
            assert torch.equal(tensor, before[key]), key


def test_policy_loss_gradient_matches_value_slope(agent):
    """Pushing the velocity field along -grad(policy loss) raises the value one step ahead."""
    batch = random_batch()
    _, policy = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(3))
    policy.backward()
    with torch.no_grad():
        for p in agent.velocity.parameters():
            p -= 1e-3 * p.grad
    _, policy_after = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(3))
    assert policy_after < policy


def test_update_moves_targets_by_tau_and_ema():
    torch.manual_seed(0)
    config = small_config(tau=0.1, actor_ema=0.8)
    agent = RQLAgent(config, OBS, ACT, torch.device("cpu"))
    # Make the targets differ from the online nets so the blend is visible.
    with torch.no_grad():
        for p in [*agent.value_target.parameters(), *agent.velocity_target.parameters()]:
            p.add_(0.5)
    old_value_target = [p.clone() for p in agent.value_target.parameters()]
    old_velocity_target = [p.clone() for p in agent.velocity_target.parameters()]
    agent.update(random_batch(), torch.Generator().manual_seed(1))
    for target, old, online in zip(agent.value_target.parameters(), old_value_target, agent.value.parameters()):
        torch.testing.assert_close(target, old + 0.1 * (online - old))
    for target, old, online in zip(
        agent.velocity_target.parameters(), old_velocity_target, agent.velocity.parameters()
    ):
        torch.testing.assert_close(target, old + 0.2 * (online - old))
    assert agent.step == 1


def test_update_changes_both_online_networks(agent):
    before_v = [p.clone() for p in agent.velocity.parameters()]
    before_q = [p.clone() for p in agent.value.parameters()]
    agent.update(random_batch(), torch.Generator().manual_seed(1))
    assert any(not torch.equal(a, b) for a, b in zip(before_v, agent.velocity.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_q, agent.value.parameters()))


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def test_value_ensemble_members_are_independent_and_batched():
    torch.manual_seed(0)
    ensemble = ValueEnsemble(OBS, 4, [16, 16], ensemble_size=3)
    obs, chunk, t = torch.randn(5, OBS), torch.randn(5, 4), torch.rand(5, 1)
    values = ensemble(obs, chunk, t)
    assert values.shape == (3, 5)
    assert not torch.allclose(values[0], values[1])
    # Member 1 computed on its own, from its slices of the stacked weights, agrees.
    x = torch.cat([obs, chunk, t], dim=-1)
    for linear, norm in zip(ensemble.hidden, ensemble.norms):
        x = torch.nn.functional.gelu(x @ linear.weight[1] + linear.bias[1], approximate="tanh")
        x = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * norm.weight[1] + norm.bias[1]
    member = (x @ ensemble.out.weight[1] + ensemble.out.bias[1]).squeeze(-1)
    torch.testing.assert_close(values[1], member)


def test_init_is_xavier_uniform_with_zero_bias():
    torch.manual_seed(0)
    field = VelocityField(100, 20, [400])
    first = field.mlp.hidden[0]
    bound = (6.0 / (121 + 400)) ** 0.5
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.95 * bound
    assert torch.all(first.bias == 0)
    ensemble = ValueEnsemble(10, 5, [64], ensemble_size=2)
    assert torch.all(ensemble.hidden[0].bias == 0)
    assert ensemble.hidden[0].weight.abs().max() <= (6.0 / (16 + 64)) ** 0.5


# --------------------------------------------------------------------------------------------
# Flow maths against hand-computed results
# --------------------------------------------------------------------------------------------


def constant_field(c: float):
    return lambda obs, x, t: torch.full_like(x, c)


def test_euler_generate_constant_linear_and_time_fields():
    obs = torch.zeros(2, 1)
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    F = 4
    torch.testing.assert_close(euler_generate(constant_field(0.3), obs, x0, F), x0 + 0.3)
    # dx/dt = x: Euler gives x0 * (1 + 1/F)^F.
    torch.testing.assert_close(euler_generate(lambda o, x, t: x, obs, x0, F), x0 * (1.25**4))
    # dx/dt = t, sampled at t = 0, 1/4, 2/4, 3/4: x0 + (0 + .25 + .5 + .75) / 4.
    torch.testing.assert_close(
        euler_generate(lambda o, x, t: t.expand_as(x), obs, x0, F), x0 + 1.5 / 4
    )


def test_reverse_flow_matches_hand_computed_steps():
    obs = torch.zeros(3, 1)
    x1 = torch.tensor([[1.0], [2.0], [-1.0]])
    depth = torch.tensor([[0.0], [0.5], [1.0]])
    F = 4
    x, t = reverse_flow(constant_field(2.0), obs, x1, depth, F)
    torch.testing.assert_close(x, x1 - 2.0 * depth)
    torch.testing.assert_close(t, 1.0 - depth)
    # dx/dt = x backwards: x1 * (1 - d/F)^F.
    x, _ = reverse_flow(lambda o, x, t: x, obs, x1, depth, F)
    torch.testing.assert_close(x, x1 * (1 - depth / F) ** F)
    # dx/dt = t, evaluated at t = 1, 1 - d/F, ...: x1 - d + d^2 (F - 1) / (2F).
    x, _ = reverse_flow(lambda o, x, t: t.expand_as(x), obs, x1, depth, F)
    torch.testing.assert_close(x, x1 - depth + depth**2 * (F - 1) / (2 * F))


def test_full_reversal_inverts_generation_for_a_constant_field():
    obs = torch.zeros(4, 1)
    noise = torch.randn(4, 3)
    final = euler_generate(constant_field(-0.7), obs, noise, 10)
    back, t = reverse_flow(constant_field(-0.7), obs, final, torch.ones(4, 1), 10)
    torch.testing.assert_close(back, noise)
    assert torch.all(t == 0)


def test_depth_sampler_mixes_continuous_and_grid_halves():
    F = 10
    depth = sample_reversal_depth(20_000, F, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert depth.shape == (20_000, 1)
    continuous, grid = depth[:10_000].flatten(), depth[10_000:].flatten()
    assert continuous.min() >= 0 and continuous.max() < 1
    assert abs(continuous.mean().item() - 0.5) < 0.02
    on_grid = (continuous * F - (continuous * F).round()).abs() < 1e-6
    assert on_grid.float().mean() < 0.01
    levels = (grid * F).round()
    torch.testing.assert_close(grid * F, levels)
    counts = torch.bincount(levels.long(), minlength=F + 1).float()
    assert counts.shape[0] == F + 1  # 0 and 1 are both reachable
    assert (counts / counts.sum() - 1 / (F + 1)).abs().max() < 0.015


# --------------------------------------------------------------------------------------------
# Value target and masks on hand-built batches
# --------------------------------------------------------------------------------------------


def test_value_target_discounts_chunk_rewards_and_bootstraps_with_pessimism():
    gamma, rho = 0.9, 0.5
    rewards = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    masks = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    # Row 0: episode continues, task solved at the last row (mask 0 -> no bootstrap).
    # Row 1: the chunk's last action is the episode's last transition: still valid.
    # Row 2: the episode ends after row 0, rows 1-2 repeat it: rewards past the end are dropped.
    terminals = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    next_values = torch.tensor([[-10.0, -4.0, -6.0], [-20.0, -8.0, -6.0]])  # (K=2, B=3)
    target, valid = chunk_value_target(rewards, masks, terminals, next_values, gamma, rho)
    agg = torch.tensor([-15.0 - 0.5 * 5.0, -6.0 - 0.5 * 2.0, -6.0 - 0.0])
    expected = torch.tensor([
        -1.0 - 0.9 + 0.0 + 0.729 * 0.0 * agg[0],
        -1.0 - 0.9 * 2 - 0.81 * 3 + 0.729 * agg[1],
        -1.0 + 0.729 * agg[2],
    ])
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(valid, torch.tensor([1.0, 1.0, 0.0]))


def test_past_end_flags_shift_terminals_by_one():
    terminals = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        past_end_flags(terminals), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    )


def test_expectile_loss_weights_positive_errors_by_kappa():
    diff = torch.tensor([2.0, -2.0])
    torch.testing.assert_close(expectile_loss(diff, 0.9), torch.tensor([0.9 * 4, 0.1 * 4]))


def test_invalid_windows_are_zeroed_in_value_and_policy_losses(agent):
    batch = random_batch()
    batch.terminals[:] = 1.0  # every window ends after its first action: all invalid
    value, _ = agent.value_loss(batch, torch.Generator().manual_seed(0))
    bc, policy = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(0))
    assert value.item() == 0.0 and policy.item() == 0.0
    assert bc.item() > 0.0  # the first action of each window still counts for BC


class ZeroField(torch.nn.Module):
    """A velocity field that predicts 0, so the BC loss is the masked mean of (x1 - x0)^2."""

    def forward(self, obs, chunk, flow_time):
        return torch.zeros_like(chunk)


def test_bc_ignores_actions_past_the_episode_end(agent):
    agent.velocity = ZeroField()
    batch = random_batch()
    batch.terminals[:, 0] = 1.0  # actions 1 and 2 lie past the end
    bc_a, _ = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(0))
    batch.actions[:, 1:] = 123.0  # so their values must not count
    bc_b, _ = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bc_a, bc_b)
    batch.actions[:, 0] = 123.0  # the first action does count
    bc_c, _ = agent.bc_and_policy_losses(batch, torch.Generator().manual_seed(0))
    assert bc_c > 100 * bc_a


def test_act_uses_the_ema_field_and_clips(agent):
    with torch.no_grad():
        agent.velocity_target.mlp.out.bias.fill_(50.0)  # EMA field pushes far outside [-1, 1]
    obs = torch.randn(7, OBS)
    chunks = agent.act(obs, torch.Generator().manual_seed(0))
    assert chunks.shape == (7, H, ACT)
    assert torch.all(chunks == 1.0)
    online = agent.act(obs, torch.Generator().manual_seed(0), use_ema=False)
    assert online.abs().max() <= 1.0 and not torch.all(online == 1.0)
