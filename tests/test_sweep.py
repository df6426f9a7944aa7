"""`rql sweep`: the plan's expansion and refusals, and a tiny sweep on a real local Ray, interrupted and
continued without redoing its finished runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_checks import assert_refused, invoke
from conftest import TINY_NAME

from rql_cli.sweep.plan import SweepSpec, expand, parse_grid_option, parse_tasks

SMALL = ["--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]", "--set", "horizon=5",
         "--set", "batch_size=8", "--set", "flow_steps=4", "--device", "cpu"]


def test_the_plan_expands_datasets_tasks_grids_and_seeds():
    spec = SweepSpec(datasets=[TINY_NAME], seeds=[0, 3], tasks=parse_tasks("1-2,5"),
                     grid=dict([parse_grid_option("alpha=3,10"), parse_grid_option("value_hidden_dims=[64],[32,32]")]),
                     fixed={"steps": 50})
    runs = expand(spec)
    assert len(runs) == 3 * 2 * 2 * 2
    names = {r.name for r in runs}
    assert len(names) == len(runs)
    assert "cube-single-play-v0_task5_alpha=10.0_value_hidden_dims=32x32_seed3" in names
    run = next(r for r in runs if r.name == "cube-single-play-v0_task2_alpha=3.0_value_hidden_dims=64_seed0")
    config = run.config()
    assert (config.agent.alpha, config.agent.value_hidden_dims, config.seed, config.steps) == (3.0, [64], 0, 50)
    assert parse_grid_option("value_hidden_dims=256,256") == ("value_hidden_dims", [[256, 256]])  # one list


@pytest.mark.parametrize(("args", "fragments"), [
    (["--set", "alhpa=3,10"], ["alhpa", "alpha"]),
    (["--task", "3-1"], ["--task range 3-1 is empty"]),
    (["--seeds", "2-0"], ["runs backwards"]),
    (["--set", "expectile=0.7,1.5"], ["expectile"]),
])
def test_bad_specs_are_refused_with_one_message_before_anything_runs(args, fragments, tmp_path):
    out = tmp_path / "sweep"
    assert_refused(invoke("sweep", "--dataset", TINY_NAME, "--out", str(out), *args), *fragments)
    assert not out.exists()


def test_an_out_folder_holding_another_sweeps_plan_is_refused(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep", "--dataset", TINY_NAME, "--seeds", "0-1", "--out", str(out), "--plan-only")
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == ["cube-single-play-v0_seed0", "cube-single-play-v0_seed1"]
    assert_refused(invoke("sweep", "--dataset", TINY_NAME, "--seeds", "0-2", "--out", str(out), "--plan-only"),
                   "holds another sweep's plan", f"rql sweep --resume {out}")


def rql(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "rql_cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{steps:08d}").is_dir()


def test_a_local_ray_runs_its_runs_at_the_callers_priority(monkeypatch):
    """Ray's default worker niceness (15) starved runs behind any other busy process on the machine."""
    ray = pytest.importorskip("ray")
    from rql_cli.sweep.execute import start_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    def niceness() -> int:  # local: pickled by value, as the tests folder is not importable in Ray's workers
        return os.nice(0)

    assert start_ray(None)
    try:
        worker_niceness = ray.get(ray.remote(num_cpus=1)(niceness).remote())
    finally:
        ray.shutdown()
    assert worker_niceness == os.nice(0)


