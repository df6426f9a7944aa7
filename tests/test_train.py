"""Configuration, checkpoints, the training loop: round trips, resume equivalence, NaN handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rql_cli.config import FIELD_HELP, RQLConfig, field_names, make_config, parse_set_option
from rql_cli.errors import CheckpointError, ConfigError, NonFiniteLossError
from rql_cli.io.checkpoint import CheckpointMeta, load_agent, read_meta, save_checkpoint
from rql_cli.io.run_files import list_checkpoints
from rql_cli.train import DataSpec, train

TINY = dict(
    actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=3, flow_steps=4,
    horizon=3, batch_size=16, eval_episodes=0, log_interval=2, device="cpu",
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_json_round_trip_keeps_every_field():
    config = RQLConfig(alpha=3.0, value_hidden_dims=[256, 128], sparse_rewards=True, device="cuda:1")
    restored, unknown = RQLConfig.from_json(config.to_json())
    assert restored == config and unknown == []


def test_every_field_has_help_text():
    assert set(FIELD_HELP) == set(field_names())


def test_presets_follow_the_dataset_name_and_set_overrides_win():
    config = make_config("puzzle-3x3-play-singletask-task2-v0")
    assert (config.alpha, config.expectile, config.rho, config.horizon) == (1.0, 0.7, 0.5, 5)
    assert config.sparse_rewards
    config = make_config("cube-double-play-v0", overrides=dict(alpha=2.5))
    assert (config.alpha, config.expectile) == (2.5, 0.9)
    config = make_config("cube-double-play-v0", preset="humanoidmaze-large")
    assert (config.discount, config.horizon, config.rho) == (0.995, 1, 0.0)


def test_set_option_parses_json_and_checks_types():
    assert parse_set_option("value_hidden_dims=[256,256]") == ("value_hidden_dims", [256, 256])
    assert parse_set_option("alpha=3") == ("alpha", 3.0)
    assert parse_set_option("device=cuda:1") == ("device", "cuda:1")
    assert parse_set_option("sparse_rewards=true") == ("sparse_rewards", True)
    with pytest.raises(ConfigError, match="horizon.*integer"):
        parse_set_option("horizon=1.5")
    with pytest.raises(ConfigError, match="alpha.*number"):
        parse_set_option("alpha=true")
    with pytest.raises(ConfigError, match="Did you mean 'expectile'"):
        parse_set_option("expectle=0.9")
    with pytest.raises(ConfigError, match="list of ints"):
        parse_set_option("actor_hidden_dims=[256, 'a']")
    with pytest.raises(ConfigError, match="expectile must lie"):
        make_config("cube-single-play-v0", overrides=dict(expectile=1.5))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def make_meta(config: RQLConfig, step: int = 7) -> CheckpointMeta:
    return CheckpointMeta(
        config=config, dataset="cube-single-play-v0", env_id="cube-single-play-singletask-v0",
        obs_dim=28, action_dim=5, step=step,
    )


def test_checkpoint_round_trip_restores_every_tensor(tmp_path):
    from rql_cli.core.rql import RQLAgent

    torch.manual_seed(0)
    config = RQLConfig(**TINY)
    agent = RQLAgent(config, 28, 5, torch.device("cpu"))
    with torch.no_grad():
        for p in agent.value_target.parameters():
            p.add_(1.0)  # targets differ from online nets and must come back as saved
    folder = save_checkpoint(tmp_path / "ckpt", agent, make_meta(config))
    loaded, meta = load_agent(folder)
    assert meta.step == 7 and meta.config == config
    for name in ("velocity", "velocity_target", "value", "value_target"):
        for (key, a), b in zip(getattr(agent, name).state_dict().items(), getattr(loaded, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    assert not (folder / "train_state.safetensors").exists()  # only with generators
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def saved_tiny_checkpoint(tmp_path: Path) -> Path:
    """A freshly initialised TINY agent saved as tmp_path/ckpt."""
    from rql_cli.core.rql import RQLAgent

    config = RQLConfig(**TINY)
    return save_checkpoint(tmp_path / "ckpt", RQLAgent(config, 28, 5, torch.device("cpu")), make_meta(config))


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    data = (folder / "value.safetensors").read_bytes()
    (folder / "value.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="value.safetensors.*truncated or corrupt"):
        load_agent(folder)
    (folder / "value.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing value.safetensors"):
        load_agent(folder)


def test_checkpoint_from_a_newer_format_is_refused_and_unknown_fields_warn(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    payload = json.loads((folder / "config.json").read_text())
    payload["config"]["from_the_future"] = 1
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="from_the_future"):
        read_meta(folder)
    payload["format_version"] = 99
    payload["versions"]["rql"] = "9.0.0"
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="format_version 99, written by rql 9.0.0"):
        read_meta(folder)


def test_checkpoint_with_other_network_dims_names_both_shapes(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    payload = json.loads((folder / "config.json").read_text())
    payload["obs_dim"] = 37
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"shape \(.*\) but config.json describes"):
        load_agent(folder)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(folder / "velocity.safetensors")), **load_file(str(folder / "value.safetensors"))}


def test_n_steps_then_resume_n_steps_equals_2n_steps(tiny_dataset_dir, tmp_path):
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    first = train(RQLConfig(**TINY, steps=6), data, tmp_path / "split")
    assert first.step == 6
    resumed = train(RQLConfig(**TINY, steps=12), data, tmp_path / "split", resume=True)
    whole = train(RQLConfig(**TINY, steps=12), data, tmp_path / "whole")
    a, b = weights(resumed.last_checkpoint), weights(whole.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The logs of the resumed run hold each step once.
    steps = [int(row.split(",")[0]) for row in (tmp_path / "split" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10, 12]
    # And the weights did move: training happened.
    start = weights(list_checkpoints(tmp_path / "split")[0])
    assert any(not torch.equal(start[k], a[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset_dir, tmp_path):
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        shutil.copy(tiny_dataset_dir / name, tmp_path / name)
    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tmp_path))
    run = tmp_path / "run"
    train(RQLConfig(**TINY, steps=4), data, run)
    good = weights(list_checkpoints(run)[-1])
    arrays = dict(np.load(tmp_path / "cube-single-play-v0.npz"))
    arrays["observations"][:] = np.nan
    np.savez_compressed(tmp_path / "cube-single-play-v0.npz", **arrays)
    with pytest.raises(NonFiniteLossError) as info:
        train(RQLConfig(**TINY, steps=8), data, run, resume=True)
    assert info.value.step == 5 and info.value.term == "value"
    assert "step 5" in str(info.value) and "'value'" in str(info.value)
    assert str(run / "checkpoints" / "step_00000004") in str(info.value)
    checkpoints = list_checkpoints(run)
    assert [p.name for p in checkpoints] == ["step_00000004"]
    kept = weights(checkpoints[-1])
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_training_writes_the_run_folder(tiny_dataset_dir, tmp_path):
    from rql_cli.io.run_files import read_run_record

    data = DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir))
    outcome = train(RQLConfig(**{**TINY, "eval_episodes": 1, "eval_interval": 4}, steps=4), data, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "eval.csv", "curves.png"):
        assert (run / name).is_file(), name
    record = read_run_record(run)
    assert record["dataset"] == "cube-single-play-v0" and record["obs_dim"] == 28
    checkpoint = outcome.last_checkpoint
    meta, _ = read_meta(checkpoint)
    assert meta.step == 4 and meta.env_id == "cube-single-play-singletask-v0"
    assert {"rql", "torch", "ogbench"} <= set(meta.versions)
    assert meta.success_timing in ("pre", "post")
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert metrics["episodes"] == 1 and len(metrics["seeds"]) == 1
    assert outcome.last_eval["success_rate"] in (0.0, 1.0)
