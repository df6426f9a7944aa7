"""Our report statistics (rql_cli.report.stats) against rliable's on the same seeded score matrices.

rliable does not import beside our dependencies (pandas 3 breaks arch), so it runs in a scratch
virtualenv of its own, in a subprocess, on the same numbers:

    python -m venv --system-site-packages /tmp/rliable-venv
    /tmp/rliable-venv/bin/pip install rliable "pandas<3"
    python benchmarks/report_vs_rliable.py --rliable-python /tmp/rliable-venv/bin/python

Point estimates must agree to float precision; bootstrap bounds differ by the two libraries' own
random draws, so they agree to Monte Carlo error (both with the same number of replicates).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rql_cli.report import stats  # noqa: E402

RLIABLE_SIDE = """
import json, sys
import numpy as np
from rliable import library as rly, metrics
data = json.loads(sys.stdin.read())
x, y, reps = np.array(data["x"]), np.array(data["y"]), data["reps"]
aggregate = lambda s: np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s)])
points, intervals = rly.get_interval_estimates({"x": x}, aggregate, reps=reps)
poi_points, poi_intervals = rly.get_interval_estimates({"xy": (x, y)}, metrics.probability_of_improvement,
                                                       reps=reps)
profile, _ = rly.create_performance_profile({"x": x}, np.array(data["taus"]))
print(json.dumps(dict(iqm=points["x"][0], iqm_ci=intervals["x"][:, 0].tolist(), mean=points["x"][1],
                      mean_ci=intervals["x"][:, 1].tolist(), poi=float(poi_points["xy"]),
                      poi_ci=np.ravel(poi_intervals["xy"]).tolist(), profile=profile["x"].tolist())))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rliable-python", required=True, help="a python whose rliable imports")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.beta(4, 2, (args.runs, args.tasks))  # runs x tasks, as rliable takes them
    y = rng.beta(3, 3, (args.runs, args.tasks))
    taus = [i / 10 for i in range(11)]
    payload = json.dumps(dict(x=x.tolist(), y=y.tolist(), reps=args.reps, taus=taus))
    done = subprocess.run([args.rliable_python, "-c", RLIABLE_SIDE], input=payload, capture_output=True, text=True,
                          check=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    by_task_x, by_task_y = x.T.tolist(), y.T.tolist()  # ours take per-task lists of runs
    ours_iqm = stats.stratified_bootstrap(stats.iqm, by_task_x, reps=args.reps, seed=args.seed)
    ours_mean = stats.stratified_bootstrap(stats.mean, by_task_x, reps=args.reps, seed=args.seed)
    ours_poi = stats.stratified_bootstrap(stats.probability_of_improvement, by_task_x, by_task_y, reps=args.reps,
                                          seed=args.seed)
    ours_profile = stats.performance_profile(by_task_x, taus).tolist()
    print(f"{args.runs} runs x {args.tasks} tasks (beta-distributed, seed {args.seed}), {args.reps:,} replicates each")
    print(f"{'statistic':<28} {'ours':>8} {'rliable':>8}  {'ours 95% CI':>18} {'rliable 95% CI':>18}")
    for name, (point, (low, high)), key in (("IQM", ours_iqm, "iqm"), ("mean", ours_mean, "mean"),
                                            ("P(X > Y)", ours_poi, "poi")):
        their_low, their_high = theirs[f"{key}_ci"]
        print(f"{name:<28} {point:>8.5f} {theirs[key]:>8.5f}  [{low:.4f}, {high:.4f}]   "
              f"[{their_low:.4f}, {their_high:.4f}]")
    gap = max(abs(a - b) for a, b in zip(ours_profile, theirs["profile"], strict=True))
    print(f"{'performance profile (11 taus)':<28} largest difference {gap:.2e}")


if __name__ == "__main__":
    main()
