"""Steps per second of one `rql train` alone, then of two started together on the same machine.

Each run writes its speed to metrics.csv; this prints the median over the logged windows (the first
window, which holds start-up, is skipped) and what share of the lone speed each of the pair kept.

    python benchmarks/side_by_side.py                         # generates a small cube-single set first
    python benchmarks/side_by_side.py --dataset-dir DIR --steps 240 --networks paper
    python benchmarks/side_by_side.py --compare 66a4f4b       # the same with another revision's rql
    python benchmarks/side_by_side.py --device cuda --networks paper --steps 4000   # two on one GPU

Runs use the CPU-sized networks (3x256, K=4; ``--networks paper`` for 4x512, K=10) with no
evaluation; threads and compilation are each run's own choice (on CUDA, ``auto`` replays CUDA graphs).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# this folder is on the path when run as a script
from train_throughput import tree_env, worktree

REPO = Path(__file__).resolve().parents[1]
DATASET = "cube-single-play-v0"


NETWORKS = {
    "small-cpu": ["actor_hidden_dims=256,256,256", "value_hidden_dims=256,256,256", "ensemble_size=4"],
    "paper": ["actor_hidden_dims=512,512,512,512", "value_hidden_dims=512,512,512,512", "ensemble_size=10"],
}


def train_command(dataset_dir: Path, out: Path, steps: int, networks: str, device: str) -> list[str]:
    settings = [*NETWORKS[networks], f"log_interval={max(1, steps // 8)}"]
    return [
        sys.executable, "-m", "rql_cli", "train", "--dataset", DATASET, "--dataset-dir", str(dataset_dir),
        "--out", str(out), "--steps", str(steps), "--eval-episodes", "0", "--device", device,
        *[part for setting in settings for part in ("--set", setting)],
    ]


def median_rate(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as handle:
        rates = [float(row["steps_per_second"]) for row in csv.DictReader(handle)]
    return statistics.median(rates[1:] or rates)


def run_together(commands: list[list[str]], env: dict[str, str]) -> None:
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"rql train failed:\n{err}")


def measure(tree: Path, dataset_dir: Path, steps: int, networks: str, device: str, scratch: Path,
            label: str) -> None:
    env = tree_env(tree)
    lone = scratch / f"{label}-lone"
    run_together([train_command(dataset_dir, lone, steps, networks, device)], env)
    pair = [scratch / f"{label}-pair-{i}" for i in (1, 2)]
    run_together([train_command(dataset_dir, out, steps, networks, device) for out in pair], env)
    alone = median_rate(lone)
    shares = [median_rate(out) for out in pair]
    print(f"{label}: alone {alone:.1f} steps/s; side by side "
          + ", ".join(f"{rate:.1f} ({rate / alone:.0%})" for rate in shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, help=f"folder with {DATASET}.npz (default: generate 20 episodes)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--networks", choices=list(NETWORKS), default="small-cpu")
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both runs on it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rql-side-") as tmp:
        scratch = Path(tmp)
        dataset_dir = args.dataset_dir
        if dataset_dir is None:
            dataset_dir = scratch / "data"
            subprocess.run([sys.executable, "-m", "rql_cli", "data", "generate", DATASET, "--episodes", "20",
                            "--out", str(dataset_dir)], check=True, stdout=subprocess.DEVNULL)
        print(f"{os.cpu_count()} CPUs; device {args.device}; {args.networks} networks; {args.steps} steps per run; "
              f"dataset {dataset_dir}")
        if args.compare:
            with worktree(args.compare) as old:
                measure(old, dataset_dir, args.steps, args.networks, args.device, scratch, args.compare)
        measure(REPO, dataset_dir, args.steps, args.networks, args.device, scratch, "this tree")


if __name__ == "__main__":
    main()
