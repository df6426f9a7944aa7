"""The training loop: resume equivalence, NaN handling, the run folder it writes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rql_cli.config import RunConfig
from rql_cli.errors import NonFiniteLossError
from rql_cli.io.checkpoint_meta import read_meta
from rql_cli.io.run_checkpoints import list_checkpoints
from rql_cli.training.offline import DataSpec, train

TINY = dict(
    actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=3, flow_steps=4,
    horizon=3, batch_size=16, eval_episodes=0, log_interval=2, device="cpu",
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(folder / "velocity.safetensors")), **load_file(str(folder / "value.safetensors"))}


def test_n_steps_then_resume_n_steps_equals_2n_steps(tiny_dataset_dir, tmp_path):
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    first = train(RunConfig.of(**TINY, steps=6), data, tmp_path / "split")
    assert first.step == 6
    resumed = train(RunConfig.of(**TINY, steps=12), data, tmp_path / "split", resume=True)
    whole = train(RunConfig.of(**TINY, steps=12), data, tmp_path / "whole")
    a, b = weights(resumed.last_checkpoint), weights(whole.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The logs of the resumed run hold each step once.
    rows = read_csv(tmp_path / "split" / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8, 10, 12]
    # Its clock goes on across the resume: wall_time counts the run's training seconds, not the session's.
    clock = [float(row["wall_time"]) for row in rows]
    assert clock == sorted(clock) and clock[3] > clock[2] > 0
    # And the weights did move: training happened.
    start = weights(list_checkpoints(tmp_path / "split")[0])
    assert any(not torch.equal(start[k], a[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset_dir, tmp_path):
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        shutil.copy(tiny_dataset_dir / name, tmp_path / name)
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tmp_path))
    run = tmp_path / "run"
    train(RunConfig.of(**TINY, steps=4), data, run)
    good = weights(list_checkpoints(run)[-1])
    # NaN data is refused at load now, so the loss is driven to infinity with finite, huge observations.
    arrays = dict(np.load(tmp_path / "cube-single-play-v0.npz"))
    arrays["observations"][:] = 3e38
    np.savez_compressed(tmp_path / "cube-single-play-v0.npz", **arrays)
    with pytest.raises(NonFiniteLossError) as info:
        train(RunConfig.of(**TINY, steps=8), data, run, resume=True)
    assert info.value.step == 5 and info.value.term == "value"
    assert "step 5" in str(info.value) and "'value'" in str(info.value)
    assert str(run / "checkpoints" / "step_00000004") in str(info.value)
    checkpoints = list_checkpoints(run)
    assert [p.name for p in checkpoints] == ["step_00000004"]
    kept = weights(checkpoints[-1])
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_training_writes_the_run_folder(tiny_dataset_dir, tmp_path):
    from rql_cli.io.run_record import read_run_record

    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    outcome = train(RunConfig.of(**{**TINY, "eval_episodes": 1, "eval_interval": 4}, steps=4), data, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("train_config.json", "metrics.csv", "eval.csv", "curves.png"):
        assert (run / name).is_file(), name
    record = read_run_record(run)
    assert record.dataset == "cube-single-play-v0" and record.obs_dim == 28
    checkpoint = outcome.last_checkpoint
    meta, _ = read_meta(checkpoint)
    assert meta.step == 4 and meta.env_id == "cube-single-play-singletask-v0"
    assert {"rql", "torch", "ogbench"} <= set(meta.versions)
    assert meta.success_timing in ("pre", "post")
    metrics = json.loads((checkpoint / "metrics.json").read_text())["tasks"][0]
    assert metrics["episodes"] == 1 and len(metrics["seeds"]) == 1
    # The one episode's own record decides its success: cube-single pays -1 a step until the cube is
    # placed and 0 on the step that finds it placed, which ends the episode; so its return and length
    # tell success apart from the flag. The rate, its interval, metrics.json and eval.csv follow it.
    last = outcome.last_eval
    [success], [length], [episode_return] = last.successes, last.lengths, last.returns
    assert episode_return == -(length - int(success)), last
    assert length <= last.max_episode_steps and (success or length == last.max_episode_steps)
    assert last.success_rate == float(success) and last.mean_return == episode_return
    assert last.success_ci95 == pytest.approx((0.20654, 1.0) if success else (0.0, 0.79346), abs=1e-5)
    assert {k: metrics[k] for k in ("success_rate", "successes", "lengths", "returns", "seeds")} == {
        k: getattr(last, k) for k in ("success_rate", "successes", "lengths", "returns", "seeds")
    }
    [row] = read_csv(run / "eval.csv")
    assert (int(row["step"]), float(row["success_rate"]), int(row["episodes"])) == (4, float(success), 1)


def test_a_run_builds_one_env_for_its_relabelling_its_start_check_and_every_evaluation(
    tiny_dataset_dir, tmp_path, monkeypatch
):
    """An OGBench env costs about a second to build: the env the evaluations step is built once, relabels
    the dataset's rewards, serves the start-up size check and every evaluation, and each evaluation
    measures what a fresh env would (same episodes)."""
    import rql_cli.data.sources as sources_module
    import rql_cli.envs.evaluate as evaluate_module

    built = []
    for module in (evaluate_module, sources_module):  # every route to an OGBench env in a run
        real = module.make_eval_env
        monkeypatch.setattr(module, "make_eval_env",
                            lambda *args, real=real, **kwargs: built.append(args) or real(*args, **kwargs))
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    config = RunConfig.of(**{**TINY, "eval_episodes": 2, "eval_interval": 2, "eval_envs": 1}, steps=6)
    train(config, data, tmp_path / "kept")
    assert len(built) == 1
    kept_rows = read_csv(tmp_path / "kept" / "eval.csv")

    import rql_cli.training.session as session

    monkeypatch.setattr(session, "KeptEnvs", _FreshEnvs)  # the same run on fresh envs each time
    built.clear()
    train(config, data, tmp_path / "fresh")
    assert len(built) == 5  # the relabelling, the check, then 3 evaluations
    fresh_rows = read_csv(tmp_path / "fresh" / "eval.csv")
    columns = ("step", "success_rate", "mean_return")
    assert [[r[c] for c in columns] for r in kept_rows] == [[r[c] for c in columns] for r in fresh_rows]
    assert len(kept_rows) == 3
    columns = ("step", "value", "target_mean", "total")
    losses = [[{c: row[c] for c in columns} for row in read_csv(tmp_path / run / "metrics.csv")]
              for run in ("kept", "fresh")]
    assert losses[0] == losses[1]  # the same targets: rewards relabelled alike in a kept env and a fresh one


class _FreshEnvs:
    """KeptEnvs that keeps nothing: every call builds its envs anew and closes them after."""

    def __init__(self):
        from rql_cli.envs.evaluate import KeptEnvs

        self.inner = KeptEnvs()

    def get(self, *args):
        self.inner.close()
        return self.inner.get(*args)

    def dims(self, *args):
        dims = self.inner.dims(*args)
        self.inner.close()
        return dims

    def in_process_env(self, *args):
        return None  # nothing kept to lend

    def drop(self, vector_env):
        self.inner.drop(vector_env)

    def close(self):
        self.inner.close()


def test_resume_finds_the_data_from_anywhere_and_refuses_another_file(tiny_dataset_dir, tmp_path, monkeypatch):
    from rql_cli.errors import DatasetError
    from rql_cli.io.run_record import read_run_record

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, data_dir)
    monkeypatch.chdir(tmp_path)
    train(RunConfig.of(**TINY, steps=2), DataSpec(name="cube-single-play-v0", dataset_dir="data"), tmp_path / "run")
    record = read_run_record(tmp_path / "run")
    assert record.data["dataset_dir"] == str(data_dir.resolve())  # absolute, not as typed
    assert record.data["fingerprint"]["size"] == (data_dir / "cube-single-play-v0.npz").stat().st_size

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = DataSpec(name=record.dataset, **record.data)
    assert train(RunConfig.of(**TINY, steps=3), spec, tmp_path / "run", resume=True).step == 3

    arrays = dict(np.load(data_dir / "cube-single-play-v0.npz"))
    arrays["actions"] = arrays["actions"] * 0.5
    np.savez_compressed(data_dir / "cube-single-play-v0.npz", **arrays)
    with pytest.raises(DatasetError, match="another file") as info:
        train(RunConfig.of(**TINY, steps=4), spec, tmp_path / "run", resume=True)
    assert record.data["fingerprint"]["sha256"][:16] in str(info.value)


def test_a_failing_periodic_evaluation_still_saves_the_checkpoint_of_its_step(tiny_dataset_dir, tmp_path, monkeypatch):
    import rql_cli.training.session as session
    from rql_cli.errors import RQLError

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer fell over")

    monkeypatch.setattr(session, "evaluate_agent", broken)
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    config = RunConfig.of(**{**TINY, "eval_episodes": 1, "eval_interval": 3}, steps=6)
    with pytest.raises(RQLError, match="evaluation at this step failed .*the renderer fell over.*step_00000003") as info:
        train(config, data, tmp_path / "run")
    assert "rql train --resume" in str(info.value)
    saved = list_checkpoints(tmp_path / "run")
    assert [p.name for p in saved] == ["step_00000003"] and (saved[0] / "train_state.safetensors").is_file()


@pytest.mark.warm_compile
def test_a_compiled_run_records_its_runtime_and_trains_what_an_eager_run_trains(tiny_dataset_dir, tmp_path):
    from tests.test_fast_path import SHARED_SETTINGS

    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    settings = {**TINY, **SHARED_SETTINGS}  # the suite's one compiled graph (on one thread): compiled once a session
    before = torch.get_num_threads()
    try:
        fast = train(RunConfig.of(**settings, steps=4, compile="on", threads=1), data, tmp_path / "fast")
        plain = train(RunConfig.of(**settings, steps=4, compile="off"), data, tmp_path / "plain")
    finally:
        torch.set_num_threads(before)
    runtime = json.loads((tmp_path / "fast" / "train_config.json").read_text())["history"][0]["runtime"]
    assert runtime["compile"]["mode"] == "default" and runtime["compile"]["seconds"] > 0
    assert runtime["threads"]["threads"] == 1 and not runtime["threads"]["adaptive"]
    plain_runtime = json.loads((tmp_path / "plain" / "train_config.json").read_text())["history"][0]["runtime"]
    assert plain_runtime["compile"]["mode"] is None
    a, b = weights(fast.last_checkpoint), weights(plain.last_checkpoint)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
