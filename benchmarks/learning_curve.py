"""Evaluate every checkpoint of one or more run folders and print a success-rate table.

Each checkpoint is scored exactly as `rql eval --checkpoint CKPT --episodes N --seed S` would
score it (same episodes, seeds and noise), and the per-checkpoint reports are written as JSON
beside the table. Example:

    python benchmarks/learning_curve.py runs/rql runs/bc --episodes 50 --envs 2 --json curve.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rql_cli.device import resolve_device
from rql_cli.evaluation import evaluate_checkpoint
from rql_cli.io.resolve import load_checkpoint
from rql_cli.io.run_checkpoints import list_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--envs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows: dict[int, dict[str, str]] = {}
    reports = []
    for run in args.runs:
        for checkpoint in list_checkpoints(run):
            loaded = load_checkpoint(str(checkpoint), resolve_device(args.device))
            report = evaluate_checkpoint(
                loaded, tasks=[None], episodes=args.episodes, seed=args.seed, num_envs=args.envs,
            ).to_dict()
            reports.append(report)
            task = report["tasks"][0]
            low, high = task["success_ci95"]
            cell = f"{100 * task['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"
            rows.setdefault(report["step"], {})[run.name] = cell
            print(f"{run.name} step {report['step']}: {cell}, mean return {task['mean_return']:.1f}", flush=True)
    names = [run.name for run in args.runs]
    print(f"\n| step | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for step in sorted(rows):
        print(f"| {step:,} | {' | '.join(rows[step].get(n, '-') for n in names)} |")
    print(f"\nsuccess rate over {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}), "
          "Wilson 95% interval in brackets")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
