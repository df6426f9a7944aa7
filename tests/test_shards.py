"""Shard folders (the 100M-transition sets): generation, rotation, memory bound, resume."""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rql_cli.cli.app import app
from rql_cli.config import RunConfig
from rql_cli.data.generate import (
    Generation,
    generate_dataset,
    generate_shards,
    size_tag,
)
from rql_cli.data.shards import ShardRotation, list_shards, npz_shapes
from rql_cli.data.sources import DataSpec, ShardLoader, resolve_dataset_path
from rql_cli.errors import DatasetError, DatasetNotFoundError
from rql_cli.io.run_record import read_run_record
from rql_cli.names import parse_task_name
from rql_cli.training.offline import train

NAME = "cube-single-play-v0"
TINY = dict(
    actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=2, flow_steps=4,
    horizon=3, batch_size=16, eval_episodes=0, log_interval=5, device="cpu", compile="off",
)


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    """5 train episodes of 41 rows in shards of 2 (3 shards, the last holding one episode)."""
    out = tmp_path_factory.mktemp("shards")
    shards = generate_shards(Generation(NAME, out, num_episodes=5, seed=3, episode_length=41), shard_size=2)
    return shards[0].parent


def test_generated_folder_is_laid_out_like_the_official_sets_and_splits_the_single_file(shard_folder, tmp_path):
    assert shard_folder.name == "cube-single-play-200-v0"  # 5 episodes x 40 transitions
    shards = list_shards(shard_folder)
    assert [p.name for p in shards] == [f"{NAME}-{i:03d}.npz" for i in range(3)]
    assert all(p.with_name(p.name.replace(".npz", "-val.npz")).is_file() for p in shards)
    rows = [npz_shapes(p)["observations"][0][0] for p in shards]
    assert rows == [82, 82, 41]
    # The shards of a seed are the single file of that seed, cut at episode boundaries.
    single = generate_dataset(Generation(NAME, tmp_path, num_episodes=5, num_val_episodes=1, seed=3, episode_length=41))[0]
    with np.load(single) as whole:
        for key in ("observations", "actions", "terminals", "qpos"):
            parts = [np.load(p)[key] for p in shards]
            np.testing.assert_array_equal(np.concatenate(parts), whole[key])
    assert size_tag(100_000_000) == "100m" and size_tag(10**9) == "1b" and size_tag(1234) == "1234"


