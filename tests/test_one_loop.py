"""`rql train` and `rql finetune` run one loop: the same refusals, saves and checks, through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rql_cli.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def flat(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def runs(tiny_run_dir, tiny_dataset_dir, tmp_path_factory):
    """Copies of an offline run and of an online fine-tuning run of it (4 env steps), per name."""
    root = tmp_path_factory.mktemp("one_loop")
    offline = root / "offline"
    shutil.copytree(tiny_run_dir, offline)
    online = root / "online"
    result = run("finetune", "--checkpoint", str(offline), "--online-steps", "4", "--dataset-dir",
                 str(tiny_dataset_dir), "--eval-episodes", "0", "--out", str(online), "--quiet")
    assert result.exit_code == 0, result.output
    return {"train": offline, "finetune": online}


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_resume_that_would_reshape_the_agent_is_refused_alike(runs, command):
    result = run(command, "--resume", str(runs[command]), "--set", "horizon=3")
    assert result.exit_code == 1, result.output
    assert "--resume cannot change horizon" in flat(result) and "Traceback" not in result.output
    assert "rql finetune --checkpoint" in flat(result)  # the way to change it: a new run from the weights


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_resume_checks_the_checkpoints_sizes(runs, command, tmp_path):
    run_dir = tmp_path / command
    shutil.copytree(runs[command], run_dir)
    latest = sorted((run_dir / "checkpoints").iterdir())[-1] / "config.json"
    payload = json.loads(latest.read_text())
    payload["obs_dim"] += 1
    latest.write_text(json.dumps(payload))
    result = run(command, "--resume", str(run_dir))
    assert result.exit_code == 1, result.output
    assert f"observations of size {payload['obs_dim']}" in flat(result) and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["train", "finetune", "finetune --dataset"])
def test_a_failing_periodic_evaluation_saves_the_step_and_names_the_resume(
    runs, tiny_dataset_dir, tmp_path, monkeypatch, command
):
    import rql_cli.training.session as session

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer fell over")

    monkeypatch.setattr(session, "evaluate_agent", broken)
    out = tmp_path / "run"
    common = ["--dataset-dir", str(tiny_dataset_dir), "--eval-episodes", "1", "--eval-every", "2", "--out", str(out)]
    if command == "train":
        args = ["train", "--dataset", "cube-single-play-v0", "--steps", "4",
                "--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]",
                "--set", "ensemble_size=2", "--set", "batch_size=8", "--set", "flow_steps=4", *common]
    elif command == "finetune":
        args = ["finetune", "--checkpoint", str(runs["train"]), "--online-steps", "4", *common]
    else:  # continued offline training: the same loop as train, continued by `rql finetune --resume`
        args = ["finetune", "--checkpoint", str(runs["train"]), "--dataset", "cube-single-play-v0", "--steps", "4",
                *common]
    result = run(*args)
    assert result.exit_code == 1, result.output
    text = flat(result)
    assert "evaluation at this step failed" in text and "the renderer fell over" in text
    assert f"rql {command.split()[0]} --resume {out}" in text
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step_00000002"] and (out / "checkpoints" / saved[0] / "train_state.safetensors").is_file()
