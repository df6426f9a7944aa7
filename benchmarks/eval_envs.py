"""Seconds per evaluation episode of `rql eval` with 1 and with 2 parallel environments.

Runs the real command on a bundled checkpoint and reads the wall time of the stepping loop from its
JSON report (env start-up excluded, and reported apart). Rounds alternate the env counts.

    python benchmarks/eval_envs.py                       # cube-single-task2-rql-cpu, 20 episodes, 2 rounds
    python benchmarks/eval_envs.py --compare 66a4f4b     # also another revision's rql
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

# this folder is on the path when run as a script
from train_throughput import tree_env, worktree

REPO = Path(__file__).resolve().parents[1]


def one_eval(tree: Path, checkpoint: str, episodes: int, envs: int, report: Path) -> dict:
    env = tree_env(tree)
    command = [sys.executable, "-m", "rql_cli", "eval", "--checkpoint", checkpoint, "--episodes", str(episodes),
               "--envs", str(envs), "--device", "cpu", "--quiet", "--json", str(report)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tree)
    task = json.loads(report.read_text())["tasks"][0]
    return dict(loop=(task["wall_time_s"] - task["startup_time_s"]) / episodes, startup=task["startup_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="cube-single-task2-rql-cpu")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", metavar="REV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rql-eval-") as tmp, \
            (worktree(args.compare) if args.compare else nullcontext()) as old:
        trees = [("this tree", REPO)] if old is None else [(args.compare, old), ("this tree", REPO)]
        results: dict[tuple[str, int], list[dict]] = {(label, n): [] for label, _ in trees for n in (1, 2)}
        for _ in range(args.rounds):
            for label, tree in trees:
                for envs in (1, 2):
                    results[(label, envs)].append(one_eval(tree, args.checkpoint, args.episodes, envs,
                                                           Path(tmp) / "report.json"))
    print(f"{args.checkpoint}, {args.episodes} episodes, {os.cpu_count()} CPUs: seconds per episode (median of "
          f"{args.rounds}), env start-up apart")
    for (label, envs), runs in results.items():
        loop = statistics.median(r["loop"] for r in runs)
        startup = statistics.median(r["startup"] for r in runs)
        print(f"  {label:12s} --envs {envs}: {loop:.3f} s/episode  (start-up {startup:.1f} s)")


if __name__ == "__main__":
    main()
