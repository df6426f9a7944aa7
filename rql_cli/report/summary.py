"""A results table from scored runs: per task over seeds, per group over tasks and runs, and pairs.

Per task: the mean success over its runs (seeds) with a Student t 95% interval over seeds. Per group
(environment family and varying config fields): the IQM and the mean over every run of every task
with stratified bootstrap 95% intervals. Between two groups on the same tasks: the probability of
improvement, with its stratified bootstrap interval.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from rql_cli.report import stats
from rql_cli.report.collect import RunScore, by_group
from rql_cli.results import mean_over_seeds

Interval = tuple[float, float]

TASK_INTERVAL = "Student t 95% interval over the task's seeds"


def group_interval(reps: int) -> str:
    """What a group's interval is, for ``reps`` bootstrap replicates."""
    return f"stratified bootstrap 95% percentile interval ({reps:,} replicates, runs resampled within each task)"


MAX_PAIRS = 15
"""Most group pairs whose probability of improvement a report computes (6 groups)."""


@dataclass
class TaskRow:
    """One task of one group: its runs' final success, mean over seeds with a t interval."""

    group: str
    env_id: str
    seeds: list[int]
    step: int
    mean: float
    ci95: Interval | None
    scores: list[float]


@dataclass
class GroupRow:
    """One group over its tasks: IQM and mean with stratified bootstrap intervals."""

    group: str
    tasks: int
    runs: int
    iqm: float
    iqm_ci95: Interval
    mean: float
    mean_ci95: Interval


@dataclass
class Improvement:
    """P(group x > group y) on their shared tasks, with its stratified bootstrap interval."""

    x: str
    y: str
    tasks: int
    probability: float
    ci95: Interval


@dataclass
class Report:
    """The tables of ``rql report``; ``reps`` bootstrap replicates made the group intervals."""

    tasks: list[TaskRow]
    groups: list[GroupRow]
    improvements: list[Improvement]
    reps: int
    unevaluated: list[str] = field(default_factory=list)

    @property
    def intervals(self) -> dict[str, str]:
        """What each table's interval is."""
        return {"task": TASK_INTERVAL, "group": group_interval(self.reps)}

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` payload."""
        return {"intervals": self.intervals, **asdict(self)}

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per task and per group (``--csv``): kind, group, task, runs, statistic, value, low, high."""
        rows = []
        for t in self.tasks:
            low, high = t.ci95 or (None, None)
            rows.append(dict(kind="task", group=t.group, task=t.env_id, runs=len(t.scores), statistic="mean",
                             value=t.mean, low=low, high=high))
        for g in self.groups:
            for name, value, (low, high) in (("iqm", g.iqm, g.iqm_ci95), ("mean", g.mean, g.mean_ci95)):
                rows.append(dict(kind="group", group=g.group, task="", runs=g.runs, statistic=name, value=value,
                                 low=low, high=high))
        return rows

    def to_markdown(self) -> str:
        """The tables as GitHub markdown, ready for a paper draft or a model card."""
        lines = ["| group | task | seeds | step | success (mean) | 95% CI over seeds |", "|---|---|---|---|---|---|"]
        for t in self.tasks:
            lines.append(f"| {t.group} | {t.env_id} | {len(t.seeds)} | {t.step:,} | {_pct(t.mean)} | {_ci(t.ci95)} |")
        lines += ["", "| group | tasks | runs | IQM | IQM 95% CI | mean | mean 95% CI |",
                  "|---|---|---|---|---|---|---|"]
        for g in self.groups:
            lines.append(f"| {g.group} | {g.tasks} | {g.runs} | {_pct(g.iqm)} | {_ci(g.iqm_ci95)} | {_pct(g.mean)} | "
                         f"{_ci(g.mean_ci95)} |")
        if self.improvements:
            lines += ["", "| P(X > Y) | X | Y | tasks | 95% CI |", "|---|---|---|---|---|"]
            lines += [f"| {i.probability:.2f} | {i.x} | {i.y} | {i.tasks} | [{i.ci95[0]:.2f}, {i.ci95[1]:.2f}] |"
                      for i in self.improvements]
        lines += ["", f"Task intervals: {TASK_INTERVAL}. Group intervals: {group_interval(self.reps)}."]
        return "\n".join(lines) + "\n"


def build_report(runs: list[RunScore], *, reps: int = stats.DEFAULT_REPS, seed: int = 0) -> Report:
    """The report of ``runs`` (each evaluated at least once); bootstrap draws seeded by ``seed``."""
    grouped = by_group(runs)
    tasks, groups = [], []
    for label, per_task in grouped.items():
        for env_id, task_runs in per_task.items():
            scores = [r.final for r in task_runs]
            mean, interval = mean_over_seeds(scores)
            tasks.append(TaskRow(group=label, env_id=env_id, seeds=[r.seed for r in task_runs],
                                 step=min(r.final_step for r in task_runs), mean=mean, ci95=interval, scores=scores))
        matrix = [[r.final for r in task_runs] for task_runs in per_task.values()]
        iqm, iqm_ci = stats.stratified_bootstrap(stats.iqm, matrix, reps=reps, seed=seed)
        mean, mean_ci = stats.stratified_bootstrap(stats.mean, matrix, reps=reps, seed=seed)
        groups.append(GroupRow(group=label, tasks=len(matrix), runs=sum(map(len, matrix)), iqm=iqm, iqm_ci95=iqm_ci,
                               mean=mean, mean_ci95=mean_ci))
    return Report(tasks=tasks, groups=groups, improvements=_improvements(grouped, reps, seed), reps=reps)


def _improvements(grouped: dict[str, dict[str, list[RunScore]]], reps: int, seed: int) -> list[Improvement]:
    """P(X > Y) for each pair of groups with tasks in common (at most ``MAX_PAIRS`` pairs)."""
    found = []
    for x, y in itertools.islice(itertools.combinations(grouped, 2), MAX_PAIRS):
        shared = sorted(set(grouped[x]) & set(grouped[y]))
        if not shared:
            continue
        scores_x = [[r.final for r in grouped[x][t]] for t in shared]
        scores_y = [[r.final for r in grouped[y][t]] for t in shared]
        probability, interval = stats.stratified_bootstrap(stats.probability_of_improvement, scores_x, scores_y,
                                                           reps=reps, seed=seed)
        found.append(Improvement(x=x, y=y, tasks=len(shared), probability=probability, ci95=interval))
    return found


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(interval: Interval | None) -> str:
    return f"[{_pct(interval[0])}, {_pct(interval[1])}]" if interval else "-"
