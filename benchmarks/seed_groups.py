"""Seed-steps per second of a `--seeds` group against one run, and against N separate runs at once.

For each group size N, three ways to train N seeds, each measured in its own processes:

    stacked      one process, one vmapped update of all N seeds (core.seed_stack.StackedSeeds)
    threaded     one process, each seed's own update, the seeds side by side on the cores: a Python
                 thread per seed up to the cores (ThreadedSeeds; a CPU group's default)
    sequential   one process, each seed's own update in turn over all the cores (SequentialSeeds)
    separate     N processes of one run each, started together, sharing the machine (their
                 steps/s summed); on a GPU they share the one device

Data are synthetic (cube-single shapes, ``train_throughput.synthetic_dataset``); sampling and the
updates are the real ones. Each line is the median of ``--rounds`` rounds, the ways alternating
within a round. Peak memory: CUDA's peak allocated bytes per seed, or the process's peak RSS on a CPU.

    python benchmarks/seed_groups.py --config bundled --seeds 1,2,4 --compile off
    python benchmarks/seed_groups.py --device cuda --config paper --seeds 1,2,4,8,16 --compile graphs
    python benchmarks/seed_groups.py --device cuda --config paper --seeds 1,2,4,8,16 --compile graphs \
        --ways stacked --single      # one run alone first, as the baseline, then only the stacked groups
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS, update_flops  # noqa: E402

GROUP_CONFIGS = {**CONFIGS, "bundled": dict(actor_hidden_dims=[256] * 4, value_hidden_dims=[256] * 4,
                                            ensemble_size=2, flow_steps=10, horizon=5, batch_size=256)}
"""The paper's and small-cpu sizes, and the bundled agents' (4x256, K=2)."""
COMPILE = {"off": None, "on": "default", "graphs": "reduce-overhead"}


def measure(config_name: str, seeds: int, way: str, device_name: str, compile_choice: str, threads: int,
            steps: int, start_at: float) -> dict[str, Any]:
    """One process's measurement: ``way`` ('stacked', 'threaded', 'sequential' or 'single') over ``seeds`` agents."""
    import torch
    from train_throughput import synthetic_dataset

    from rql_cli.config import RQLConfig
    from rql_cli.core.rql import RQLAgent
    from rql_cli.core.seed_stack import SequentialSeeds, StackedSeeds, ThreadedSeeds
    from rql_cli.data.dataset import ChunkSampler
    from rql_cli.device import make_generator, resolve_device

    device = resolve_device(device_name)
    if threads:
        torch.set_num_threads(threads)
    config = RQLConfig(**GROUP_CONFIGS[config_name])
    sampler = ChunkSampler(synthetic_dataset(device), config.horizon)
    agents = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        agents.append(RQLAgent(config, sampler.dataset.obs_dim, sampler.dataset.action_dim, device))
    threaded = ThreadedSeeds(agents, threads or len(os.sched_getaffinity(0))) if way == "threaded" else None
    update = threaded or (StackedSeeds(agents) if way == "stacked" else SequentialSeeds(agents))
    example = sampler.sample(config.batch_size, make_generator(device, 9))
    started = time.perf_counter()
    update.compile_update(COMPILE[compile_choice])
    update.warm_up(example)
    compile_seconds = time.perf_counter() - started
    samples = [make_generator(device, 2 * s) for s in range(seeds)]
    noises = [make_generator(device, 2 * s + 1) for s in range(seeds)]

    def run(count: int) -> None:
        for _ in range(count):
            update.update([sampler.sample(config.batch_size, g) for g in samples], noises)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    time.sleep(max(0.0, start_at - time.time()))  # separate runs start their timed steps together
    start = time.perf_counter()
    run(steps)
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(seed_steps_per_second=seeds * steps / elapsed, seconds=elapsed, compile_seconds=compile_seconds,
                peak_mib_per_seed=peak / 2**20 / seeds, threads=torch.get_num_threads(),
                workers=threaded.workers if threaded else 1)


