"""The GPU paths: the same maths as on CPU, no host synchronisation inside a step, graphs replay.

Marked ``cuda``: skipped where torch sees no GPU; ``benchmarks/gpu_check.sh`` runs them on one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rql_cli.config import RQLConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.data.dataset import ChunkSampler, OfflineDataset
from rql_cli.device import make_generator
from rql_cli.io.checkpoint import load_agent, load_train_state_into, save_checkpoint
from rql_cli.io.checkpoint_meta import CheckpointMeta

pytestmark = pytest.mark.cuda

OBS, ACT, H = 7, 3, 4


def config(**changes) -> RQLConfig:
    return RQLConfig(actor_hidden_dims=[64, 64], value_hidden_dims=[64, 64], ensemble_size=4, horizon=H,
                     flow_steps=5, batch_size=32, rho=0.5, expectile=0.7, alpha=3.0, **changes)


def dataset(device: torch.device) -> OfflineDataset:
    rng = np.random.default_rng(0)
    n = 2000
    terminals = np.zeros(n, dtype=np.float32)
    terminals[99::100] = 1
    return OfflineDataset.from_arrays(dict(
        observations=rng.standard_normal((n, OBS), dtype=np.float32),
        next_observations=rng.standard_normal((n, OBS), dtype=np.float32),
        actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        rewards=-(rng.random(n) < 0.9).astype(np.float32),
        masks=np.ones(n, dtype=np.float32), terminals=terminals,
    ), device=device)


def cpu_and_cuda_agents() -> tuple[RQLAgent, RQLAgent]:
    torch.manual_seed(0)
    cpu = RQLAgent(config(), OBS, ACT, torch.device("cpu"))
    gpu = RQLAgent(config(), OBS, ACT, torch.device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def test_losses_and_an_update_on_cuda_match_the_cpu():
    cpu, gpu = cpu_and_cuda_agents()
    batch = ChunkSampler(dataset(torch.device("cpu")), H).sample(32, make_generator(torch.device("cpu"), 0))
    noise = cpu.draw_noise(32, torch.Generator().manual_seed(1))
    noise_gpu = copy.copy(noise)
    for name in ("value_depth", "next_noise", "bc_noise", "bc_time"):
        setattr(noise_gpu, name, getattr(noise, name).cuda())
    cpu_losses, _ = cpu.loss_terms(batch, noise)
    gpu_losses, _ = gpu.loss_terms(batch.to(torch.device("cuda")), noise_gpu)
    for name, value in cpu_losses.items():
        torch.testing.assert_close(gpu_losses[name].cpu(), value, rtol=1e-4, atol=1e-5)


def test_sampling_and_a_step_on_cuda_never_synchronise_with_the_host():
    device = torch.device("cuda")
    agent = RQLAgent(config(), OBS, ACT, device)
    sampler = ChunkSampler(dataset(device), H)
    sample_rng, noise_rng = make_generator(device, 0), make_generator(device, 1)
    agent.update(sampler.sample(32, sample_rng), noise_rng)  # first step allocates Adam state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metrics = agent.update(sampler.sample(32, sample_rng), noise_rng)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" for v in metrics.values())
    assert agent.optimizer.state[next(agent.velocity.parameters())]["step"].device.type == "cuda"


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_and_graphed_updates_follow_the_eager_one_on_cuda(mode):
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = RQLAgent(config(), OBS, ACT, device)
    fast = copy.deepcopy(eager)
    sampler = ChunkSampler(dataset(device), H)
    fast.compile_update(mode)
    fast.warm_up(sampler.sample(32, make_generator(device, 7)))
    for step in range(4):
        batch = sampler.sample(32, make_generator(device, step))
        expected = eager.update(batch, make_generator(device, 100 + step))
        got = fast.update(batch, make_generator(device, 100 + step))
        torch.testing.assert_close(got["total"].clone(), expected["total"], rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.state_dict().values(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_a_stacked_seed_group_follows_each_agent_alone_on_cuda(mode):
    from rql_cli.core.seed_stack import StackedSeeds

    device = torch.device("cuda")
    sampler = ChunkSampler(dataset(device), H)
    singles, members = [], []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        singles.append(RQLAgent(config(), OBS, ACT, device))
        members.append(copy.deepcopy(singles[-1]))
    stack = StackedSeeds(members)
    stack.compile_update(mode)
    stack.warm_up(sampler.sample(32, make_generator(device, 7)))
    for step in range(4):
        batches = [sampler.sample(32, make_generator(device, 10 * step + s)) for s in range(3)]
        expected = [a.update(b, make_generator(device, 100 + s)) for s, (a, b) in enumerate(zip(singles, batches))]
        got = stack.update(batches, [make_generator(device, 100 + s) for s in range(3)])
        for index, row in enumerate(expected):
            torch.testing.assert_close(got["total"][index].clone(), row["total"], rtol=1e-4, atol=1e-5)
    for single, member in zip(singles, members):
        for a, b in zip(single.state_dict().values(), member.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


def test_stacked_acting_on_cuda_gives_each_seed_its_own_chunks():
    from rql_cli.core.seed_stack import StackedActing

    device = torch.device("cuda")
    agents = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        agents.append(RQLAgent(config(), OBS, ACT, device))
    observations = {0: torch.randn(5, OBS, device=device), 2: torch.randn(2, OBS, device=device)}
    chunks = StackedActing(agents).act(observations, [make_generator(device, 10 + m) for m in range(3)])
    for member, obs in observations.items():
        alone = agents[member].act(obs, make_generator(device, 10 + member))
        torch.testing.assert_close(chunks[member], alone, rtol=1e-4, atol=1e-5)


def test_a_cuda_checkpoint_round_trips_with_its_train_state(tmp_path):
    device = torch.device("cuda")
    agent = RQLAgent(config(), OBS, ACT, device)
    sampler = ChunkSampler(dataset(device), H)
    generators = {"sample": make_generator(device, 0), "noise": make_generator(device, 1)}
    agent.update(sampler.sample(32, generators["sample"]), generators["noise"])
    meta = CheckpointMeta(config=config(), dataset="synthetic", env_id="cube-single-play-singletask-task2-v0",
                          obs_dim=OBS, action_dim=ACT, step=1)
    folder = save_checkpoint(tmp_path / "ckpt", agent, meta, generators=generators)
    loaded, _ = load_agent(folder, device)
    fresh = {"sample": make_generator(device, 5), "noise": make_generator(device, 6)}
    load_train_state_into(loaded, folder, fresh)
    for a, b in zip(agent.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    next_a = agent.update(sampler.sample(32, generators["sample"]), generators["noise"])
    next_b = loaded.update(sampler.sample(32, fresh["sample"]), fresh["noise"])
    torch.testing.assert_close(next_b["total"], next_a["total"])
