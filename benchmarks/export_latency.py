"""Acting latency at batch 1 and throughput at batch 64 of a policy run four ways: eager torch
(``RQLAgent.act``), ``torch.compile`` of the exported module, the ``torch.export`` archive
(``torch.export.load``) and the ONNX file in onnxruntime, each drawing its own noise per call.

Agents: the bundled cube-single task 1 agent (4 x 256, F 10, h 5) and a paper-sized one (4 x 512,
F 10, h 5, randomly initialised at cube-single's sizes: latency does not depend on the weights).
Each file is exported with ``rql_cli.export.policy.write_policy`` and checked against ``act`` first. Every
figure is the median of ``--calls`` timed calls after a warm-up, the runtimes taking turns call by
call so that other work on the machine slows them alike. Examples:

    python benchmarks/export_latency.py
    python benchmarks/export_latency.py --threads 2 --calls 500
    python benchmarks/export_latency.py --device cuda      # torch on the GPU; onnxruntime's CUDA provider if installed
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rql_cli.export.policy import open_exported, policy_module, validation_difference, write_policy

BUNDLED = "cube-single-task1-rql-cpu"
BATCHES = (1, 64)


def paper_agent(device: torch.device):
    """The paper's network sizes (4 x 512, F 10) with h 5 at cube-single's sizes (obs 28, A 5)."""
    from rql_cli.config import RQLConfig
    from rql_cli.core.rql import RQLAgent

    torch.manual_seed(0)
    return RQLAgent(RQLConfig(horizon=5, ensemble_size=2), 28, 5, device)


def interleaved_seconds(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds of each timed call, per runtime; the runtimes take turns call by call, so a busy
    machine (other processes on the same cores) slows them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - started)
    return times


def runners(agent, folder: Path, device: torch.device, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """Runtime name -> a policy of numpy observations (B, obs_dim) that draws its noise and acts."""
    write_policy(agent.to("cpu"), "onnx", folder / "policy.onnx")
    write_policy(agent, "pt2", folder / "policy.pt2")
    agent.to(device)
    rng = np.random.default_rng(0)
    generator = torch.Generator(device=device).manual_seed(0)
    chunk_dim = agent.chunk_dim

    onnx = open_exported(folder / "policy.onnx", "onnx", threads=threads)
    if device.type == "cuda":
        import onnxruntime  # type: ignore[import-untyped]

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            session = onnxruntime.InferenceSession(str(folder / "policy.onnx"), providers=["CUDAExecutionProvider"])
            onnx = lambda obs, noise: session.run(None, {"observation": obs, "noise": noise})[0]  # noqa: E731
    compiled = torch.compile(policy_module(agent), mode="reduce-overhead" if device.type == "cuda" else "default")
    pt2 = torch.export.load(str(folder / "policy.pt2")).module()
    if device.type == "cuda":
        from torch.export.passes import move_to_device_pass

        pt2 = move_to_device_pass(torch.export.load(str(folder / "policy.pt2")), device).module()

    def to_device(obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, device=device)

    def with_noise(module) -> Callable[[np.ndarray], object]:
        def act(obs: np.ndarray) -> object:
            rows = to_device(obs)
            with torch.no_grad():
                return module(rows, torch.randn(rows.shape[0], chunk_dim, generator=generator, device=device)).cpu()

        return act

    return {
        "eager torch (act)": lambda obs: agent.act(to_device(obs), generator).cpu(),
        "torch.compile": with_noise(compiled),
        "torch.export (pt2)": with_noise(pt2),
        "onnxruntime": lambda obs: onnx(obs, rng.standard_normal((obs.shape[0], chunk_dim), np.float32)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="bundled,paper", help="comma-separated: bundled, paper")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per figure")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (compiles included)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch's runtimes; onnxruntime CPU unless "
                                                        "onnxruntime-gpu is installed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"torch {torch.__version__}, threads {args.threads}, device {device}, median of {args.calls} calls\n")
    print("| agent | runtime | batch 1 latency, ms: median (10th percentile) | batch 64, chunks/s | batch 1 vs eager |")
    print("|---|---|---|---|---|")
    for name in args.agents.split(","):
        if name == "bundled":
            from rql_cli.io.resolve import load_checkpoint

            agent = load_checkpoint(BUNDLED, "cpu").agent
        else:
            agent = paper_agent(torch.device("cpu"))
        widths = agent.config.actor_hidden_dims
        label = f"{name} ({len(widths)}x{widths[0]}, F {agent.config.flow_steps}, h {agent.config.horizon})"
        with tempfile.TemporaryDirectory() as folder:
            policies = runners(agent, Path(folder), device, args.threads)
            check = np.random.default_rng(1).standard_normal((64, agent.obs_dim)).astype(np.float32)
            worst = validation_difference(agent.to("cpu"), open_exported(Path(folder) / "policy.onnx", "onnx"), check)
            agent.to(device)
            observations = {b: np.random.default_rng(b).standard_normal((b, agent.obs_dim)).astype(np.float32)
                             for b in BATCHES}
            times = {b: interleaved_seconds({runtime: functools.partial(policy, observations[b])
                                             for runtime, policy in policies.items()}, args.calls, args.warmup, sync)
                     for b in BATCHES}
            eager = statistics.median(times[1]["eager torch (act)"])
            for runtime in policies:
                latency, batch_time = (statistics.median(times[b][runtime]) for b in BATCHES)
                p10 = statistics.quantiles(times[1][runtime], n=10)[0]
                print(f"| {label} | {runtime} | {latency * 1e3:.3f} ({p10 * 1e3:.3f}) | {64 / batch_time:,.0f} | "
                      f"{eager / latency:.1f}x |", flush=True)
        print(f"<!-- {label}: onnx max |difference| from act {worst:.2g} -->")


if __name__ == "__main__":
    main()
