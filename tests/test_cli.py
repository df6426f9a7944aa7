"""The real `rql` command line: help, the happy path, and what bad input gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rql_cli.cli.app import app

runner = CliRunner()
SMALL = [
    "--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]",
    "--set", "ensemble_size=2", "--set", "batch_size=8", "--set", "flow_steps=4",
]


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_clean_error(result, *fragments: str) -> None:
    """Exit code 1, the fragments in the message, no traceback."""
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in " ".join(output.split()), (fragment, output)


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (nothing imported yet, warnings filters as a user gets them)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_help_and_list_run_without_importing_torch():
    out = fresh_python(
        "import sys; from typer.testing import CliRunner; from rql_cli.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); print(r.output); "
        "r = CliRunner().invoke(app, ['list']); print(r.output, 'exit', r.exit_code); "
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')"
    ).stdout
    for command in ("train", "eval", "finetune", "rollout", "push", "pull", "data", "list"):
        assert command in out
    assert "cube-single-task1-rql-cpu" in out and "exit 0" in out  # `rql list` read every bundled config.json
    assert "NO_TORCH" in out


def test_the_console_script_freezes_the_heap_when_its_command_ends(monkeypatch, capsys):
    """The interpreter's last collections then skip what the command left (torch's heap): about 0.7 s of
    CPU at every exit, measured in the CHANGELOG's entry."""
    import gc

    from rql_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["rql", "--version"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as ended:
            main()
        assert ended.value.code == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process goes on collecting as before
    assert capsys.readouterr().out.startswith("rql ")


def test_version_is_instant_and_verbose_names_what_a_bug_report_needs():
    from importlib import metadata

    import rql_cli

    out = fresh_python(
        "import sys; from typer.testing import CliRunner; from rql_cli.cli.app import app; "
        "r = CliRunner().invoke(app, ['-V']); print(r.output, r.exit_code); "
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')"
    ).stdout
    assert out.splitlines()[0] == f"rql {rql_cli.__version__}" and "NO_TORCH" in out
    assert metadata.version("rql-cli") == rql_cli.__version__  # the package and the command agree

    verbose = run("--version", "--verbose")
    assert verbose.exit_code == 0
    lines = dict(line.split(": ", 1) for line in verbose.output.splitlines()[1:])
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    assert lines["torch"] == f"{torch.__version__} ({build})"
    for package in ("numpy", "gymnasium", "mujoco", "ogbench", "minari", "huggingface_hub", "safetensors"):
        assert lines[package] == metadata.version(package), package

    alone = run("--verbose", "list")
    assert alone.exit_code == 2 and "Invalid value for --verbose" in alone.output


def test_help_prose_flows_at_the_terminal_width_and_examples_keep_their_lines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    demo = run("demo", "--help").output
    # One paragraph of the docstring, wrapped at 100 columns in the source, is one line on a wide screen.
    assert "The short run is a few thousand gradient steps, so expect a low score from it: the bundled agent" in demo
    generate = run("data", "generate", "--help").output
    lines = [line.strip() for line in generate.splitlines()]
    first = lines.index("Examples:") + 1  # each example stays on its own line
    assert lines[first].startswith("rql data generate cube-double-play-v0 --episodes 100")
    assert lines[first + 1].startswith("rql data generate cube-single-play-v0 --episodes 40")


def test_library_hints_that_say_nothing_to_users_are_silenced_but_other_warnings_show():
    err = fresh_python(
        "import warnings; from rql_cli.cli.app import _quiet_library_warnings; _quiet_library_warnings(); "
        "warnings.warn('TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled.'); "
        "warnings.warn('something else entirely')"
    ).stderr
    assert "TensorFloat32" not in err and "something else entirely" in err


def test_unknown_dataset_name_suggests_the_closest(tmp_path):
    result = run("train", "--dataset", "cube-singel-play-v0", "--out", str(tmp_path / "r"))
    assert_clean_error(result, "cube-single-play-v0", "rql list")


def test_error_messages_print_square_brackets_as_written(tmp_path):
    """An error is text, not rich markup: the resolver's "USER/NAME[@REVISION]" keeps its brackets."""
    result = run("eval", "--checkpoint", "no-such-agent-here", "--episodes", "1")
    assert_clean_error(result, "USER/NAME[@REVISION]")


def test_missing_dataset_file_says_where_we_looked_and_how_to_make_it(tmp_path):
    result = run("train", "--dataset", "cube-double-play-v0", "--dataset-dir", str(tmp_path))
    assert_clean_error(result, str(tmp_path / "cube-double-play-v0.npz"), "rql data generate cube-double-play-v0")


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("alpah=3", "Unknown config field 'alpah'"),
        ("horizon=abc", "'horizon' expects an integer"),
        ("value_hidden_dims=256", "expects a JSON list of ints"),
        ("nokey", "--set expects key=value"),
    ],
)
def test_bad_set_options_name_the_field_and_type(setting, fragment, tiny_dataset_dir):
    result = run("train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir), "--set", setting)
    assert_clean_error(result, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_asked_for_but_absent_is_an_error(tiny_dataset_dir, tmp_path):
    result = run(
        "train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir),
        "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "r"),
    )
    assert_clean_error(result, "asked for CUDA", "--device cpu")


def test_train_then_eval_through_the_cli(tiny_dataset_dir, tmp_path):
    out = tmp_path / "run"
    result = run(
        "train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir),
        "--steps", "3", "--eval-episodes", "0", "--out", str(out), "--seed", "3", *SMALL,
    )
    assert result.exit_code == 0, result.output
    assert "rql eval --checkpoint" in result.output
    config = json.loads((out / "checkpoints" / "step_00000003" / "config.json").read_text())
    assert config["seed"] == 3 and config["config"]["ensemble_size"] == 2  # format 3: the seed at the top
    assert config["config"]["expectile"] == 0.7  # the cube-single preset
    # A second train into the same folder is refused instead of mixing runs.
    again = run("train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir), "--out", str(out))
    assert_clean_error(again, "already holds a run", f"rql train --resume {out}")

    report_path = tmp_path / "report.json"
    result = run("eval", "--checkpoint", str(out), "--episodes", "2", "--envs", "1", "--json", str(report_path), "--save")
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    task = report["tasks"][0]
    assert task["episodes"] == 2 and task["seeds"] == [0, 1]
    assert 0.0 <= task["success_ci95"][0] <= task["success_rate"] <= task["success_ci95"][1] <= 1.0
    assert task["ogbench_version"] and task["success_timing"] in ("pre", "post")
    saved = json.loads((out / "checkpoints" / "step_00000003" / "metrics.json").read_text())
    assert saved["tasks"][0]["returns"] == task["returns"]


def test_eval_of_broken_checkpoints_names_the_file(tiny_run_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_run_dir / "checkpoints" / "step_00000002", checkpoint)
    (checkpoint / "velocity.safetensors").write_bytes(b"not a safetensors file")
    assert_clean_error(run("eval", "--checkpoint", str(checkpoint), "--episodes", "1"),
                       "velocity.safetensors", "truncated or corrupt")
    (checkpoint / "velocity.safetensors").unlink()
    assert_clean_error(run("eval", "--checkpoint", str(checkpoint), "--episodes", "1"),
                       "missing velocity.safetensors")
    assert_clean_error(run("eval", "--checkpoint", str(tmp_path / "nowhere")), "No checkpoint")


def test_eval_of_a_checkpoint_that_does_not_fit_the_env_shows_both_shapes(tiny_run_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_run_dir / "checkpoints" / "step_00000002", checkpoint)
    payload = json.loads((checkpoint / "config.json").read_text())
    payload["env_id"] = "cube-double-play-singletask-v0"  # 37-dim observations, not 28
    (checkpoint / "config.json").write_text(json.dumps(payload))
    assert_clean_error(
        run("eval", "--checkpoint", str(checkpoint), "--episodes", "1"),
        "checkpoint expects observations of size 28", "environment gives observations of size 37",
    )


def test_data_generate_info_and_refusal_to_overwrite(tmp_path):
    args = ["data", "generate", "cube-single-play-v0", "--out", str(tmp_path), "--episodes", "1",
            "--val-episodes", "1", "--episode-length", "21", "--workers", "1"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cube-single-play-v0.npz").is_file() and (tmp_path / "cube-single-play-v0-val.npz").is_file()
    before = (tmp_path / "cube-single-play-v0.npz").read_bytes()
    assert_clean_error(run(*args), "already exist", "--force")
    assert (tmp_path / "cube-single-play-v0.npz").read_bytes() == before
    info = run("data", "info", "cube-single-play-v0", "--dataset-dir", str(tmp_path), "--json")
    assert info.exit_code == 0, info.output
    stats = json.loads(info.output)
    assert stats["train"]["transitions"] == 20 and stats["train"]["episodes"] == 1
    assert stats["env_id"] == "cube-single-play-singletask-v0"
    assert_clean_error(run("data", "generate", "cube-singel-play-v0", "--out", str(tmp_path)), "cube-single-play-v0")


def test_list_shows_presets_and_generatable_datasets():
    result = run("list")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for family in ("cube-double", "puzzle-3x3", "humanoidmaze-large"):
        assert family in text
    assert "scene-play-v0" in text


def test_finetune_needs_online_steps_or_a_dataset(tiny_run_dir):
    # `finetune` was a placeholder; it now exists and refuses a run with nothing to do.
    result = run("finetune", "--checkpoint", str(tiny_run_dir))
    assert_clean_error(result, "--online-steps must be a positive number", "--dataset NAME --steps N")


def test_run_flags_are_made_from_the_config_and_official_names_work_in_set(tiny_dataset_dir, tmp_path):
    from rql_cli.config import FIELD_HELP

    help_text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output.split())
    for flag in ("--steps", "--eval-interval", "--eval-every", "--eval-episodes", "--eval-envs", "--seed", "--device"):
        assert flag in help_text, flag
    assert FIELD_HELP["eval_interval"].split("(")[0].strip() in help_text
    assert "official name: ensemble_ct" in help_text

    out = tmp_path / "run"
    result = run(
        "train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir), "--steps", "2",
        "--eval-every", "1", "--eval-episodes", "0", "--out", str(out), *SMALL, "--set", "h=2", "--set", "ema=0.9",
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "checkpoints" / "step_00000002" / "config.json").read_text())["config"]
    run_config = json.loads((out / "train_config.json").read_text())["config"]  # format 3: the run's own fields
    assert (config["horizon"], config["actor_ema"], run_config["eval_interval"]) == (2, 0.9, 1)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_eval_task_all_runs_every_task_and_a_bad_task_is_refused(tmp_path, monkeypatch):
    bundled = "cube-single-task1-rql-cpu"
    assert_clean_error(run("eval", "--checkpoint", bundled, "--task", "7"), "--task expects a number 1-5")

    # Which env each task really ran in: the first observation each task's policy is shown (episode 0
    # of every task is reset with env seed 0, and the five tasks start from five different states).
    from rql_cli.envs import policy as policy_module

    first_observations = []
    real_chunk_policy = policy_module.chunk_policy

    def recording_chunk_policy(*args, **kwargs):
        policy = real_chunk_policy(*args, **kwargs)
        seen = []

        def recording(obs):
            if not seen:
                seen.append(obs[0].copy())
                first_observations.append(seen[0])
            return policy(obs)

        return recording

    monkeypatch.setattr(policy_module, "chunk_policy", recording_chunk_policy)
    monkeypatch.setenv("COLUMNS", "200")
    report_path = tmp_path / "all.json"
    result = run(
        "eval", "--checkpoint", bundled, "--task", "all", "--episodes", "1", "--envs", "1",
        "--device", "cpu", "--json", str(report_path),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    rows = report["tasks"]
    assert [row["task"] for row in rows] == [1, 2, 3, 4, 5]
    assert [row["env_id"] for row in rows] == [f"cube-single-play-singletask-task{n}-v0" for n in range(1, 6)]
    assert all(row["episodes"] == 1 and row["seeds"] == [0] for row in rows)
    assert all(row["success_rate"] == float(row["successes"][0]) for row in rows)
    assert report["mean_success_rate"] == pytest.approx(sum(row["success_rate"] for row in rows) / 5)
    assert len(first_observations) == 5
    for i in range(5):
        for j in range(i):
            assert not np.allclose(first_observations[i], first_observations[j]), (j + 1, i + 1)
    # The printed table: a row per task, then the mean.
    lines = [line.split() for line in result.output.splitlines()]
    table = {line[0]: line[1] for line in lines if line and line[0] in {"1", "2", "3", "4", "5", "mean"}}
    assert list(table) == ["1", "2", "3", "4", "5", "mean"]
    assert table["mean"] == f"{100 * report['mean_success_rate']:.1f}%"
    assert [table[str(n)] for n in range(1, 6)] == [f"{100 * row['success_rate']:.1f}%" for row in rows]
