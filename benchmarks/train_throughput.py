"""Gradient steps per second of RQL training: eager against compiled, today against another revision,
on a quiet machine and beside busy processes.

Each measurement runs in its own process (so thread pools, compile caches and peak memory are its
own) and prints one JSON line; the parent alternates the variants round by round, so a machine that
gets busier drifts all of them alike, and prints the median of each. Data are synthetic (cube-single
shapes: obs 28, action 5, episodes of 1000 transitions); sampling and the update are the real ones.

    python benchmarks/train_throughput.py                          # both configs, eager and compiled
    python benchmarks/train_throughput.py --compare HEAD~3         # this tree against another revision
    python benchmarks/train_throughput.py --load 1                 # beside one busy process
    python benchmarks/train_throughput.py --config small-cpu --profile   # where the time goes
    python benchmarks/train_throughput.py --device cuda --modes eager,compiled,graphs --config paper
    python benchmarks/train_throughput.py --modes compiled,compiled@default,compiled@oneDNN   # CPU matmul routes

A mode alone measures what ``rql train`` does by default (on a CPU: the matmul route it measures and
caches, ``rql_cli.training.matmul_route``); ``MODE@default`` and ``MODE@oneDNN`` force one CPU route,
and ``MODE@high`` (or ``@medium``, ``@highest``) runs as ``--set matmul_precision=high`` would (TF32 on a GPU;
``@medium`` on a CPU with bf16 instructions: bf16 products between hidden layers).

``--compare REV`` checks REV out into a temporary git worktree and runs the same measurement with
that tree's ``rql_cli`` first on the path (an older tree runs eager, with its own thread handling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's default network and batch with cube's chunking.
    "paper": dict(actor_hidden_dims=[512] * 4, value_hidden_dims=[512] * 4, ensemble_size=10,
                  flow_steps=10, horizon=5, batch_size=256),
    # What we train on 2 CPU cores (rql_cli.presets.CPU_NETWORKS).
    "small-cpu": dict(actor_hidden_dims=[256] * 3, value_hidden_dims=[256] * 3, ensemble_size=4,
                      flow_steps=10, horizon=5, batch_size=256),
}
OBS_DIM, ACTION_DIM = 28, 5
MODES = {"eager": None, "compiled": "default", "graphs": "reduce-overhead"}


def update_flops(config: dict[str, Any]) -> float:
    """Matmul FLOPs of one update (forward and backward), to turn steps/s into GFLOP/s."""
    chunk = config["horizon"] * ACTION_DIM
    in_dim = OBS_DIM + chunk + 1

    def mlp(widths: list[int], out: int) -> float:
        dims = [in_dim, *widths, out]
        return 2.0 * sum(a * b for a, b in zip(dims, dims[1:]))

    batch, flow, k = config["batch_size"], config["flow_steps"], config["ensemble_size"]
    velocity, value = mlp(config["actor_hidden_dims"], chunk), k * mlp(config["value_hidden_dims"], 1)
    reversal = flow * velocity  # no grad
    value_target = value  # no grad
    value_fit = 3 * value  # forward, input and weight gradients
    bc = 3 * velocity
    policy = 2 * value  # forward and input gradients only (frozen weights)
    return batch * (reversal + value_target + value_fit + bc + policy)


# ------------------------------------------------------------------------------------------------
# One measurement (runs in a child process, against whichever rql_cli is first on the path)
# ------------------------------------------------------------------------------------------------
def synthetic_dataset(device: Any) -> Any:
    """100,000 random transitions of cube-single's shapes in episodes of 1000, on ``device``."""
    import numpy as np

    from rql_cli.data.dataset import OfflineDataset

    rng = np.random.default_rng(0)
    n, length = 100_000, 1000
    terminals = np.zeros(n, dtype=np.float32)
    terminals[length - 1 :: length] = 1
    return OfflineDataset.from_arrays(dict(
        observations=rng.standard_normal((n, OBS_DIM), dtype=np.float32),
        next_observations=rng.standard_normal((n, OBS_DIM), dtype=np.float32),
        actions=rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
        rewards=-(rng.random(n) < 0.98).astype(np.float32),
        masks=np.ones(n, dtype=np.float32), terminals=terminals,
    ), device=device)


