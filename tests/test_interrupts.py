"""Ctrl-C and SIGTERM sent to a real `rql train` process: during updates, an evaluation and a cold compile.

Each stop must save a checkpoint of the step it reached, print the command that continues, and a
resume from it must train exactly what an uninterrupted run trains.

The interrupted processes of the module's selected tests run two at a time (the machines have two
cores), started when its first test runs (the `interrupted` fixture); each test checks its own.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rql_cli.cli.app import app

SMALL = [
    "--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]",
    "--set", "ensemble_size=2", "--set", "batch_size=8", "--set", "flow_steps=4",
]
LOSS_COLUMNS = ("step", "value", "bc", "policy", "total", "value_mean", "target_mean")


def start_training(data_dir: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`rql train` in its own process, long enough never to finish by itself."""
    return subprocess.Popen(
        [sys.executable, "-m", "rql_cli", "train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(data_dir),
         "--steps", "100000", "--out", str(out), "--set", "log_interval=1", *SMALL, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_for(condition, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not condition():
        if process.poll() is not None or time.time() > deadline:
            output = process.communicate()[0] if process.poll() is not None else "(still running)"
            process.kill()
            pytest.fail(f"the run never reached the point to interrupt: {output}")
        time.sleep(0.1)


def logged_steps(out: Path) -> int:
    metrics = out / "metrics.csv"
    return len(metrics.read_text().splitlines()) - 1 if metrics.exists() else 0


def stop(process: subprocess.Popen, sig: signal.Signals) -> str:
    """Send ``sig`` once; the run must end by itself with exit code 130."""
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    return " ".join(output.split())


def loss_rows(run_dir: Path) -> list[tuple[str, ...]]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [tuple(dict(zip(header, line.split(",")))[c] for c in LOSS_COLUMNS) for line in lines[1:]]


def latest(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").iterdir())[-1]


def stopped_during_updates(data_dir: Path, out: Path, sig: signal.Signals) -> str:
    process = start_training(data_dir, out, "--eval-episodes", "0", "--set", "compile=off")
    wait_for(lambda: logged_steps(out) > 3, process)
    return stop(process, sig)


def stopped_during_an_evaluation(data_dir: Path, out: Path) -> str:
    process = start_training(data_dir, out, "--eval-episodes", "200", "--eval-every", "2", "--set", "compile=off")
    wait_for(lambda: logged_steps(out) >= 2, process)  # step 2 is logged just before its evaluation
    time.sleep(1.0)  # well into the 200 episodes
    return stop(process, signal.SIGINT)


def stopped_during_a_cold_compile(data_dir: Path, out: Path) -> str:
    cache = out.parent / "inductor-cache"  # empty: the compile takes tens of seconds
    process = start_training(data_dir, out, "--eval-episodes", "0", "--set", "compile=on",
                             env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    wait_for(lambda: (out / "metrics.csv").exists(), process)  # written just before the compile starts
    time.sleep(1.0)
    return stop(process, signal.SIGINT)


SCENARIOS = {  # the longest first
    "evaluation": stopped_during_an_evaluation,
    "compile": stopped_during_a_cold_compile,
    "SIGINT": functools.partial(stopped_during_updates, sig=signal.SIGINT),
    "SIGTERM": functools.partial(stopped_during_updates, sig=signal.SIGTERM),
}


def scenario_of(item: pytest.Item) -> str:
    if item.originalname == "test_a_run_stopped_during_updates_resumes_to_exactly_the_uninterrupted_run":
        return item.callspec.id
    return "evaluation" if "evaluation" in item.originalname else "compile"


@pytest.fixture(scope="module")
def interrupted(request, tiny_dataset_dir, tmp_path_factory) -> dict[str, tuple[Path, Future]]:
    """For each scenario a selected test needs: its run folder, and its stop's output (a Future; the
    stop asserted exit code 130)."""
    selected = {scenario_of(item) for item in request.session.items if item.module is request.module}
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for name, scenario in SCENARIOS.items():
        if name in selected:
            out = tmp_path_factory.mktemp(f"interrupted-{name}") / "run"
            runs[name] = (out, pool.submit(scenario, tiny_dataset_dir, out))
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_stopped_during_updates_resumes_to_exactly_the_uninterrupted_run(interrupted, tiny_dataset_dir, tmp_path, sig):
    out, stopping = interrupted[sig.name]
    output = stopping.result()
    assert f"rql train --resume {out}" in output
    checkpoints = sorted((out / "checkpoints").iterdir())
    stopped_at = int(checkpoints[0].name.split("_")[1])
    assert len(checkpoints) == 1 and stopped_at >= 3
    total = str(stopped_at + 3)

    runner = CliRunner()
    resumed = runner.invoke(app, ["train", "--resume", str(out), "--steps", total], catch_exceptions=False)
    assert resumed.exit_code == 0 and "Resuming at step" in resumed.output, resumed.output
    straight = tmp_path / "straight"
    result = runner.invoke(app, [
        "train", "--dataset", "cube-single-play-v0", "--dataset-dir", str(tiny_dataset_dir), "--steps", total,
        "--eval-episodes", "0", "--out", str(straight), "--set", "log_interval=1", "--set", "compile=off", *SMALL,
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    assert loss_rows(out) == loss_rows(straight)  # no step lost or repeated, the same losses to the printed digit
    for name in ("velocity.safetensors", "value.safetensors", "train_state.safetensors"):
        a, b = load_file(str(latest(out) / name)), load_file(str(latest(straight) / name))
        assert a.keys() == b.keys(), name
        for key in a:  # weights, Adam moments, step counter and generator states, bit for bit
            assert torch.equal(a[key], b[key]), (name, key)


def test_ctrl_c_during_an_evaluation_stops_it_and_saves_the_step(interrupted):
    out, stopping = interrupted["evaluation"]
    output = stopping.result()
    assert f"rql train --resume {out}" in output
    saved = latest(out)
    assert saved.name == "step_00000002" and (saved / "train_state.safetensors").is_file()
    # The evaluation was dropped, not finished: no result recorded anywhere.
    assert not (saved / "metrics.json").exists()
    assert len((out / "eval.csv").read_text().splitlines()) == 1


def test_ctrl_c_during_a_cold_compile_stops_before_the_first_step(interrupted):
    out, stopping = interrupted["compile"]
    output = stopping.result()
    assert f"rql train --resume {out}" in output
    assert latest(out).name == "step_00000000"
    runtime = json.loads((out / "train_config.json").read_text())["history"][0]["runtime"]
    assert runtime["compile"]["mode"] is None and "SIGINT" in runtime["compile"]["fallback"]
    assert logged_steps(out) == 0
