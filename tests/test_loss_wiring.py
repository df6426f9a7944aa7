"""The loss wiring of one RQL step, pinned by hand (algorithm.md, "Losses").

A real RQLAgent gets hand-made networks: a constant velocity field c (its one parameter, so the
policy gradient that reaches it can be read off) and linear value ensembles that record every input
they see. With those, every point, flow time and loss of ``loss_terms`` is a few lines of arithmetic,
written out below as literals.

Batch: B = 4 windows, obs_dim 1, h = 2, A = 1 (chunks of 2 numbers), F = 4 (1/F = 0.25), K = 2,
gamma 0.9, rho 0.5, expectile 0.7, alpha 2.5.
"""

from __future__ import annotations

import torch
from torch import nn

from rql_cli.config import RQLConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent, StepNoise

F = 4
ALPHA = 2.5
VELOCITY = [2.0, -1.0]  # the online field c
TARGET_VELOCITY = [100.0, 100.0]  # the EMA field: must never show up in a loss
# V_k(s, x, t) = w_k . (s, x_0, x_1, t) + b_k
VALUE_WEIGHTS = [[1.0, 2.0, -1.0, 3.0], [-0.5, 1.0, 4.0, -2.0]]
VALUE_BIASES = [0.5, -1.0]
TARGET_WEIGHTS = [[0.5, 1.0, 1.0, 7.0], [2.0, -1.0, 0.5, -3.0]]
TARGET_BIASES = [0.0, 1.0]


class ConstantVelocity(nn.Module):
    """v(s, x, t) = c for every input; records each (chunk, flow_time) it is called with."""

    def __init__(self, velocity: list[float]):
        super().__init__()
        self.velocity = nn.Parameter(torch.tensor(velocity))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor, flow_time: torch.Tensor) -> torch.Tensor:
        self.calls.append((chunk.detach().clone(), flow_time.detach().clone()))
        return self.velocity.expand_as(chunk)


class LinearValue(nn.Module):
    """K linear members on concat(s, x, t): (B, 1), (B, 2), (B, 1) -> (K, B); records its inputs."""

    def __init__(self, weights: list[list[float]], biases: list[float]):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weights))
        self.bias = nn.Parameter(torch.tensor(biases))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor, flow_time: torch.Tensor) -> torch.Tensor:
        self.calls.append((obs.detach().clone(), chunk.detach().clone(), flow_time.detach().clone()))
        inputs = torch.cat([obs, chunk, flow_time], dim=-1)
        return self.weight @ inputs.T + self.bias[:, None]


def hand_batch() -> ChunkBatch:
    """Window 1 ends its bootstrap (mask 0); window 3's episode ends after its first action (invalid,
    its second action lies past the end)."""
    return ChunkBatch(
        observations=torch.tensor([[0.5], [-1.0], [2.0], [0.0]]),
        actions=torch.tensor([[[0.2], [-0.4]], [[0.9], [0.1]], [[-0.5], [0.6]], [[0.3], [0.3]]]),
        rewards=torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [0.0, 0.0], [-1.0, -1.0]]),
        masks=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),
        terminals=torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
        next_observations=torch.tensor([[1.0], [-0.5], [0.25], [3.0]]),
    )


def hand_agent(policy_loss_points: str = "interpolation") -> RQLAgent:
    config = RQLConfig(
        actor_hidden_dims=[8], value_hidden_dims=[8], ensemble_size=2, horizon=2, flow_steps=F,
        alpha=ALPHA, expectile=0.7, rho=0.5, discount=0.9, policy_loss_points=policy_loss_points,
    )
    agent = RQLAgent(config, obs_dim=1, action_dim=1, device=torch.device("cpu"))
    agent.velocity = ConstantVelocity(VELOCITY)
    agent.velocity_target = ConstantVelocity(TARGET_VELOCITY)
    agent.value = LinearValue(VALUE_WEIGHTS, VALUE_BIASES)
    agent.value_target = LinearValue(TARGET_WEIGHTS, TARGET_BIASES)
    return agent


def hand_noise(policy_depth: list[float] | None = None) -> StepNoise:
    column = lambda values: torch.tensor(values)[:, None]  # noqa: E731
    return StepNoise(
        value_depth=column([0.0, 0.3, 0.75, 1.0]),
        next_noise=torch.tensor([[0.5, 0.5], [-1.0, 0.0], [0.2, -0.4], [0.0, 1.0]]),
        bc_noise=torch.tensor([[1.0, -1.0], [0.0, 2.0], [-1.0, 0.5], [0.4, -0.2]]),
        bc_time=column([0.0, 0.5, 0.9, 1.0]),
        policy_depth=None if policy_depth is None else column(policy_depth),
    )


