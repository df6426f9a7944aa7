"""Gradient steps per second and peak memory of RQL training, on the device given.

Prints one line per configuration. Data are synthetic (cube-single shapes: obs 28, action 5,
episodes of 1000 transitions) so no dataset file is needed; sampling and the update are the
real ones. Examples:

    python benchmarks/train_throughput.py --device cpu --steps 20
    python benchmarks/train_throughput.py --device cuda --steps 500 --config paper
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from rql_cli.config import CPU_NETWORKS, RQLConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.data.dataset import ChunkSampler, OfflineDataset
from rql_cli.device import make_generator, resolve_device

CONFIGS = {
    # The paper's default network and batch with cube's chunking.
    "paper": dict(actor_hidden_dims=[512] * 4, value_hidden_dims=[512] * 4, ensemble_size=10,
                  flow_steps=10, horizon=5, batch_size=256),
    # What we train on 2 CPU cores.
    "small-cpu": dict(**CPU_NETWORKS, flow_steps=10, horizon=5, batch_size=256),
}


def synthetic_dataset(episodes: int, length: int, device: torch.device) -> OfflineDataset:
    rng = np.random.default_rng(0)
    n = episodes * length
    terminals = np.zeros(n, dtype=np.float32)
    terminals[length - 1 :: length] = 1
    arrays = dict(
        observations=rng.standard_normal((n, 28), dtype=np.float32),
        next_observations=rng.standard_normal((n, 28), dtype=np.float32),
        actions=rng.uniform(-1, 1, (n, 5)).astype(np.float32),
        rewards=-(rng.random(n) < 0.98).astype(np.float32),
        masks=np.ones(n, dtype=np.float32),
        terminals=terminals,
    )
    return OfflineDataset.from_arrays(arrays, device=device)


def measure(name: str, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    config = RQLConfig(**CONFIGS[name], device=str(device))
    dataset = synthetic_dataset(100, 1000, device)
    sampler = ChunkSampler(dataset, config.horizon)
    torch.manual_seed(0)
    agent = RQLAgent(config, dataset.obs_dim, dataset.action_dim, device)
    sample_rng, noise_rng = make_generator(device, 0), make_generator(device, 1)

    def run(n: int) -> None:
        for _ in range(n):
            agent.update(sampler.sample(config.batch_size, sample_rng), noise_rng)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(steps)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    params = sum(p.numel() for p in [*agent.velocity.parameters(), *agent.value.parameters()])
    return dict(steps_per_second=steps / elapsed, peak_mib=peak_mib, parameters=params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    args = parser.parse_args()
    device = resolve_device(args.device)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    for name in names:
        figures = measure(name, device, args.steps, args.warmup)
        memory = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
        print(
            f"{name:10s} {figures['parameters']:>11,} params  {figures['steps_per_second']:8.2f} steps/s  "
            f"{memory} {figures['peak_mib']:.0f} MiB  ({args.steps} steps after {args.warmup} warm-up)"
        )


if __name__ == "__main__":
    main()