def measure(config_name: str, mode: str, device_name: str, steps: int, warmup: int, profile: bool) -> dict:
    import torch

    mode, _, forced_route = mode.partition("@")

    import rql_cli
    from rql_cli import config as config_module
    from rql_cli.core.rql import RQLAgent
    from rql_cli.data.dataset import ChunkSampler
    from rql_cli.device import make_generator, resolve_device

    device = resolve_device(device_name)
    if hasattr(config_module, "RunConfig"):  # the agent's config apart from the run's (threads: 0 adapts)
        config, threads_requested = config_module.RQLConfig(**CONFIGS[config_name]), 0
    else:  # older trees: one config object holding both
        config = config_module.RQLConfig(**CONFIGS[config_name], device=str(device))
        threads_requested = config.threads
    dataset = synthetic_dataset(device)
    sampler = ChunkSampler(dataset, config.horizon)
    torch.manual_seed(0)
    agent = RQLAgent(config, dataset.obs_dim, dataset.action_dim, device)
    sample_rng, noise_rng = make_generator(device, 0), make_generator(device, 1)

    poll, runtime_info, compile_seconds = (lambda: None), {}, 0.0
    # An editable install would serve a module this tree lacks from the installed tree: look on disk.
    package = Path(rql_cli.__file__).parent
    if (package / "training" / "runtime.py").is_file():
        from rql_cli.training.runtime import configure_threads, prepare_update
    elif (package / "runtime.py").is_file():  # trees before the training package
        from rql_cli.runtime import configure_threads, prepare_update  # type: ignore[no-redef]
    else:  # older still: fixed threads, eager
        configure_threads = prepare_update = None
    if configure_threads is None:
        if mode != "eager":
            return dict(skipped=f"{mode} needs the runtime module, which this tree lacks")
    else:
        threads, governor = configure_threads(threads_requested, device)
        poll = governor.poll if governor else poll
        if (package / "training" / "matmul_route.py").is_file():
            from rql_cli.training.matmul_route import ROUTE_PRECISION, choose_matmul_route

            if forced_route in ROUTE_PRECISION:  # a CPU route by name
                torch.set_float32_matmul_precision(ROUTE_PRECISION[forced_route])
                runtime_info["matmul"] = forced_route
            else:  # a matmul_precision ('high': TF32 on a GPU), or rql train's default
                route = choose_matmul_route(forced_route or "highest", device, config, dataset.obs_dim,
                                            dataset.action_dim)
                runtime_info["matmul"] = f"{route.route} ({route.how})"
                if hasattr(agent, "set_hidden_product_dtype"):  # as rql train applies the route
                    from rql_cli.training.matmul_route import hidden_product_dtype

                    agent.set_hidden_product_dtype(hidden_product_dtype(route))
        choice = {"eager": "off", "compiled": "on", "graphs": "graphs"}[mode]
        report = prepare_update(agent, choice, 10**9, sampler.sample(config.batch_size, make_generator(device, 9)))
        compile_seconds = report.seconds
        runtime_info["threads"] = threads.to_dict()

    def run(count: int) -> None:
        for _ in range(count):
            agent.update(sampler.sample(config.batch_size, sample_rng), noise_rng)
            poll()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(steps)
    elapsed = time.perf_counter() - start
    result = dict(
        steps_per_second=steps / elapsed, compile_seconds=compile_seconds,
        gflops=update_flops(CONFIGS[config_name]) * steps / elapsed / 1e9,
        threads_at_end=torch.get_num_threads(), rql_cli=str(Path(rql_cli.__file__).parent),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **runtime_info,
    )
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiled_steps = max(3, steps // 4)
        with torch_profile(activities=activities) as prof:
            started = time.perf_counter()
            run(profiled_steps)
            wall_ms = (time.perf_counter() - started) / profiled_steps * 1e3
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        averages = prof.key_averages()
        result["profile"] = averages.table(sort_by=sort, row_limit=15, max_name_column_width=40)
        if device.type == "cpu":
            result["profile"] += "\n" + matmul_floor(averages, profiled_steps)
        else:  # the host's side too: what runs outside the graphs, and how busy the GPU is kept
            result["profile"] += "\n" + averages.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=40)
            result["profile"] += "\n" + gpu_busy(averages, profiled_steps, wall_ms)
    return result


