"""`rql demo` end to end at a tiny size: film and score the bundled agent, make data, train, score, point onward."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_films_the_best_bundled_agent_trains_briefly_and_says_what_next(tmp_path):
    out = tmp_path / "demo"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, CI="true", COLUMNS="200")
    env.pop("MUJOCO_GL", None)  # the demo picks a headless backend itself
    done = subprocess.run(
        [sys.executable, "-m", "rql_cli", "demo", "--out", str(out), "--episodes", "1", "--steps", "6",
         "--eval-episodes", "1", "--video-steps", "4", "--workers", "1", "--device", "cpu"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert f"Video of {videos[0].stem}: {videos[0]}" in text
    (run,) = out.glob("run-*")
    assert (run / "checkpoints" / "step_00000006" / "velocity.safetensors").is_file()
    assert "a low score is expected this early" in text
    for command in ("rql train --resume", "rql eval --checkpoint", "rql rollout", "rql finetune", "rql push"):
        assert command in text
    # fine-tuning needs the checkpoint's own dataset: the demo made the short run's, not the filmed agent's
    assert f"rql finetune --checkpoint {run} --online-steps 20000 --dataset-dir {out / 'data'}" in text
    assert list(cwd.iterdir()) == []  # everything went where it was asked to go