# The value loss, by hand.
# Reversed chunk x1 - c * d (a constant field: F steps of c * d / F), at flow time 1 - d:
REVERSED_CHUNKS = [[0.2, -0.4], [0.3, 0.4], [-2.0, 1.35], [-1.7, 1.3]]
REVERSED_TIMES = [1.0, 0.7, 0.25, 0.0]
# Online V at (s_0, reversed chunk, 1 - d), member 0 and member 1:
PREDICTED = [[4.8, 1.8, -2.1, -4.2], [-4.65, 0.0, 0.9, 2.5]]
# Target V at (s_h, next noise, t = 0): member 0 [1.5, -1.25, -0.075, 2.5], member 1 [2.75, 1.0, 1.1, 7.5];
# mean - 0.5 * std (population std, K = 2: half the gap) = [1.8125, -0.6875, 0.21875, 3.75].
# Chunk rewards: -1 - 0.9 = -1.9; -1 + 0 = -1; 0; -1 (the reward past the end is dropped).
# y = chunk reward + 0.81 * bootstrap mask * aggregate:
TARGETS = [-1.9 + 0.81 * 1.8125, -1.0, 0.81 * 0.21875, -1.0 + 0.81 * 3.75]
VALID = [1.0, 1.0, 1.0, 0.0]


def hand_value_loss() -> float:
    total = 0.0
    for member in PREDICTED:
        for predicted, target, valid in zip(member, TARGETS, VALID):
            diff = target - predicted
            total += (0.7 if diff > 0 else 0.3) * diff**2 * valid
    return total / 8  # mean over K x B


# The BC loss, by hand: x1 - x0 = [-0.8, 0.6], [0.9, -1.9], [0.5, 0.1], [-0.1, 0.5]; (c - (x1 - x0))^2:
# 7.84 2.56 | 1.21 0.81 | 2.25 1.21 | 4.41 (window 3's second action lies past the end: masked), / (B h A).
BC_LOSS = (7.84 + 2.56 + 1.21 + 0.81 + 2.25 + 1.21 + 4.41) / 8

# The policy loss at the interpolation points x^t = (1 - t) x0 + t x1, t = 0, 0.5, 0.9, 1:
INTERPOLATED = [[1.0, -1.0], [0.45, 1.05], [-0.55, 0.59], [0.3, 0.3]]
# one Euler step ahead: step min(1/F, 1 - t) = 0.25, 0.25, 0.1, 0; x' = x^t + c * step; t' = min(t + 1/F, 1):
LOOK_AHEAD = [[1.5, -1.25], [0.95, 0.8], [-0.35, 0.49], [0.3, 0.3]]
LOOK_AHEAD_TIMES = [0.25, 0.75, 1.0, 1.0]
# Online V there: member 0 [6.0, 2.85, 4.31, 3.8], member 1 [-5.25, 2.15, -2.39, -1.5];
# member mean [0.375, 2.5, 0.96, 1.15], window 3 invalid:
POLICY_LOSS = -(0.375 + 2.5 + 0.96 + 0.0) / 4
# d(policy)/dc = -(1/B) sum_b valid_b * step_b * mean_k(dV_k/dx) = -(1/4) * 0.6 * [1.5, 1.5]
POLICY_GRADIENT = [-0.225, -0.225]


def assert_rows(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-5)


def value_calls_at(value: LinearValue, times: list[float]) -> list[tuple[torch.Tensor, ...]]:
    """The recorded calls whose flow times are ``times`` (the value loss and the policy loss each
    make one; which comes first is the code's business)."""
    wanted = torch.tensor(times)[:, None]
    return [call for call in value.calls if torch.allclose(call[2], wanted, atol=1e-6)]