def gpu_busy(averages: Any, steps: int, wall_ms: float) -> str:
    """One line: GPU kernel time and launches per profiled step against its wall time. A step whose
    kernels fill little of its wall time is bound by launching them (or by the host), not by the GPU."""
    import torch

    kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.self_device_time_total for e in kernels) / steps / 1e3
    launches = sum(e.count for e in kernels) / steps
    return (f"GPU: {busy_ms:.2f} ms of kernels per profiled step in {wall_ms:.2f} ms of wall time "
            f"({busy_ms / wall_ms:.0%} busy), {launches:.0f} kernels per step; the kernels alone would run "
            f"{1e3 / max(busy_ms, 1e-9):.0f} steps/s")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_floor(averages: Any, steps: int) -> str:
    """One line: the matmul kernels' share of a profiled CPU step, and the steps/s a step made of
    nothing else would run at. Any fp32 implementation of the update does these products, and their
    rates are the BLAS library's (XLA ran the same shapes at the same rates on one thread here),
    so the floor bounds what a faster update can gain."""
    per_step = {e.key: e.self_cpu_time_total / steps / 1e3 for e in averages}  # ms per step
    matmul_ms, total_ms = sum(per_step.get(op, 0.0) for op in MATMUL_OPS), sum(per_step.values())
    return (f"matmuls: {matmul_ms:.1f} of {total_ms:.1f} ms per profiled step ({matmul_ms / total_ms:.0%}); "
            f"the products alone would run {1e3 / matmul_ms:.1f} steps/s")


# ------------------------------------------------------------------------------------------------
# The parent: variants, rounds, load, worktrees, the table
# ------------------------------------------------------------------------------------------------
def tree_env(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree``'s rql_cli first on the path (a PYTHONPATH already set,
    e.g. to packages unpacked on a GPU machine, stays behind it), and CI=true for plain output."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, CI="true")


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A temporary detached checkout of ``revision`` (removed afterwards); the other benchmarks' --compare too."""
    folder = Path(tempfile.mkdtemp(prefix="rql-compare-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision],
                   check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], capture_output=True)


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes that each keep one core busy (pure Python spinning) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if procs else 0)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_child(tree: Path, args: argparse.Namespace, config_name: str, mode: str) -> dict:
    env = tree_env(tree)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", config_name, mode,
               "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.profile:
        command.append("--profile")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled, graphs")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 15 paper, 100 small-cpu)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is printed")
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision (eager)")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="busy processes running beside")
    parser.add_argument("--profile", action="store_true", help="print a torch profiler table per variant")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        steps = args.steps or (15 if args.child[0] == "paper" else 100)
        print(json.dumps(measure(*args.child, args.device, steps, args.warmup, args.profile)))
        return

    import torch

    names = list(CONFIGS) if args.config == "all" else [args.config]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"torch {torch.__version__}; device {args.device}; {os.cpu_count()} CPUs; busy processes beside: {args.load}")
    with worktree(args.compare) if args.compare else nullcontext() as old_tree:
        variants = [("this tree", REPO, mode) for mode in modes]
        if old_tree is not None:
            variants.insert(0, (args.compare, old_tree, "eager"))
        for name in names:
            results: dict[tuple[str, str], list[dict]] = {(label, mode): [] for label, _, mode in variants}
            with busy_processes(args.load):
                for _ in range(args.rounds):
                    for label, tree, mode in variants:
                        results[(label, mode)].append(run_child(tree, args, name, mode))
            print_table(name, variants, results)


def print_table(name: str, variants: list, results: dict) -> None:
    """One row per variant: median steps/s (and its ratio to the first row), GFLOP/s, compile, threads."""
    print(f"\n{name}: {update_flops(CONFIGS[name]) / 1e9:.1f} GFLOP of matmuls per update")
    print(f"  {'tree':14s} {'mode':9s} {'steps/s (median; runs)':34s} {'GFLOP/s':>8s} {'compile s':>9s} "
          f"{'peak MiB':>8s}  threads")
    base = None
    for label, _, mode in variants:
        runs = results[(label, mode)]
        good = [r for r in runs if "steps_per_second" in r]
        if not good:
            print(f"  {label:14s} {mode:9s} {(runs[0].get('skipped') or runs[0].get('error'))}")
            continue
        rates = [r["steps_per_second"] for r in good]
        median = statistics.median(rates)
        ratio = "" if base is None else f" ({median / base:.2f}x)"
        base = median if base is None else base
        spread = ", ".join(f"{r:.2f}" for r in rates)
        threads = good[-1].get("threads", {})
        thread_text = (f"{threads.get('threads')} of {threads.get('usable_cores')}"
                       f"{' adaptive' if threads.get('adaptive') else ''}, {good[-1]['threads_at_end']} at end"
                       if threads else f"{good[-1]['threads_at_end']} (fixed)")
        matmul = f"; matmuls {good[-1]['matmul']}" if good[-1].get("matmul") else ""
        print(f"  {label:14s} {mode:9s} {f'{median:.2f}{ratio} [{spread}]':34s} "
              f"{statistics.median(r['gflops'] for r in good):8.0f} {good[-1]['compile_seconds']:9.1f} "
              f"{good[-1]['peak_mib']:8.0f}  {thread_text}{matmul}")
        if good[-1].get("profile"):
            print(good[-1]["profile"])


if __name__ == "__main__":
    main()