def test_a_tiny_sweep_on_a_local_ray_is_interrupted_and_continued(tiny_dataset_dir, tmp_path):
    pytest.importorskip("ray")
    # Runs must be unfinished when Ctrl-C reaches the driver (it looks up from `ray.wait` every 0.5 s; the
    # test polls every 0.2 s): 600 steps of these networks take 2 to 6 s, a run's start 5 to 20 s, and
    # on two cores the last two runs start only when the first two end (1,500 steps cost 15 s more CPU).
    out, steps = tmp_path / "sweep", 600
    args = ["sweep", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--task", "1-2", "--seeds",
            "0-1", "--steps", str(steps), "--eval-interval", str(steps), "--eval-episodes", "1",
            "--set", "save_interval=200", "--out", str(out), "--executor", "ray", "--threads-per-run", "1", *SMALL]
    first = rql(*args)
    names = [f"cube-single-play-v0_task{t}_seed{s}" for t in (1, 2) for s in (0, 1)]
    deadline = time.monotonic() + 240
    while not any(finished(out / n, steps) for n in names) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    done_first = [n for n in names if finished(out / n, steps)]
    assert done_first and len(done_first) < len(names), output
    assert first.returncode == 130 and "Interrupted" in output, output
    stamps = {n: (out / n / "checkpoints" / f"step_{steps:08d}" / "velocity.safetensors").stat().st_mtime_ns
              for n in done_first}

    second = rql(*args)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert "4 of 4 runs done" in output
    assert all(finished(out / n, steps) for n in names)
    for name, stamp in stamps.items():  # finished runs were not trained again
        assert (out / name / "checkpoints" / f"step_{steps:08d}" / "velocity.safetensors").stat().st_mtime_ns == stamp
    report = invoke("report", str(out), "--no-figure", "--reps", "200")
    assert report.exit_code == 0 and "task1" in report.output


def test_asha_stops_runs_below_the_rungs_cutoff_and_records_them(tmp_path):
    """Tune's own ASHAScheduler decides; ours writes each early stop to SWEEP/scheduler.json, which the
    runs' states then read (a stopped run is finished for every executor)."""
    pytest.importorskip("ray.tune")
    from ray.tune.experiment import Trial

    from rql_cli.sweep.asha import AshaSettings, _recording_asha
    from rql_cli.sweep.execute import stopped_runs

    names = ["a", "b", "c", "d"]
    scheduler = _recording_asha(tmp_path, AshaSettings("success_rate", 10, 2), dict.fromkeys(names, 40))
    trials = [Trial("__fake", config={"run": {"name": n}}, stub=True) for n in names]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions = [scheduler.on_trial_result(None, t, {"step": 10, "success_rate": v})
                 for t, v in zip(trials, [0.5, 0.1, 0.6, 0.2], strict=True)]
    # the first run at a rung always goes on; later ones below the best half of those before them stop
    assert decisions == ["CONTINUE", "STOP", "CONTINUE", "STOP"]
    assert stopped_runs(tmp_path) == {"b": 10, "d": 10}
    assert scheduler.on_trial_result(None, trials[0], {"step": 40, "success_rate": 0.0}) == "STOP"
    assert stopped_runs(tmp_path) == {"b": 10, "d": 10}  # a run stopped at its last step finished: not recorded


def test_asha_is_checked_before_anything_runs(tmp_path):
    out = tmp_path / "sweep"
    base = ["sweep", "--dataset", TINY_NAME, "--out", str(out), "--scheduler", "asha", "--plan-only"]
    assert_refused(invoke(*base, "--asha-metric", "loss"), "--asha-metric", "success_rate")
    assert_refused(invoke(*base, "--eval-interval", "1000", "--grace-steps", "10"), "--grace-steps 10",
                   "first evaluation")
    assert_refused(invoke(*base[:-1], "--executor", "local"), "Ray Tune", "--executor local")
    assert not (out / "sweep.json").exists()


