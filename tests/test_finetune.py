"""`rql finetune`: online fine-tuning end to end, resume, continued offline training, lineage, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rql_cli.cli.app import app
from rql_cli.config import RunConfig

runner = CliRunner()
ONLINE_SEED_BASE = 1_000_000  # episode k of a run with seed s is reset with env seed 1e6 + 1e4 * s + k


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_clean_error(result, *fragments: str) -> None:
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_online_fine_tuning_of_a_run_folder_finds_the_data_it_trained_on(tiny_run_dir, tiny_dataset_dir, tmp_path):
    from rql_cli.io.run_record import read_run_record, recorded_data_location

    out = tmp_path / "ft"
    result = run("finetune", "--checkpoint", str(tiny_run_dir), "--online-steps", "10", "--eval-episodes", "0",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    assert read_run_record(out).data["dataset_dir"] == str(tiny_dataset_dir)
    # A checkpoint outside its run folder, or a record of another dataset, names no data.
    copied = tmp_path / "copied"
    shutil.copytree(sorted((tiny_run_dir / "checkpoints").iterdir())[-1], copied)
    assert recorded_data_location(copied, "cube-single-play-v0") == (None, None)
    last = sorted((tiny_run_dir / "checkpoints").iterdir())[-1]
    assert recorded_data_location(last, "cube-single-play-v0") == (tiny_dataset_dir, None)
    assert recorded_data_location(last, "scene-play-v0") == (None, None)


def test_online_fine_tuning_end_to_end(tiny_run_dir, tiny_dataset_dir, tmp_path):
    from rql_cli.envs.make import make_eval_env
    from rql_cli.io.checkpoint_meta import read_meta
    from rql_cli.io.model_card import build_model_card
    from rql_cli.io.run_record import read_run_record

    before = digest(tiny_run_dir)
    out = tmp_path / "ft"
    result = run("finetune", "--checkpoint", str(tiny_run_dir), "--online-steps", "400", "--dataset-dir",
                 str(tiny_dataset_dir), "--eval-every", "400", "--eval-episodes", "1", "--set", "log_interval=100",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    assert digest(tiny_run_dir) == before  # the source is never touched

    checkpoint = out / "checkpoints" / "step_00000400"
    stored = load_file(str(checkpoint / "online_buffer.safetensors"))
    assert stored["counters"].tolist() == [400, 2]  # 400 env steps: two 200-step episodes, all stored
    assert stored["observations"].shape == (400, 28)
    online = (out / "online.csv").read_text().splitlines()
    assert len(online) == 3 and online[1].startswith("200,0,")

    # The stored transitions are what the env gives for the stored actions.
    seed = json.loads((checkpoint / "config.json").read_text())["seed"]  # format 3: the run's seed, top level
    env = make_eval_env("cube-single-play-singletask-v0")
    for episode in range(2):
        rows = slice(200 * episode, 200 * (episode + 1))
        observation, _ = env.reset(seed=ONLINE_SEED_BASE + 10_000 * seed + episode)
        for row, action in zip(range(rows.start, rows.stop), stored["actions"][rows].numpy()):
            np.testing.assert_allclose(stored["observations"][row].numpy(), observation, rtol=1e-6, atol=1e-6)
            observation, reward, terminated, truncated, _ = env.step(action)
            assert float(stored["rewards"][row]) == reward and float(stored["masks"][row]) == 1.0 - terminated
            assert float(stored["terminals"][row]) == float(terminated or truncated)
            np.testing.assert_allclose(stored["next_observations"][row].numpy(), observation, rtol=1e-6, atol=1e-6)
    env.close()

    # The result loads in `rql eval`, and its lineage reaches config.json, the run record and the card.
    evaluated = run("eval", "--checkpoint", str(out), "--episodes", "1", "--envs", "1")
    assert evaluated.exit_code == 0, evaluated.output
    assert "fine-tuned from" in " ".join(evaluated.output.split())
    meta, _ = read_meta(checkpoint)
    assert meta.lineage["ref"] == str(tiny_run_dir) and meta.lineage["method"] == "online"
    assert (meta.lineage["online_steps"], meta.lineage["utd"], meta.lineage["step"]) == (400, 1, 2)
    assert json.loads((out / "train_config.json").read_text())["parent"] == meta.lineage
    card = build_model_card(meta, None, "alice/ft", files=["config.json"]).content
    assert f"fine-tuned from `{tiny_run_dir}`" in card and "400 environment steps" in card
    # the card's command is the fine-tune that made it, with the run's own settings off their defaults
    record = read_run_record(out)
    card = build_model_card(meta, None, "alice/ft", files=[], run=record.config).content
    command = next(line for line in card.splitlines() if line.startswith("rql finetune"))
    # (log_interval=100 is the default: it is left out)
    assert command == f"rql finetune --checkpoint {tiny_run_dir} --online-steps 400 --set eval_interval=400 " \
                      "--set eval_episodes=1", command
    # a bundled online agent's card shows where it started and the offline route it beat, each with its interval
    route = dict(start=dict(ref="start-agent", step=2, success_rate=0.5, success_ci95=[0.3, 0.7], episodes=20),
                 offline=dict(name="offline instead", command="rql finetune --checkpoint start-agent --steps 400",
                              success_rate=0.25, success_ci95=[0.1, 0.45], episodes=20))
    card = build_model_card(meta, None, "alice/ft", files=[], evidence=dict(online_route=route)).content
    assert "- before online fine-tuning (`start-agent`, step 2): 50.0% [30.0%, 70.0%] over 20 episodes\n" \
           "- offline instead: 25.0% [10.0%, 45.0%] over 20 episodes\n\n  ```bash\n" \
           "  rql finetune --checkpoint start-agent --steps 400\n  ```" in card, card
    assert (out / "curves.png").is_file() and (out / "eval.csv").read_text().count("\n") == 2


def test_sigterm_then_resume_restores_the_online_buffer_and_counters(tiny_run_dir, tiny_dataset_dir, tmp_path):
    from rql_cli.data.sources import DataSpec
    from rql_cli.io.resolve import load_checkpoint
    from rql_cli.io.run_lock import RunLock
    from rql_cli.io.run_logs import CsvLog
    from rql_cli.training.observer import TrainObserver
    from rql_cli.training.online import (
        BUFFER_FILE,
        FinetuneSettings,
        OnlineSource,
        finetune,
    )
    from rql_cli.training.session import (
        check_resume,
        latest_checkpoint_meta,
        open_session,
    )
    from rql_cli.training.signals import StopSignals

    class SignalAt(TrainObserver):
        def on_log(self, step, metrics):
            if step == 250:
                os.kill(os.getpid(), signal.SIGTERM)

    loaded = load_checkpoint(str(tiny_run_dir), "cpu")
    settings = FinetuneSettings(online_steps=600)
    config = RunConfig(agent=loaded.meta.config).replace(log_interval=50, eval_episodes=0, eval_interval=0)
    data = DataSpec(name=loaded.meta.env_id, dataset_dir=str(tiny_dataset_dir))
    out = tmp_path / "ft"
    outcome = finetune(loaded, config, settings, data, out, observer=SignalAt())
    assert outcome.interrupted and outcome.step == 250
    assert outcome.resume_command == f"rql finetune --resume {out}"
    saved = load_file(str(outcome.last_checkpoint / "online_buffer.safetensors"))
    assert saved.pop("counters").tolist() == [250, 1]  # the running episode (50 steps) is dropped

    cpu = torch.device("cpu")
    with RunLock(out) as lock, StopSignals() as stop:
        previous = check_resume(out, config)
        source = OnlineSource(config, settings, data, cpu, latest_checkpoint_meta(out, (BUFFER_FILE,)), resume=True)
        try:
            resumed = open_session(config, source, lock, stop, device=cpu, previous=previous, origin=None)
            assert (source.env_step, source.episodes, resumed.agent.step) == (250, 1, 250)
            assert source.buffer.online_size == 200
            for name, tensor in source.buffer.online_part().items():
                assert torch.equal(tensor, saved[name]), name
            assert source.collector.episode == 1  # a new episode starts
        finally:
            source.close()
    finished = finetune(None, config, settings, data, out, resume=True)
    assert finished.step == 600 and not finished.interrupted
    history = json.loads((out / "train_config.json").read_text())["history"]
    # Opening the run above counted as a resume too: both at env step 250.
    assert [(h["event"], h["step"]) for h in history] == [("start", 0), ("resume", 250), ("resume", 250)]
    rows = CsvLog(out / "metrics.csv", []).read()
    clock = [float(row["wall_time"]) for row in rows]  # the run's training seconds, across both sessions
    assert [int(row["step"]) for row in rows][4:6] == [250, 300] and clock == sorted(clock)


def test_continued_offline_training_starts_from_the_checkpoints_weights(tiny_run_dir, tiny_dataset_dir, tmp_path):
    from rql_cli.data.dataset import ChunkSampler
    from rql_cli.data.sources import load_ogbench
    from rql_cli.device import make_generator
    from rql_cli.io.checkpoint import load_agent
    from rql_cli.io.checkpoint_meta import read_meta

    out = tmp_path / "more"
    result = run("finetune", "--checkpoint", str(tiny_run_dir), "--dataset", "cube-single-play-v0", "--dataset-dir",
                 str(tiny_dataset_dir), "--steps", "3", "--eval-episodes", "0", "--set", "log_interval=1", "--out", str(out))
    assert result.exit_code == 0, result.output
    first = (out / "metrics.csv").read_text().splitlines()
    header, row = first[0].split(","), first[1].split(",")
    logged = dict(zip(header, row))

    source = tiny_run_dir / "checkpoints" / "step_00000002"
    agent, meta = load_agent(source)
    dataset = load_ogbench("cube-single-play-v0", dataset_dir=tiny_dataset_dir, with_val=False).train
    batch = ChunkSampler(dataset, meta.config.horizon).sample(meta.config.batch_size, make_generator(torch.device("cpu"), meta.seed))
    losses, _ = agent.losses(batch, make_generator(torch.device("cpu"), meta.seed + 1))
    assert float(logged["total"]) == pytest.approx(float(losses["total"].detach()), rel=1e-5)
    lineage = read_meta(out / "checkpoints" / "step_00000003")[0].lineage
    assert lineage["method"] == "offline" and lineage["steps"] == 3 and lineage["optimizer"].startswith("continued")


def test_bad_input_is_refused_with_what_to_do(tiny_run_dir, tiny_dataset_dir, tmp_path):
    ref = str(tiny_run_dir)
    assert_clean_error(run("finetune", "--checkpoint", ref, "--online-steps", "-5"), "--online-steps must be a positive")
    assert_clean_error(run("finetune", "--checkpoint", ref, "--online-steps", "10", "--dataset-dir", str(tmp_path),
                           "--out", str(tmp_path / "a")), "not found", "rql data generate", "--no-offline-data")
    assert_clean_error(run("finetune", "--resume", ref), "is not a fine-tuning run", f"rql train --resume {ref}")
    shutil.copy(tiny_dataset_dir / "cube-single-play-v0.npz", tmp_path / "cube-double-play-v0.npz")
    shutil.copy(tiny_dataset_dir / "cube-single-play-v0-val.npz", tmp_path / "cube-double-play-v0-val.npz")
    wrong = run("finetune", "--checkpoint", ref, "--dataset", "cube-double-play-v0", "--dataset-dir", str(tmp_path),
                "--steps", "1", "--out", str(tmp_path / "b"))
    assert wrong.exit_code == 1  # ogbench rejects 28-dim rows as cube-double data, or our dims check does
    assert "Traceback" not in wrong.output and "cube-double" in wrong.output
    assert_clean_error(run("finetune", "--checkpoint", ref, "--online-steps", str(10**9), "--no-offline-data",
                           "--out", str(tmp_path / "c")), "would need", "GiB")
    existing = tmp_path / "d"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert_clean_error(run("finetune", "--checkpoint", ref, "--online-steps", "5", "--out", str(existing)),
                       "already exists", "never writes into it")
    assert (existing / "notes.txt").read_text() == "mine"
