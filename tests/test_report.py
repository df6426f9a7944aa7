"""`rql report`: the statistics on hand-built scores with known answers, and the tables and files that
come out of run folders through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_refused, invoke

from rql_cli.io.run_record import read_run_record, write_run_record
from rql_cli.report import stats
from rql_cli.results import mean_over_seeds


def test_iqm_and_mean_of_known_scores():
    scores = [[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]]
    assert stats.iqm(scores) == pytest.approx(0.35)  # the middle half of the 8 pooled runs: 0.2 .. 0.5
    assert stats.mean(scores) == pytest.approx(0.35)
    assert stats.iqm([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0]]) == pytest.approx(1.0)  # outliers cut
    assert stats.mean([[1.0], [0.0, 0.0, 0.0]]) == pytest.approx(0.5)  # each task weighs the same


def test_probability_of_improvement_of_known_scores():
    assert stats.probability_of_improvement([[1.0, 1.0]], [[0.0, 0.0]]) == 1.0
    assert stats.probability_of_improvement([[0.5, 0.5]], [[0.5, 0.5]]) == 0.5  # ties count half
    # task 1: x beats y in 3 of 4 pairs; task 2: in 1 of 4 -> mean 0.5
    assert stats.probability_of_improvement([[0.2, 0.9], [0.1, 0.6]], [[0.1, 0.5], [0.5, 0.8]]) == pytest.approx(0.5)


def test_stratified_bootstrap_is_seeded_stratified_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    scores = [list(rng.uniform(0.3, 0.7, 5)), list(rng.uniform(0.6, 1.0, 5))]
    point, (low, high) = stats.stratified_bootstrap(stats.iqm, scores, reps=2000, seed=1)
    assert low < point < high and 0.3 <= low and high <= 1.0
    assert stats.stratified_bootstrap(stats.iqm, scores, reps=2000, seed=1) == (point, (low, high))
    # One run per task: resampling within each task can only redraw that run, so no spread at all.
    assert stats.stratified_bootstrap(stats.mean, [[0.2], [0.8]], reps=500) == (pytest.approx(0.5), (0.5, 0.5))


def test_performance_profile_counts_runs_above_each_threshold():
    profile = stats.performance_profile([[0.1, 0.5], [0.9, 0.5]], [0.0, 0.5, 0.95])
    assert profile.tolist() == [1.0, 0.25, 0.0]


def test_the_interval_over_seeds_is_student_t():
    mean, (low, high) = mean_over_seeds([0.2, 0.4, 0.6])
    half = 4.302652729911275 * 0.2 / np.sqrt(3)  # t(0.975, 2) * sample sd / sqrt(n)
    assert mean == pytest.approx(0.4) and low == 0.0 and high == pytest.approx(0.4 + half)
    assert mean_over_seeds([0.7]) == (0.7, None)


def make_run(template: Path, folder: Path, *, task: int, seed: int, alpha: float, curve: list[tuple[int, float]]):
    """A copy of a real run folder whose record says task, seed and alpha, with these evaluations."""
    shutil.copytree(template, folder)
    record = read_run_record(folder)
    record.env_id = f"cube-single-play-singletask-task{task}-v0"
    record.config = record.config.replace(seed=seed, alpha=alpha)
    write_run_record(folder, record)
    with open(folder / "eval.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "success_rate", "success_low", "success_high", "mean_return", "episodes", "wall_time"])
        for step, rate in curve:
            writer.writerow([step, rate, 0, 1, -100, 10, 1.0])


SCORES = {  # alpha -> task -> final success per seed
    3.0: {1: [0.8, 0.9, 1.0], 2: [0.5, 0.6, 0.7]},
    10.0: {1: [0.4, 0.5, 0.6], 2: [0.1, 0.2, 0.3]},
}


@pytest.fixture(scope="module")
def sweep(tiny_run_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    for alpha, tasks in SCORES.items():
        for task, finals in tasks.items():
            for seed, final in enumerate(finals):
                make_run(tiny_run_dir, root / f"alpha{alpha}" / f"task{task}" / f"seed{seed}", task=task, seed=seed,
                         alpha=alpha, curve=[(1, final / 2), (2, final)])
    shutil.copytree(tiny_run_dir, root / "never-evaluated")
    return root


def test_rql_report_of_a_sweep_folder(sweep, tmp_path):
    out = {kind: tmp_path / f"report.{kind}" for kind in ("json", "csv", "md")}
    result = invoke("report", str(sweep), "--json", str(out["json"]), "--csv", str(out["csv"]), "--markdown",
                    str(out["md"]), "--reps", "2000")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Student t 95% interval over the task's seeds" in text and "stratified bootstrap" in text
    assert "never-evaluated" in text  # named as left out
    payload = json.loads(out["json"].read_text())
    groups = {g["group"]: g for g in payload["groups"]}
    assert set(groups) == {"cube-single alpha=3.0", "cube-single alpha=10.0"}  # grouped by what differs
    for alpha, tasks in SCORES.items():
        group = groups[f"cube-single alpha={alpha}"]
        matrix = list(tasks.values())
        assert group["iqm"] == pytest.approx(stats.iqm(matrix)) and group["mean"] == pytest.approx(stats.mean(matrix))
        assert group["iqm_ci95"] == pytest.approx(list(stats.stratified_bootstrap(stats.iqm, matrix, reps=2000)[1]))
        assert (group["tasks"], group["runs"]) == (2, 6)
    rows = {(t["group"], t["env_id"]): t for t in payload["tasks"]}
    task1 = rows[("cube-single alpha=3.0", "cube-single-play-singletask-task1-v0")]
    assert task1["mean"] == pytest.approx(0.9) and task1["seeds"] == [0, 1, 2] and task1["step"] == 2
    (improvement,) = payload["improvements"]
    assert improvement["x"] == "cube-single alpha=10.0" and improvement["probability"] == pytest.approx(
        stats.probability_of_improvement(list(SCORES[10.0].values()), list(SCORES[3.0].values())))
    with open(out["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == 4 + 2 * 2  # 4 task rows, iqm and mean of 2 groups
    assert "| cube-single alpha=3.0 | 2 | 6 |" in out["md"].read_text()
    assert (sweep / "report.png").stat().st_size > 10_000


def test_rql_report_refuses_what_it_cannot_read(tmp_path, tiny_run_dir):
    assert_refused(invoke("report", str(tmp_path / "nowhere")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_refused(invoke("report", str(tmp_path / "empty")), "holds no run folder")
    assert_refused(invoke("report", str(tiny_run_dir)), "has been evaluated", "--eval-episodes")