def test_a_folder_is_found_as_a_path_or_as_the_dataset_dir(shard_folder, tmp_path):
    assert resolve_dataset_path(NAME, None, shard_folder) == shard_folder
    assert resolve_dataset_path(NAME, shard_folder, None) == shard_folder
    # A sized name (like the official puzzle-4x4-play-100m-v0) is the folder of that name in --dataset-dir.
    sized = parse_task_name("cube-single-play-200-v0")
    assert (sized.dataset_name, sized.size, sized.env_id()) == (NAME, "200", "cube-single-play-singletask-v0")
    assert resolve_dataset_path("cube-single-play-200-v0", shard_folder.parent, None) == shard_folder
    with pytest.raises(DatasetNotFoundError, match="no shard folder at .*cube-single-play-100m-v0"):
        resolve_dataset_path("cube-single-play-100m-v0", tmp_path, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no .npz shards"):
        resolve_dataset_path(NAME, None, tmp_path / "empty")
    (tmp_path / "empty" / f"{NAME}.npz").write_bytes((shard_folder / f"{NAME}-000.npz").read_bytes())
    with pytest.raises(DatasetNotFoundError, match="not shards.*--dataset-dir"):  # a single-file folder
        resolve_dataset_path(NAME, None, tmp_path / "empty")
    # A --dataset-dir of other datasets' files is not a shard folder of a dataset it lacks: "not found",
    # never another dataset's file (a folder of cube-single files asked for cube-double loaded them).
    with pytest.raises(DatasetNotFoundError, match="'cube-double-play-v0' not found.*--dataset-path FOLDER"):
        resolve_dataset_path("cube-double-play-v0", tmp_path / "empty", None)
    assert resolve_dataset_path("cube-double-play-v0", None, tmp_path / "empty") == tmp_path / "empty"  # told so


@pytest.mark.parametrize("prefetch", [True, False])
def test_rotation_visits_every_shard_in_turn_holding_at_most_two(shard_folder, prefetch):
    loader = ShardLoader("cube-single-play-singletask-v0", sparse_rewards=False, device="cpu")
    seen_while_loading = []
    swaps = []
    rotation: ShardRotation | None = None
    # Weak references to the arrays of every shard ever loaded: what is really held in memory, whatever
    # the rotation's own bookkeeping says.
    loaded: list[list[weakref.ref]] = []
    alive_while_loading = []

    def alive(limit: int = 0) -> int:
        count = lambda: sum(any(ref() is not None for ref in refs) for refs in loaded)  # noqa: E731
        if count() > limit:
            gc.collect()  # only reference cycles outlive their last reference; clear them before judging
        return count()

    def load(path: Path):
        if rotation is not None:
            seen_while_loading.append((threading.current_thread().name, rotation.resident))
        alive_while_loading.append(alive(limit=1))
        dataset = loader.load(path)
        loaded.append([weakref.ref(getattr(dataset, f.name)) for f in dataclasses.fields(dataset)])
        return dataset

    rotation = ShardRotation(list_shards(shard_folder), load, horizon=3, swap_every=4, prefetch=prefetch,
                             on_swap=swaps.append)
    residents, alive_after_step = [], []
    with rotation:
        for step in range(30):
            sampler = rotation.sampler(step)
            residents.append(rotation.resident)
            assert rotation.current == (step // 4) % 3
            # The sampler samples the shard it says: its rows are that file's rows (last row of each
            # episode dropped by ogbench's loader).
            with np.load(rotation.shards[rotation.current]) as file:
                keep = ~file["terminals"].astype(bool)
                np.testing.assert_array_equal(sampler.dataset.observations.numpy(), file["observations"][keep])
            sampler.sample(8, torch.Generator().manual_seed(step))
            del sampler  # the test holds no shard between steps
            alive_after_step.append(alive(limit=2))
    assert max(len(r) for r in residents) <= 2
    assert len(loaded) >= 8  # 8 swaps in 30 steps (and maybe the read-ahead after the last)
    # At most the current shard while another is read (so two with it), and two between steps.
    assert max(alive_while_loading) <= 1, alive_while_loading
    assert max(alive_after_step) <= 2, alive_after_step
    assert alive() == 0  # closing the rotation lets go of every shard
    assert max(len(r) for _, r in seen_while_loading) <= 2
    assert [s.shard for s in swaps] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert [s.step for s in swaps] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert all(s.file == rotation.shards[s.shard].name for s in swaps)
    threads = {name for name, _ in seen_while_loading}
    if prefetch:  # the following shard is read in the background thread
        assert any(name.startswith("rql-shard") for name in threads)
        assert all(s.wait_seconds <= s.load_seconds + 0.05 for s in swaps[1:])
    else:
        assert threads == {"MainThread"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(folder / "velocity.safetensors")), **load_file(str(folder / "value.safetensors"))}


def test_training_on_shards_resumes_on_the_right_shard_bit_for_bit(shard_folder, tmp_path):
    data = DataSpec(name=NAME, dataset_path=str(shard_folder))
    config = dict(TINY, shard_swap_every=3)
    train(RunConfig.of(**config, steps=7), data, tmp_path / "split")
    resumed = train(RunConfig.of(**config, steps=14), data, tmp_path / "split", resume=True)
    whole = train(RunConfig.of(**config, steps=14), data, tmp_path / "whole")
    a, b = _weights(resumed.last_checkpoint), _weights(whole.last_checkpoint)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    split_rows = (tmp_path / "split" / "shards.csv").read_text().splitlines()
    whole_rows = (tmp_path / "whole" / "shards.csv").read_text().splitlines()
    used = [(r.split(",")[0], r.split(",")[1]) for r in split_rows[1:]]
    # Steps 0-2 shard 0, 3-5 shard 1, 6-8 shard 2, ...; the resume at step 7 reloads shard 2 there.
    assert used == [("0", "0"), ("3", "1"), ("6", "2"), ("7", "2"), ("9", "0"), ("12", "1")]
    assert [r.split(",")[:2] for r in whole_rows[1:]] == [["0", "0"], ["3", "1"], ["6", "2"], ["9", "0"], ["12", "1"]]
    record = json.loads((tmp_path / "whole" / "train_config.json").read_text())
    assert record["data"]["fingerprint"]["shards"] == 3
    assert record["config"]["shard_swap_every"] == 3


def test_resume_refuses_a_folder_whose_shards_changed(shard_folder, tmp_path):
    import shutil

    folder = tmp_path / shard_folder.name
    shutil.copytree(shard_folder, folder)
    data = DataSpec(name=NAME, dataset_path=str(folder))
    train(RunConfig.of(**TINY, steps=2), data, tmp_path / "run")
    shutil.copy(folder / f"{NAME}-000.npz", folder / f"{NAME}-002.npz")  # another shard, another size
    record = read_run_record(tmp_path / "run")
    with pytest.raises(DatasetError, match="another file"):
        train(RunConfig.of(**TINY, steps=4), DataSpec(name=record.dataset, **record.data), tmp_path / "run", resume=True)


def test_cli_generates_a_shard_folder_and_trains_on_it(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "generate", NAME, "--episodes", "3", "--shard-size", "1",
                                 "--episode-length", "21", "--workers", "1", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cube-single-play-60-v0"
    assert f"--dataset-path {folder}" in result.output.replace("\n", "")
    result = runner.invoke(app, ["train", "--dataset", NAME, "--dataset-dir", str(folder), "--steps", "6",
                                 "--shard-swap-every", "2", "--eval-episodes", "0", "--device", "cpu",
                                 "--set", "actor_hidden_dims=[16]", "--set", "value_hidden_dims=[16]",
                                 "--set", "ensemble_size=2", "--set", "batch_size=4", "--set", "compile=off",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "3 shards in turn, 2 steps each" in " ".join(result.output.split())
    rows = (tmp_path / "run" / "shards.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["0", "1", "2"]
    info = runner.invoke(app, ["data", "info", NAME, "--dataset-dir", str(folder)])
    assert info.exit_code == 0, info.output
    assert "3 shards, 60 transitions in 3 episodes" in " ".join(info.output.split())
    again = runner.invoke(app, ["data", "generate", NAME, "--episodes", "3", "--shard-size", "1",
                                "--episode-length", "21", "--workers", "1", "--out", str(tmp_path), "-q"])
    assert again.exit_code == 1 and "already holds shards" in again.output


def _copy_with(source: Path, target: Path, change) -> None:
    """Copy a dataset pair to ``target`` with ``change(arrays)`` applied to the training file."""
    target.mkdir()
    with np.load(source / f"{NAME}.npz") as file:
        arrays = {k: file[k] for k in file.files}
    change(arrays)
    np.savez_compressed(target / f"{NAME}.npz", **arrays)
    (target / f"{NAME}-val.npz").write_bytes((source / f"{NAME}-val.npz").read_bytes())


def test_verify_passes_a_generated_set_and_names_the_field_of_a_corrupted_copy(tiny_dataset_dir, shard_folder, tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["data", "verify", NAME, "--dataset-dir", str(tiny_dataset_dir)])
    assert good.exit_code == 0, good.output
    assert "All checks passed" in good.output and "episode length" in good.output  # 101 rows: a note
    # One env serves the five tasks (its reward task switched): each task's rate is its own env's
    # relabelling. Task 5 is solved in this set and task 1 never, so an unswitched env shows up.
    printed = {int(m[1]): float(m[2]) for m in re.finditer(r"│\s+(\d)\s+│\s+([\d.]+)%", good.output)}
    from ogbench.utils import load_dataset, relabel_dataset

    from rql_cli.envs.make import make_eval_env

    arrays = load_dataset(str(tiny_dataset_dir / f"{NAME}.npz"), compact_dataset=False, add_info=True)
    parsed = parse_task_name(NAME)
    for task in (1, 5):
        env = make_eval_env(parsed, task)
        try:
            relabel_dataset(parsed.gym_id(task), env, arrays)
        finally:
            env.close()
        assert printed[task] == round(100 * float((arrays["masks"] == 0).mean()), 2), (task, printed)
    assert printed[5] > 0 == printed[1]
    shards = runner.invoke(app, ["data", "verify", NAME, "--dataset-path", str(shard_folder), "--json"])
    assert shards.exit_code == 0, shards.output
    payload = json.loads(shards.output)
    assert payload["passed"] and len({c["file"] for c in payload["checks"]}) == 6  # 3 shards, 3 val files
    assert set(payload["solve_rates"]) == {"1", "2", "3", "4", "5"}

    def scale_actions(arrays):
        arrays["actions"] = arrays["actions"] * 3

    def drop_qpos(arrays):
        del arrays["qpos"]

    def nan_observation(arrays):
        arrays["observations"][57, 3] = np.nan

    def tear_an_episode(arrays):
        arrays["terminals"][150] = True

    def wrong_env(arrays):
        arrays["observations"] = arrays["observations"][:, :20]

    cases = [(scale_actions, "actions range", "[-3"), (drop_qpos, "keys", "missing qpos"),
             (nan_observation, "observations finite", "first in row 57"),
             (tear_an_episode, "episode length", "rows"), (wrong_env, "observations shape", "20")]
    for change, field, found in cases:
        folder = tmp_path / change.__name__
        _copy_with(tiny_dataset_dir, folder, change)
        result = runner.invoke(app, ["data", "verify", NAME, "--dataset-dir", str(folder), "--json"])
        assert result.exit_code == 1, (change.__name__, result.output)
        failed = [c for c in json.loads(result.output)["checks"] if c["status"] == "fail"]
        assert [c["field"] for c in failed] == [field], (change.__name__, failed)
        assert found in failed[0]["found"]
