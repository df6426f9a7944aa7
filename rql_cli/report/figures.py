"""``report.png``: per group, the IQM of success against training steps (sample efficiency) with its
stratified bootstrap band, and the performance profile (fraction of runs above each success level).

matplotlib (Agg) is imported when the figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rql_cli.report import stats
from rql_cli.report.collect import RunScore, by_group

CURVE_REPS = 500
"""Bootstrap replicates per point of a curve (the figure's band; the table's numbers use more)."""
THRESHOLDS = [i / 50 for i in range(51)]
"""Success levels tau of the performance profile."""


def curve_points(per_task: dict[str, list[RunScore]], reps: int = CURVE_REPS) -> list[tuple[int, float, float, float]]:
    """(step, IQM, low, high) at each step every run of the group was evaluated at, in order."""
    runs = [r for task_runs in per_task.values() for r in task_runs]
    steps = sorted(set.intersection(*[{step for step, _ in r.curve} for r in runs]))
    points = []
    for step in steps:
        matrix = [[dict(r.curve)[step] for r in task_runs] for task_runs in per_task.values()]
        value, (low, high) = stats.stratified_bootstrap(stats.iqm, matrix, reps=reps, seed=step)
        points.append((step, value, low, high))
    return points


def plot_report(runs: list[RunScore], path: Path) -> Path:
    """Draw both views for every group of ``runs`` into ``path`` (PNG), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, profiles) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, per_task in by_group(runs).items():
        points = curve_points(per_task)
        if points:
            steps, values, lows, highs = (np.array(column) for column in zip(*points, strict=True))
            curves.plot(steps, 100 * values, marker="o", label=label)
            curves.fill_between(steps, 100 * lows, 100 * highs, alpha=0.2)
        finals = [[r.final for r in task_runs] for task_runs in per_task.values()]
        profiles.plot([100 * tau for tau in THRESHOLDS], 100 * stats.performance_profile(finals, THRESHOLDS),
                      label=label)
    curves.set(xlabel="gradient steps", ylabel="IQM success (%)", ylim=(-2, 102),
               title="Sample efficiency (IQM, 95% stratified bootstrap)")
    profiles.set(xlabel="success threshold tau (%)", ylabel="runs with success > tau (%)", ylim=(-2, 102),
                 title="Performance profile (final evaluation)")
    for axis in (curves, profiles):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
