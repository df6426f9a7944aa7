"""Aggregate statistics over runs and tasks, as Agarwal et al. (2021, "Deep RL at the edge of the
statistical precipice") define them and their library rliable computes them.

Scores come per task as a list of per-run scores (success rates in [0, 1]); tasks may hold different
numbers of runs. A *stratified* bootstrap resamples the runs of each task with replacement,
independently per task, and recomputes the aggregate on the resampled scores; the interval is the
percentile interval of those replicates. rliable does not install cleanly beside our dependencies
(with pandas 3 its import fails inside arch), so these few functions are ours;
``benchmarks/report_vs_rliable.py`` checks them against rliable run in a scratch virtualenv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

TaskScores = Sequence[Sequence[float]]
"""Per task, the scores of its runs: ``[[run scores of task 1], [run scores of task 2], ...]``."""
Aggregate = Callable[[TaskScores], float]

DEFAULT_REPS = 5000
"""Bootstrap replicates (QC's choice; rliable's default is 50,000, which moves the bounds by < 0.005 here)."""


def iqm(scores: TaskScores) -> float:
    """Interquartile mean of every run's score on every task: the mean of the middle 50% (25% cut
    from each end, as ``scipy.stats.trim_mean``)."""
    return float(scipy_stats.trim_mean(np.concatenate([np.asarray(t, dtype=float) for t in scores]), 0.25))


def mean(scores: TaskScores) -> float:
    """Mean over tasks of each task's mean score (each task weighs the same)."""
    return float(np.mean([np.mean(t) for t in scores]))


def probability_of_improvement(x: TaskScores, y: TaskScores) -> float:
    """P(X > Y): over tasks, the mean probability that a run of X scores above a run of Y on the same
    task, ties counting half (the Mann-Whitney U statistic over n * m). ``x`` and ``y`` list the same tasks."""
    per_task = []
    for runs_x, runs_y in zip(x, y, strict=True):
        a, b = np.asarray(runs_x, dtype=float)[:, None], np.asarray(runs_y, dtype=float)[None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def stratified_bootstrap(
    aggregate: Callable[..., float], *groups: TaskScores, reps: int = DEFAULT_REPS, seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, tuple[float, float]]:
    """``aggregate(*groups)`` and its percentile bootstrap interval, resampling each task's runs of each
    group independently (stratified by task and group). Seeded: the same inputs give the same interval."""
    rng = np.random.default_rng(seed)
    arrays = [[np.asarray(t, dtype=float) for t in group] for group in groups]
    replicates = np.empty(reps)
    for index in range(reps):
        resampled = [[t[rng.integers(0, len(t), len(t))] for t in group] for group in arrays]
        replicates[index] = aggregate(*resampled)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return aggregate(*arrays), (float(low), float(high))


def performance_profile(scores: TaskScores, thresholds: Sequence[float]) -> np.ndarray:
    """The fraction of runs (pooled over tasks, each task weighted by its runs' share) whose score
    exceeds each threshold tau: (len(thresholds),)."""
    pooled = np.concatenate([np.asarray(t, dtype=float) for t in scores])
    return np.array([float(np.mean(pooled > tau)) for tau in thresholds])
