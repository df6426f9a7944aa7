"""Bundled checkpoints: listed by name with their scores; a broken one never hides the others."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from rql_cli.cli.app import app
from rql_cli.io.bundled import bundled_checkpoint_folders, bundled_checkpoints


def test_listing_survives_broken_folders_and_names_the_problem(tiny_run_dir, tmp_path, monkeypatch):
    source = tiny_run_dir / "checkpoints" / "step_00000002"
    root = tmp_path / "bundled"
    for name in ("good", "bad-metrics", "bad-config"):
        shutil.copytree(source, root / name)
    (root / "good" / "metrics.json").write_text(json.dumps({"tasks": [{"success_rate": 0.5, "episodes": 10}]}))
    (root / "bad-metrics" / "metrics.json").write_text("{truncated")
    (root / "bad-config" / "config.json").write_text("[]")
    (root / "not-a-checkpoint").mkdir()
    monkeypatch.setenv("RQL_CHECKPOINTS", str(root))
    monkeypatch.setenv("COLUMNS", "240")  # table cells on one line each

    assert list(bundled_checkpoint_folders()) == ["bad-config", "bad-metrics", "good"]
    entries = {entry.name: entry for entry in bundled_checkpoints()}
    assert (entries["good"].success, entries["good"].episodes, entries["good"].step) == ("50.0%", 10, 2)
    assert entries["bad-metrics"].success == "unreadable metrics.json"
    assert entries["bad-config"].dataset == "unreadable config.json"

    result = CliRunner().invoke(app, ["list"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "50.0%" in text and "unreadable metrics.json" in text


def test_list_json_describes_every_bundled_agent_and_each_preset_source():
    from rql_cli.config import PRESETS

    result = CliRunner().invoke(app, ["list", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    folders = bundled_checkpoint_folders()
    assert [entry["name"] for entry in payload["bundled"]] == list(folders)
    for entry in payload["bundled"]:
        folder = folders[entry["name"]]
        assert entry["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        assert entry["env_id"] and entry["task"] in range(1, 6)
        low, high = entry["success_ci95"]
        assert low <= entry["success_rate"] <= high
        assert entry["video"] is None or (folder / entry["video"]).is_file()
    assert set(payload["presets"]) == set(PRESETS)
    assert all(preset["source"] for preset in payload["presets"].values())
    assert "cube-single-play-v0" in payload["generatable"]


def test_every_bundled_agent_loads_fits_its_env_matches_its_card_and_runs():
    import pytest
    import torch

    from rql_cli.envs.make import check_env_fits, make_eval_env
    from rql_cli.evaluation import evaluate_checkpoint
    from rql_cli.io.metrics import read_metrics
    from rql_cli.io.model_card import _interval_text, read_evidence
    from rql_cli.io.resolve import load_checkpoint

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    for name, folder in folders.items():
        loaded = load_checkpoint(name, torch.device("cpu"))
        assert loaded.resolved.folder == folder
        env = make_eval_env(loaded.meta.task_name)
        try:
            check_env_fits(env.observation_space, env.action_space, loaded.meta.obs_dim, loaded.meta.action_dim, name)
        finally:
            env.close()
        report = read_metrics(folder)
        assert report.checkpoint == name  # what `rql eval --checkpoint` takes, not a path on the bundling machine
        card = (folder / "README.md").read_text()
        first = report.tasks[0]
        low, high = first["success_ci95"]
        assert f"value: {round(first['success_rate'], 4)}" in card, name
        assert f"- {round(low, 4)}" in card and f"- {round(high, 4)}" in card, name
        assert f"episodes: {first['episodes']}" in card, name
        evidence = read_evidence(folder)
        if evidence is not None:
            assert _interval_text(first) in card, name  # the Evidence section quotes metrics.json
        short = evaluate_checkpoint(loaded, tasks=[None], episodes=2, num_envs=1)
        assert short.tasks[0]["episodes"] == 2


def _config_of_train_command(command: str) -> tuple[int | None, dict]:
    """(task, config fields) that a card's `rql train --dataset D [--task T] [--set K=V]...` command makes."""
    import shlex

    from rql_cli.config import make_config, parse_set_option
    from rql_cli.names import parse_task_name

    tokens = shlex.split(command)
    assert tokens[:2] == ["rql", "train"], command
    options = list(zip(tokens[2::2], tokens[3::2]))
    dataset = next(value for flag, value in options if flag == "--dataset")
    task = next((int(value) for flag, value in options if flag == "--task"), None)
    overrides = dict(parse_set_option(value) for flag, value in options if flag == "--set")
    assert {flag for flag, _ in options} <= {"--dataset", "--task", "--set"}, command
    fields = make_config(parse_task_name(dataset), overrides=overrides).to_dict()
    fields.pop("device")
    return task, fields


def test_every_bundled_card_states_commands_that_rebuild_its_config_and_its_controls():
    """The training command on a card, run today, must make the agent's config: a preset changed since
    bundling would otherwise make it train something else. The control's differs only in alpha."""
    import pytest

    from rql_cli.io.checkpoint import read_meta
    from rql_cli.io.model_card import read_evidence

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    for name, folder in folders.items():
        evidence = read_evidence(folder)
        if evidence is None:
            continue
        meta, _ = read_meta(folder)
        stored = meta.config.to_dict()
        stored.pop("device")
        task, fields = _config_of_train_command(evidence["train_command"])
        assert fields == stored, name
        assert (task or meta.task_name.resolve_task()) == meta.task_name.resolve_task(), name
        assert evidence["train_command"] in (folder / "README.md").read_text(), name
        _, control = _config_of_train_command(evidence["control"]["command"])
        assert control["alpha"] == 1000.0, name
        assert {**control, "alpha": stored["alpha"]} == stored, name


def test_an_old_control_command_gains_the_fields_a_changed_preset_no_longer_gives(tiny_run_dir):
    """A control's command written before a preset changed: the fields that neither it nor its
    agent's command set held the old preset's value, the agent's, and come back as --set."""
    from rql_cli.config import make_config
    from rql_cli.io.checkpoint import read_meta
    from rql_cli.io.model_card import reproduce_command, restate_preset_values

    meta, _ = read_meta(sorted((tiny_run_dir / "checkpoints").iterdir())[-1])
    today = make_config(meta.dataset).to_dict()
    meta.config.expectile, meta.config.rho = today["expectile"], today["rho"]
    old_agent = reproduce_command(meta)  # written when the preset gave this agent's expectile and rho
    assert "expectile=" not in old_agent and "rho=" not in old_agent
    meta.config.expectile, meta.config.rho = today["expectile"] + 0.05, today["rho"] + 0.25  # the preset moved
    control_then = f"{old_agent} --set alpha=1000.0"
    restated = restate_preset_values(control_then, old_agent, meta)
    assert restated.startswith(control_then)
    _, control = _config_of_train_command(restated)
    assert (control["expectile"], control["rho"], control["alpha"]) == (meta.config.expectile, meta.config.rho, 1000.0)
    # a field the agent's command stated is left alone (its control followed its own command)
    stated = restate_preset_values(control_then, f"{old_agent} --set rho={today['rho']}", meta)
    assert "rho=" not in stated.removeprefix(control_then)
    assert restate_preset_values(restated, old_agent, meta) == restated  # once is enough