def test_a_sweep_under_asha_runs_on_ray_tune_and_the_same_command_continues_it(tiny_dataset_dir, tmp_path):
    """Two tiny runs as Tune trials under ASHA (their evaluations tie, so neither is stopped); Tune's
    state is in SWEEP/tune, and the same command again trains nothing."""
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    args = ["sweep", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--task", "1", "--set",
            "alpha=1,3", "--steps", "2", "--eval-interval", "1", "--eval-episodes", "1", "--set", "save_interval=1",
            "--out", str(out), "--scheduler", "asha", "--grace-steps", "1", "--reduction-factor", "2", *SMALL]
    first = rql(*args)
    text, _ = first.communicate(timeout=300)
    assert first.returncode == 0, text
    names = [f"cube-single-play-v0_task1_alpha={a}_seed0" for a in ("1.0", "3.0")]
    assert all(finished(out / n, 2) for n in names), text
    assert "2 of 2 runs done" in text and "ray tune" in text
    assert "Configuration for experiment" not in text  # Tune's own console output stays out of the table
    assert json.loads((out / "sweep.json").read_text())["spec"]["scheduler"] == {
        "name": "asha", "metric": "success_rate", "grace_steps": 1, "reduction_factor": 2.0}
    assert sorted(p.name for p in (out / "tune").iterdir() if p.is_dir()) == names
    mtimes = {n: (out / n / "checkpoints" / "step_00000002" / "config.json").stat().st_mtime for n in names}
    again = rql(*args)
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "2 of 2 runs done" in text, text
    assert "Ray instance" not in text  # a finished sweep answers without starting Ray
    assert mtimes == {n: (out / n / "checkpoints" / "step_00000002" / "config.json").stat().st_mtime for n in names}


def test_seeds_together_train_each_grid_point_as_the_group_rql_train_seeds_makes(tiny_dataset_dir, tmp_path):
    """With --seeds-together a grid point's seeds are one seed group (POINT/seed_S, POINT/group.json) whose
    weights equal `rql train --seeds` on the same settings, bit for bit; the report finds its seeds, the same
    command again trains nothing, and ASHA (which stops runs one by one) is refused beside it."""
    from safetensors.torch import load_file

    out = tmp_path / "sweep"
    common = ["--dataset-dir", str(tiny_dataset_dir), "--task", "1", "--set", "eval_interval=4", "--set",
              "eval_episodes=1", "--set", "steps=4", "--set", "threads=1", *SMALL]
    sweep = ["sweep", "--dataset", TINY_NAME, "--seeds", "0-1", "--seeds-together", "--set", "alpha=1,3",
             "--out", str(out), "--executor", "local", *common]
    done = invoke(*sweep)
    assert done.exit_code == 0, done.output
    assert "4 of 4 runs done" in " ".join(done.output.split())
    points = [out / f"{TINY_NAME}_task1_alpha={a}" for a in ("1.0", "3.0")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [p.name for p in points]
    alone = tmp_path / "alone"
    trained = invoke("train", "--dataset", TINY_NAME, "--seeds", "0-1", "--set", "alpha=3", "--out", str(alone),
                     *common)
    assert trained.exit_code == 0, trained.output
    for seed in (0, 1):
        ours, theirs = (folder / f"seed_{seed}" / "checkpoints" / "step_00000004" / "velocity.safetensors"
                        for folder in (points[1], alone))
        ours_weights, their_weights = load_file(ours), load_file(theirs)
        assert ours_weights.keys() == their_weights.keys()
        assert all(torch.equal(ours_weights[k], their_weights[k]) for k in ours_weights), seed
    report = invoke("report", str(out), "--no-figure", "--reps", "200")
    assert report.exit_code == 0, report.output
    assert "alpha=1.0" in report.output and "alpha=3.0" in report.output
    stamp = ours.stat().st_mtime_ns
    again = invoke(*sweep)
    assert again.exit_code == 0 and "4 of 4 runs done" in " ".join(again.output.split()), again.output
    assert ours.stat().st_mtime_ns == stamp
    assert_refused(invoke("sweep", "--dataset", TINY_NAME, "--seeds", "0-1", "--seeds-together", "--scheduler",
                          "asha", "--out", str(tmp_path / "asha"), "--plan-only"), "--seeds-together", "asha")
    assert not (tmp_path / "asha").exists()
