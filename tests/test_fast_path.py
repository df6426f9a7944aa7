"""The fast update paths compute the same step as the plain eager one."""

from __future__ import annotations

import copy

import pytest
import torch

from rql_cli.config import RQLConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent
from rql_cli.core.seed_stack import ThreadedSeeds

# One compiled shape for the suite: these sizes and settings are also those of test_runtime's compiled
# update and of test_train's compiled run (cube-single: 28 observations, 5 actions), and all of them
# compile on one thread (inductor writes the thread count into its kernels), so the session compiles
# this graph once and the later tests load it from inductor's caches.
OBS, ACT, H = 28, 5, 3
SHARED_SETTINGS = dict(
    actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=3, horizon=H,
    flow_steps=4, batch_size=16, rho=0.5, expectile=0.7, alpha=3.0,
)


def make_agent(**changes) -> RQLAgent:
    config = RQLConfig(**{**SHARED_SETTINGS, **changes})
    torch.manual_seed(0)
    return RQLAgent(config, OBS, ACT, torch.device("cpu"))


@pytest.fixture
def one_thread():
    """Compile and run on one thread (then restore the count): the thread count the shared graph has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch_with_an_episode_end(seed: int = 0) -> ChunkBatch:
    g = torch.Generator().manual_seed(seed)
    terminals = torch.zeros(16, H)
    terminals[:4, 1] = 1.0  # four windows cross an episode end
    return ChunkBatch(
        observations=torch.randn(16, OBS, generator=g),
        actions=torch.rand(16, H, ACT, generator=g) * 2 - 1,
        rewards=-torch.rand(16, H, generator=g),
        masks=1.0 - terminals,
        terminals=terminals,
        next_observations=torch.randn(16, OBS, generator=g),
    )


def grads(agent: RQLAgent) -> list[torch.Tensor]:
    return [p.grad.clone() for p in [*agent.velocity.parameters(), *agent.value.parameters()]]


def eager_and_compiled_losses(eager: RQLAgent) -> list[tuple[dict, dict, list[torch.Tensor]]]:
    """(losses, stats, gradients) of ``eager`` and of a compiled copy on one batch and the same noise."""
    fast = copy.deepcopy(eager)
    fast.compile_update()
    batch = batch_with_an_episode_end()
    noise = eager.draw_noise(16, torch.Generator().manual_seed(5))
    results = []
    for agent in (eager, fast):
        losses, stats = agent._loss_fn(batch, noise)
        agent.optimizer.zero_grad()
        losses["total"].backward()
        results.append((losses, stats, grads(agent)))
    return results


@pytest.mark.parametrize("points", ["interpolation", "reversed"])
def test_compiled_losses_and_gradients_match_eager_on_the_same_noise(points, one_thread):
    results = eager_and_compiled_losses(make_agent(policy_loss_points=points))
    (eager_losses, eager_stats, eager_grads), (fast_losses, fast_stats, fast_grads) = results
    for name in eager_losses:
        torch.testing.assert_close(fast_losses[name], eager_losses[name], rtol=1e-5, atol=1e-6)
    for name in eager_stats:
        torch.testing.assert_close(fast_stats[name], eager_stats[name], rtol=1e-5, atol=1e-6)
    assert eager_losses["policy"].abs() > 0 and eager_losses["bc"] > 0
    for expected, got in zip(eager_grads, fast_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_compiled_update_with_bf16_hidden_products_follows_the_eager_one(one_thread):
    # matmul_precision=medium on a CPU with bf16 instructions compiles this path (compile auto: 20,000+ steps).
    eager = make_agent()
    eager.set_hidden_product_dtype(torch.bfloat16)
    (eager_losses, _, eager_grads), (fast_losses, _, fast_grads) = eager_and_compiled_losses(eager)
    # The compiled GELU rounds differently in its last fp32 bit, which can move a bf16 rounding: bf16 tolerances.
    for name in eager_losses:
        torch.testing.assert_close(fast_losses[name], eager_losses[name], rtol=2e-2, atol=1e-3)
    close = [torch.allclose(got, expected, rtol=0.1, atol=1e-3)
             for expected, got in zip(eager_grads, fast_grads, strict=True)]
    assert sum(close) >= 0.9 * len(close)


def test_compiled_updates_follow_the_eager_trajectory(one_thread):
    eager = make_agent()
    fast = copy.deepcopy(eager)
    fast.compile_update()
    for step in range(3):
        batch = batch_with_an_episode_end(seed=step)
        eager.update(batch, torch.Generator().manual_seed(step))
        fast.update(batch, torch.Generator().manual_seed(step))
    for a, b in zip(eager.state_dict().values(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert fast.step == eager.step == 3


def test_a_threaded_group_compiled_through_the_cpp_wrapper_steps_as_the_plain_compile_exactly(one_thread):
    """ThreadedSeeds compiles through inductor's C++ wrapper (it releases the GIL) and steps each seed on
    a worker thread: the same kernels on the same inputs, so the same bits as a plain compiled run."""
    plain = make_agent()
    seeds = ThreadedSeeds([copy.deepcopy(plain), copy.deepcopy(plain)], threads=2)
    plain.compile_update()
    seeds.compile_update("default")
    assert seeds.workers == 2 and torch.get_num_threads() == 1  # one intra-op thread: the shared graph's
    for step in range(3):
        batch = batch_with_an_episode_end(seed=step)
        plain.update(batch, torch.Generator().manual_seed(step))
        seeds.update([batch, batch], [torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)])
    seeds.close()
    for member in seeds.agents:
        assert member.step == plain.step == 3
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), member.state_dict().values()))
        ours, theirs = member.optimizer.state_dict()["state"], plain.optimizer.state_dict()["state"]
        assert all(torch.equal(ours[i]["exp_avg_sq"], theirs[i]["exp_avg_sq"]) for i in theirs)


def test_update_draws_its_noise_in_the_order_the_separate_losses_do():
    """draw_noise + loss_terms is exactly value_loss then bc_and_policy_losses on one generator."""
    agent = make_agent(policy_loss_points="reversed")
    batch = batch_with_an_episode_end()
    terms, _ = agent.losses(batch, torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    value, _ = agent.value_loss(batch, generator)
    bc, policy = agent.bc_and_policy_losses(batch, generator)
    assert torch.equal(terms["value"], value)
    assert torch.equal(terms["bc"], bc) and torch.equal(terms["policy"], policy)