def child(args: argparse.Namespace, seeds: int, way: str, threads: int, start_at: float) -> subprocess.Popen:
    command = [sys.executable, __file__, "--child", args.config, str(seeds), way, args.device, args.compile,
               str(threads), str(args.steps), str(start_at)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def result_of(process: subprocess.Popen) -> dict[str, Any]:
    """The child's JSON line, or {'error': ...} when it failed (its traceback went to stderr), so one failed
    measurement costs its own line only."""
    out, _ = process.communicate()
    if process.returncode != 0:
        return {"error": f"failed (exit {process.returncode}; its traceback is above)"}
    return json.loads(out.strip().splitlines()[-1])


def one_round(args: argparse.Namespace, seeds: int) -> dict[str, dict[str, Any]]:
    cores = len(os.sched_getaffinity(0))
    found: dict[str, dict[str, Any]] = {}
    for way in args.ways:
        if way == "separate":
            start_at = time.time() + 30 + 10 * seeds  # after every process has built and compiled
            processes = [child(args, 1, "single", max(1, cores // seeds), start_at) for _ in range(seeds)]
            results = [result_of(p) for p in processes]
            failed = next((r for r in results if "error" in r), None)
            found[way] = failed or dict(seed_steps_per_second=sum(r["seed_steps_per_second"] for r in results),
                              peak_mib_per_seed=max(r["peak_mib_per_seed"] for r in results))
        else:
            found[way] = result_of(child(args, seeds, way, args.threads, 0.0))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bundled", choices=sorted(GROUP_CONFIGS))
    parser.add_argument("--seeds", default="1,2,4", help="group sizes, comma separated")
    parser.add_argument("--ways", default="stacked,threaded,sequential,separate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", default="off", choices=sorted(COMPILE))
    parser.add_argument("--threads", type=int, default=0, help="threads of a group process (0: torch's default)")
    parser.add_argument("--steps", type=int, default=10, help="timed group steps per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--single", action="store_true",
                        help="first measure one run alone (one process, one seed) as the 'x one run' baseline")
    parser.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, seeds, way, device, compile_choice, threads, steps, start_at = args.child
        print(json.dumps(measure(name, int(seeds), way, device, compile_choice, int(threads), int(steps),
                                 float(start_at))))
        return
    args.ways = args.ways.split(",")
    flops = update_flops(GROUP_CONFIGS[args.config])
    print(f"config {args.config} ({flops / 1e9:.2f} GFLOP per seed-step), device {args.device}, compile "
          f"{args.compile}, {args.steps} timed steps, median of {args.rounds} round(s)")
    print(f"{'seeds':>5} {'way':>10} {'seed-steps/s':>13} {'x one run':>10} {'GFLOP/s':>8} {'MiB/seed':>9}")
    single = None  # one run alone: one process, one seed (--single, else the N=1 line of 'separate' or 'sequential')
    baseline = "separate" if "separate" in args.ways else "sequential"
    if args.single:
        single = print_row(1, "single", [result_of(child(args, 1, "single", args.threads, 0.0))
                                         for _ in range(args.rounds)], None, flops)
    for seeds in (int(n) for n in args.seeds.split(",")):
        rounds = [one_round(args, seeds) for _ in range(args.rounds)]
        if seeds == 1 and baseline in args.ways and not args.single:
            good = [r[baseline]["seed_steps_per_second"] for r in rounds if "error" not in r[baseline]]
            single = statistics.median(good) if good else None
        for way in args.ways:
            print_row(seeds, way, [r[way] for r in rounds], single, flops)


def print_row(seeds: int, way: str, runs: list[dict[str, Any]], single: float | None, flops: float) -> float | None:
    """One table line: the median over ``runs`` (or the first failure); returns the median seed-steps/s."""
    good = [r for r in runs if "error" not in r]
    if not good:
        print(f"{seeds:>5} {way:>10}  {runs[0]['error']}", flush=True)
        return None
    rate = statistics.median(r["seed_steps_per_second"] for r in good)
    memory = statistics.median(r["peak_mib_per_seed"] for r in good)
    ratio = f"{rate / single:.2f}" if single else ("1.00" if way == "single" else "-")  # single: its own line
    print(f"{seeds:>5} {way:>10} {rate:>13.2f} {ratio:>10} {rate * flops / 1e9:>8.1f} {memory:>9.0f}", flush=True)
    return rate


if __name__ == "__main__":
    main()