def test_value_is_trained_at_the_reversed_chunk_on_the_next_chunks_start_value():
    agent, batch = hand_agent(), hand_batch()
    losses, stats = agent.loss_terms(batch, hand_noise())

    # The prediction: V(s_0, reverse_flow(x1, d), 1 - d), with the online field (not the EMA one).
    [(obs, chunk, _)] = value_calls_at(agent.value, REVERSED_TIMES)
    assert_rows(obs, [[0.5], [-1.0], [2.0], [0.0]])
    assert_rows(chunk, REVERSED_CHUNKS)
    # The reversal: F backward steps from (x1, t = 1), each of d / F, through the online field.
    reversal = [call for call in agent.velocity.calls if not torch.equal(call[1], hand_noise().bc_time)]
    assert len(reversal) == F
    depth, final = hand_noise().value_depth, batch.actions.flatten(1)
    for i, (chunk, flow_time) in enumerate(reversal):
        assert_rows(flow_time, (1.0 - depth * i / F).tolist())
        assert_rows(chunk, (final - torch.tensor(VELOCITY) * depth * i / F).tolist())
    assert agent.velocity_target.calls == []

    # The target: the target ensemble at (s_h, fresh noise, t = 0), never the online one.
    [(obs, chunk, flow_time)] = agent.value_target.calls
    assert_rows(obs, [[1.0], [-0.5], [0.25], [3.0]])
    assert_rows(chunk, hand_noise().next_noise.tolist())
    assert_rows(flow_time, [[0.0]] * 4)

    torch.testing.assert_close(stats["target_mean"], torch.tensor(TARGETS).mean())
    torch.testing.assert_close(stats["value_mean"], torch.tensor(PREDICTED).mean())
    torch.testing.assert_close(losses["value"], torch.tensor(hand_value_loss()))


def test_bc_and_policy_look_one_euler_step_ahead_of_the_interpolation_points():
    agent, batch = hand_agent(), hand_batch()
    losses, _ = agent.loss_terms(batch, hand_noise())

    # BC: the field is asked at x^t, t (after the F reversal calls of the value loss).
    bc_calls = [call for call in agent.velocity.calls if torch.allclose(call[1], hand_noise().bc_time)]
    assert len(bc_calls) == 1
    assert_rows(bc_calls[0][0], INTERPOLATED)
    torch.testing.assert_close(losses["bc"], torch.tensor(BC_LOSS))

    # Policy: V(s_0, x^t + v * min(1/F, 1 - t), min(t + 1/F, 1)).
    [(obs, chunk, _)] = value_calls_at(agent.value, LOOK_AHEAD_TIMES)
    assert_rows(obs, [[0.5], [-1.0], [2.0], [0.0]])
    assert_rows(chunk, LOOK_AHEAD)
    assert len(agent.value.calls) == 2
    torch.testing.assert_close(losses["policy"], torch.tensor(POLICY_LOSS))

    # The policy gradient reaches the field through x' (scaled by each window's step), and no value weight.
    losses["policy"].backward()
    torch.testing.assert_close(agent.velocity.velocity.grad, torch.tensor(POLICY_GRADIENT))
    assert agent.value.weight.grad is None and agent.value.bias.grad is None


def test_total_is_policy_plus_alpha_bc_plus_value():
    agent = hand_agent()
    losses, _ = agent.loss_terms(hand_batch(), hand_noise())
    expected = POLICY_LOSS + ALPHA * BC_LOSS + hand_value_loss()
    torch.testing.assert_close(losses["total"], torch.tensor(expected))
    torch.testing.assert_close(losses["total"], losses["policy"] + ALPHA * losses["bc"] + losses["value"])


def test_policy_at_reversed_points_steps_ahead_from_the_reversed_chunk():
    """``policy_loss_points='reversed'``: the look-ahead starts at reverse_flow(x1, d'), t = 1 - d'."""
    agent = hand_agent("reversed")
    # d' = 0, 0.5, 0.1, 1: start x1 - c d' = [0.2, -0.4], [-0.1, 0.6], [-0.7, 0.7], [-1.7, 1.3] at
    # t = 1, 0.5, 0.9, 0; step min(1/F, d') = 0, 0.25, 0.1, 0.25; t' = 1, 0.75, 1, 0.25.
    losses, _ = agent.loss_terms(hand_batch(), hand_noise(policy_depth=[0.0, 0.5, 0.1, 1.0]))
    [(_, chunk, _)] = value_calls_at(agent.value, [1.0, 0.75, 1.0, 0.25])
    assert_rows(chunk, [[0.2, -0.4], [0.4, 0.35], [-0.5, 0.6], [-1.2, 1.05]])
    # member 0 [4.8, 2.2, 3.9, -], member 1 [-4.65, -0.2, -2.1, -]: means 0.075, 1.0, 0.9; window 3 invalid.
    torch.testing.assert_close(losses["policy"], torch.tensor(-(0.075 + 1.0 + 0.9) / 4))
    losses["policy"].backward()
    gradient = -(0.0 + 0.25 + 0.1) * 1.5 / 4
    torch.testing.assert_close(agent.velocity.velocity.grad, torch.tensor([gradient, gradient]))
    # BC stays at the interpolation points whichever points the policy uses.
    torch.testing.assert_close(losses["bc"], torch.tensor(BC_LOSS))
