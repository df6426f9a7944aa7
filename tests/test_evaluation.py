"""Evaluating a loaded checkpoint: per-task results, seeding, the dims check before any episode."""

from __future__ import annotations

import pytest

from rql_cli.errors import CheckpointError
from rql_cli.evaluation import evaluate_checkpoint
from rql_cli.io.resolve import load_checkpoint


def test_each_task_is_reported_with_its_number_and_the_same_seed_repeats(tiny_run_dir):
    loaded = load_checkpoint(str(tiny_run_dir), "cpu")
    started = []
    report = evaluate_checkpoint(loaded, tasks=[None, 4], episodes=2, num_envs=1, seed=3,
                                 on_task_start=started.append)
    assert started == [2, 4] and [t.task for t in report.tasks] == [2, 4]
    assert [t.env_id for t in report.tasks] == [f"cube-single-play-singletask-task{n}-v0" for n in (2, 4)]
    assert (report.step, report.dataset, report.device) == (2, "cube-single-play-v0", "cpu")
    assert all(t.seeds == [3, 4] and t.episodes == 2 for t in report.tasks)
    again = evaluate_checkpoint(loaded, tasks=[None, 4], episodes=2, num_envs=1, seed=3)
    assert [t.returns for t in again.tasks] == [t.returns for t in report.tasks]


def test_a_checkpoint_that_does_not_fit_the_env_fails_before_any_episode(tiny_run_dir):
    loaded = load_checkpoint(str(tiny_run_dir), "cpu")
    episodes = []
    with pytest.raises(CheckpointError, match="expects observations of size 28.*gives observations of size 37"):
        evaluate_checkpoint(loaded, tasks=[None], episodes=1, num_envs=1, task_name="cube-double-play-v0",
                            on_episode=lambda *args: episodes.append(args))
    assert episodes == []
