"""OGBench names: parsing dataset and singletask names, default tasks, and what is refused."""

from __future__ import annotations

import pytest

from rql_cli.errors import RQLError, UnknownNameError
from rql_cli.names import TaskName, known_dataset_names, parse_task_name


@pytest.mark.parametrize(
    "name, task, env_id",
    [
        ("cube-single-play-v0", None, "cube-single-play-singletask-v0"),
        ("cube-single-play-singletask-v0", None, "cube-single-play-singletask-v0"),
        ("cube-single-play-singletask-task3-v0", 3, "cube-single-play-singletask-task3-v0"),
    ],
)
def test_parse_accepts_dataset_and_singletask_names(name, task, env_id):
    parsed = parse_task_name(name)
    assert parsed.dataset_name == "cube-single-play-v0"
    assert parsed.task == task
    assert parsed.env_id() == env_id
    assert parsed.env_id(4) == "cube-single-play-singletask-task4-v0"
    assert parsed.gym_id(4) == "cube-single-singletask-task4-v0"


@pytest.mark.parametrize(
    "name, default_task",
    [
        ("cube-double-play-v0", 2),
        ("scene-noisy-v0", 2),
        ("puzzle-3x3-play-v0", 4),
        ("puzzle-4x4-play-v0", 4),
        ("antmaze-large-navigate-v0", 1),
        ("humanoidmaze-medium-stitch-v0", 1),
        ("antsoccer-arena-navigate-v0", 4),
    ],
)
def test_default_task_per_family(name, default_task):
    parsed = parse_task_name(name)
    assert parsed.default_task == default_task
    assert parsed.resolve_task() == default_task


def test_explicit_task_wins_over_the_task_in_the_name():
    parsed = parse_task_name("scene-play-singletask-task5-v0")
    assert parsed.resolve_task() == 5
    assert parsed.resolve_task(1) == 1


def test_unknown_name_suggests_the_closest_and_how_to_list():
    with pytest.raises(UnknownNameError) as caught:
        parse_task_name("cube-singel-play-v0")
    message = str(caught.value)
    assert "'cube-single-play-v0'" in message
    assert "rql list" in message
    with pytest.raises(UnknownNameError, match="cube-double-play-v0"):
        parse_task_name("cube-duoble-play-singletask-task2-v0")


@pytest.mark.parametrize("name", ["hopper-medium-v2", "cube-single-v0", "cube-single-navigate-v0", ""])
def test_names_that_are_not_ogbench_datasets_are_rejected(name):
    with pytest.raises(UnknownNameError):
        parse_task_name(name)


@pytest.mark.parametrize("task", [0, 6])
def test_task_outside_one_to_five_is_rejected(task):
    with pytest.raises(RQLError, match="tasks 1 to 5"):
        parse_task_name("cube-single-play-v0").resolve_task(task)
    with pytest.raises(RQLError, match="tasks 1 to 5"):
        parse_task_name(f"cube-single-play-singletask-task{task}-v0")


def test_every_known_name_is_registered_by_ogbench():
    import gymnasium
    import ogbench  # noqa: F401

    for name in known_dataset_names():
        parsed = parse_task_name(name)
        for task in (None, 1, 5):
            assert parsed.gym_id(task) in gymnasium.registry, parsed.gym_id(task)


def test_every_env_has_tasks_one_to_five():
    assert parse_task_name("cube-single-play-v0").tasks == (1, 2, 3, 4, 5)
    assert TaskName("antmaze-large", "navigate").tasks == (1, 2, 3, 4, 5)


def test_parsing_a_parsed_name_returns_it_unchanged():
    parsed = parse_task_name("scene-noisy-singletask-task3-v0")
    assert parse_task_name(parsed) is parsed
