"""What Ray adds to a sweep: the same tiny sweep through `rql sweep --executor local` (one run after
another in one process) and `--executor ray` (a local Ray, --parallel runs at once), timed end to end.

Runs are tiny (2x32 networks, batch 8) so the times are the fixed costs: Ray's start, a worker's
imports of torch and rql, the per-run setup (data load, folders) that both executors pay.

    RAY_AUTH_MODE=disabled python benchmarks/sweep_overhead.py --dataset-dir data --runs 6 --steps 50
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]", "--set", "horizon=5",
        "--set", "batch_size=8", "--set", "flow_steps=4", "--eval-episodes", "0", "--device", "cpu"]


def sweep(executor: str, out: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "rql_cli", "sweep", "--dataset", args.dataset, "--dataset-dir",
               str(args.dataset_dir), "--seeds", f"0-{args.runs - 1}", "--steps", str(args.steps), "--out", str(out),
               "--executor", executor, "--threads-per-run", "1", *TINY]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def training_seconds(out: Path) -> float:
    """The runs' own training time (each metrics.csv's last wall_time), summed."""
    total = 0.0
    for metrics in out.glob("*/metrics.csv"):
        with open(metrics, newline="") as handle:
            total += float(list(csv.DictReader(handle))[-1]["wall_time"])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cube-single-play-v0")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print(f"{args.runs} runs of {args.steps} steps (2x32 networks), one thread each")
        print(f"{'executor':>9} {'wall s':>8} {'per run s':>10} {'training s (sum)':>17}")
        for executor in ("local", "ray"):
            out = Path(scratch) / executor
            wall = sweep(executor, out, args)
            print(f"{executor:>9} {wall:>8.1f} {wall / args.runs:>10.2f} {training_seconds(out):>17.1f}")


if __name__ == "__main__":
    main()
