"""Tests for rql_cli.data.generate and its parts (recipes, oracle, workers, episode cache): seeded,
parallel, resumable OGBench dataset generation.

Episodes are kept short (``episode_length=LENGTH``) so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from rql_cli.data import oracle
from rql_cli.data.generate import Generation, generate_dataset
from rql_cli.data.recipes import GENERATABLE
from rql_cli.errors import RQLError, UnknownNameError

NAME = "cube-single-play-v0"
LENGTH = 40  # steps per episode in these tests (the official sets use 1001)
SMALL = dict(num_episodes=2, num_val_episodes=1, episode_length=LENGTH)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as file:
        return {k: file[k] for k in file.files}


def _assert_same_arrays(a: Path, b: Path) -> None:
    x, y = _load(a), _load(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        assert x[k].tobytes() == y[k].tobytes(), k


@pytest.fixture(scope="module")
def seed0(tmp_path_factory) -> tuple[list[Path], list[tuple[int, int]]]:
    """cube-single, seed 0, one in-process worker; also the progress calls it made."""
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("seed0")

    def record(done: int, total: int) -> None:
        calls.append((done, total))

    paths = generate_dataset(Generation(NAME, out, seed=0, workers=1, on_episode=record, **SMALL))
    return paths, calls


def test_writes_train_and_val_files_and_reports_each_episode(seed0):
    (train, val), calls = seed0
    assert train.name == "cube-single-play-v0.npz" and val.name == "cube-single-play-v0-val.npz"
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert not (train.parent / f".{NAME}.partial").exists()  # the resume cache is gone after success


def test_file_layout_matches_the_official_format(seed0):
    (train, val), _ = seed0
    data = _load(train)
    assert set(data) == {"observations", "actions", "terminals", "qpos", "qvel"}  # cube: no button_states
    n = 2 * LENGTH
    assert data["observations"].shape == (n, 28) and data["observations"].dtype == np.float32
    assert data["actions"].shape == (n, 5) and data["actions"].dtype == np.float32
    assert np.all(np.abs(data["actions"]) <= 1.0)
    assert data["terminals"].dtype == bool
    assert np.flatnonzero(data["terminals"]).tolist() == [LENGTH - 1, 2 * LENGTH - 1]
    assert data["qpos"].shape == (n, 21) and data["qvel"].shape == (n, 20)
    assert data["qpos"].dtype == np.float32 and data["qvel"].dtype == np.float32
    assert _load(val)["terminals"].sum() == 1


def test_qpos_is_the_state_before_the_step_like_the_observation(seed0):
    (train, _), _ = seed0
    data = _load(train)
    # The observation holds the cube centre as (xyz - (0.425, 0, 0)) * 10 at columns 19:22; the cube's
    # free joint starts at qpos[14]. A one-step shift would move the arm and break the match.
    cube_from_obs = data["observations"][:, 19:22] / 10.0 + np.array([0.425, 0.0, 0.0])
    np.testing.assert_allclose(cube_from_obs, data["qpos"][:, 14:17], atol=1e-5)
    np.testing.assert_allclose(data["observations"][:, :6], data["qpos"][:, :6], atol=1e-5)  # arm joints


def test_ogbench_loader_reads_the_files_and_relabels_rewards(seed0):
    import ogbench

    (train, _), _ = seed0
    env, train_set, val_set = ogbench.make_env_and_datasets(
        "cube-single-play-singletask-v0", dataset_path=str(train), compact_dataset=False
    )
    env.close()
    n = 2 * (LENGTH - 1)  # the loader drops each episode's last row
    assert train_set["observations"].shape == (n, 28)
    assert train_set["next_observations"].shape == (n, 28)
    assert train_set["actions"].shape == (n, 5)
    assert train_set["terminals"].sum() == 2 and train_set["terminals"][-1] == 1
    assert val_set["observations"].shape == (LENGTH - 1, 28)
    assert set(np.unique(train_set["rewards"])) <= {-1.0, 0.0}
    np.testing.assert_array_equal(train_set["masks"], -train_set["rewards"])  # mask 0 exactly where solved


def test_same_seed_gives_identical_arrays_with_one_or_two_workers(seed0, tmp_path):
    (train, val), _ = seed0
    calls: list[tuple[int, int]] = []

    def record(done: int, total: int) -> None:
        calls.append((done, total))

    paths = generate_dataset(Generation(NAME, tmp_path, seed=0, workers=2, on_episode=record, **SMALL))
    _assert_same_arrays(train, paths[0])
    _assert_same_arrays(val, paths[1])
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_each_episode_and_split_draws_its_own_scene(seed0):
    (train, val), _ = seed0
    episodes = np.split(_load(train)["observations"], 2) + [_load(val)["observations"]]
    assert not np.array_equal(episodes[0], episodes[1])
    assert not np.array_equal(episodes[0], episodes[2])
    assert not np.array_equal(episodes[1], episodes[2])


def test_new_oracle_is_reset_with_the_new_targets_info(tmp_path, monkeypatch):
    seen = []  # (target the oracle was told, target the env holds) at each oracle reset
    make_oracles = oracle.make_oracles

    def recording_oracles(env, recipe):
        oracles = make_oracles(env, recipe)
        cube = oracles["cube"]
        original_reset = cube.reset

        def reset(ob, info):
            mocap = env.unwrapped._cube_target_mocap_ids[info["privileged/target_block"]]
            actual = env.unwrapped._data.mocap_pos[mocap].copy()
            seen.append((info["privileged/target_block_pos"].copy(), actual))
            original_reset(ob, info)

        cube.reset = reset
        return oracles

    monkeypatch.setattr(oracle, "make_oracles", recording_oracles)
    generate_dataset(Generation(NAME, tmp_path, num_episodes=1, num_val_episodes=1, episode_length=200))
    assert len(seen) >= 4  # a first target and at least one new target per episode
    for told, actual in seen:
        np.testing.assert_array_equal(told, actual)


def test_different_seed_gives_different_episodes(seed0, tmp_path):
    (train, _), _ = seed0
    other = generate_dataset(Generation(NAME, tmp_path, seed=1, workers=1, **SMALL))[0]
    a, b = _load(train), _load(other)
    assert a["observations"].shape == b["observations"].shape
    assert not np.array_equal(a["observations"], b["observations"])
    assert not np.array_equal(a["actions"], b["actions"])


def test_refuses_to_overwrite_without_force(seed0, tmp_path):
    (train, val), _ = seed0
    for path in (train, val):
        shutil.copy(path, tmp_path / path.name)
    before = (tmp_path / train.name).read_bytes()
    with pytest.raises(RQLError, match="--force") as error:
        generate_dataset(Generation(NAME, tmp_path, seed=1, **SMALL))
    assert str(tmp_path / train.name) in str(error.value)
    assert (tmp_path / train.name).read_bytes() == before

    generate_dataset(Generation(NAME, tmp_path, seed=1, force=True, **SMALL))
    assert not np.array_equal(_load(tmp_path / train.name)["observations"], _load(train)["observations"])


def test_interrupted_generation_resumes_from_cached_episodes(seed0, tmp_path, monkeypatch):
    (train, val), _ = seed0

    class Interrupt(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate_dataset(Generation(NAME, tmp_path, seed=0, on_episode=stop_after_two, **SMALL))
    partial = tmp_path / f".{NAME}.partial"
    assert sorted(p.name for p in partial.glob("*.npz")) == ["train-000000.npz", "train-000001.npz"]
    assert not (tmp_path / train.name).exists()

    collected = []
    original = oracle.EpisodeCollector.collect

    def counting_collect(self, split, index):
        collected.append((split, index))
        return original(self, split, index)

    monkeypatch.setattr(oracle.EpisodeCollector, "collect", counting_collect)
    paths = generate_dataset(Generation(NAME, tmp_path, seed=0, **SMALL))
    assert collected == [("val", 0)]  # only the missing episode ran again
    _assert_same_arrays(train, paths[0])
    _assert_same_arrays(val, paths[1])
    assert not partial.exists()


def test_cache_from_another_seed_is_not_reused(seed0, tmp_path):
    (train, _), _ = seed0

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(Generation(NAME, tmp_path, seed=1, on_episode=stop, **SMALL))
    paths = generate_dataset(Generation(NAME, tmp_path, seed=0, **SMALL))
    _assert_same_arrays(train, paths[0])


def test_unknown_name_suggests_the_closest(tmp_path):
    with pytest.raises(UnknownNameError, match="cube-single-play-v0"):
        generate_dataset(Generation("cube-singel-play-v0", tmp_path, **SMALL))
    with pytest.raises(UnknownNameError, match="'cube-double-play-v0'"):
        generate_dataset(Generation("cube-double-play-singletask-task2-v0", tmp_path, **SMALL))
    assert not any(tmp_path.iterdir())


def test_rejects_an_empty_validation_split(tmp_path):
    with pytest.raises(RQLError, match="num_val_episodes"):
        generate_dataset(Generation(NAME, tmp_path, num_episodes=2, num_val_episodes=0, episode_length=LENGTH))


def test_table_covers_the_official_manipulation_sets():
    for name in ["cube-single-play-v0", "cube-double-play-v0", "scene-play-v0", "puzzle-3x3-play-v0"]:
        assert GENERATABLE[name].num_episodes == 1000 and GENERATABLE[name].num_val_episodes == 100
        assert GENERATABLE[name].oracle == "plan"
    assert GENERATABLE["cube-single-play-v0"].p_stack == (0.0, 0.0)
    assert GENERATABLE["cube-double-play-v0"].p_stack == (0.0, 0.25)
    assert GENERATABLE["scene-noisy-v0"].oracle == "markov"
    assert GENERATABLE["puzzle-4x4-noisy-v0"].p_random_action == 0.2


def test_table_has_both_dataset_types_of_every_manipulation_family():
    families = ["cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene",
                "puzzle-3x3", "puzzle-4x4", "puzzle-4x5", "puzzle-4x6"]  # fmt: skip
    assert sorted(GENERATABLE) == sorted(f"{family}-{kind}-v0" for family in families for kind in ("play", "noisy"))
    for family in families:
        play, noisy = GENERATABLE[f"{family}-play-v0"], GENERATABLE[f"{family}-noisy-v0"]
        assert play.env_id == noisy.env_id == f"{family}-v0"
        assert (play.oracle, play.p_random_action) == ("plan", 0.0)
        assert noisy.oracle == "markov" and noisy.p_random_action == (0.2 if family.startswith("puzzle") else 0.1)
        assert (play.num_episodes, play.p_stack) == (noisy.num_episodes, noisy.p_stack)
    assert GENERATABLE["cube-quadruple-noisy-v0"].num_episodes == 5000
    assert GENERATABLE["cube-triple-play-v0"].p_stack == (0.05, 0.35)


def test_a_task_name_is_answered_with_its_dataset_file(tmp_path):
    with pytest.raises(UnknownNameError, match="its dataset file is 'scene-noisy-v0'"):
        generate_dataset(Generation("scene-noisy-singletask-v0", tmp_path, **SMALL))
    # A locomotion task name is a real OGBench name, but no oracle in ogbench makes its data.
    with pytest.raises(UnknownNameError, match="'antmaze-large-navigate-v0' is an OGBench dataset that rql cannot generate"):
        generate_dataset(Generation("antmaze-large-navigate-singletask-v0", tmp_path, **SMALL))


def test_scene_rows_carry_integer_button_states_the_loader_accepts(tmp_path):
    import ogbench

    train, _ = generate_dataset(Generation(
        "scene-play-v0", tmp_path, num_episodes=1, num_val_episodes=1, episode_length=30
    ))
    data = _load(train)
    assert data["observations"].shape == (30, 40)
    assert data["button_states"].shape == (30, 2) and data["button_states"].dtype == np.int64
    assert set(np.unique(data["button_states"])) <= {0, 1}
    env, train_set, _ = ogbench.make_env_and_datasets(
        "scene-play-singletask-v0", dataset_path=str(train), compact_dataset=False
    )
    env.close()
    assert train_set["rewards"].shape == (29,)
    assert set(np.unique(train_set["rewards"])) <= {-5.0, -4.0, -3.0, -2.0, -1.0, 0.0}


def test_scene_check_flags_cubes_outside_the_view_but_not_in_the_drawer():
    def xyz(*point):
        return np.array([[point]], dtype=float)  # (T=1, cubes=1, 3)

    assert not oracle.cube_outside_view(xyz(0.4, 0.0, 0.02))  # on the table
    assert not oracle.cube_outside_view(xyz(0.33, -0.32, 0.07))  # inside the open drawer
    assert oracle.cube_outside_view(xyz(0.33, -0.32, 0.02))  # fell off the left edge
    assert oracle.cube_outside_view(xyz(0.4, 0.3, 0.02))  # past the right edge


def _spawned_children(pid: int) -> list[int]:
    """The multiprocessing workers among ``pid``'s children (Linux /proc)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in _read_or_empty(Path(f"/proc/{c}/cmdline"))]


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    stat = _read_or_empty(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from Linux /proc")
def test_workers_end_when_the_generation_is_killed(tmp_path):
    """A SIGKILL (or an unhandled SIGTERM) of `rql data generate` runs no cleanup; its idle workers
    used to wait on the pool's queue for ever."""
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "rql_cli", "data", "generate", "cube-single-play-v0", "--episodes", "40",
         "--val-episodes", "1", "--episode-length", "60", "--workers", "2", "--out", str(tmp_path), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = tmp_path / ".cube-single-play-v0.partial"
    deadline = time.monotonic() + 120
    while not list(cache.glob("train-*.npz")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # the workers have started and collect episodes
    workers = _spawned_children(process.pid)
    process.kill()
    process.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # leave no process behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert left == []
