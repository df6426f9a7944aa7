"""`rql rollout`: videos with one labelled frame per state, and no GL at all without --render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rql_cli.cli.rollout_command import rollout
from rql_cli.envs.render import frame_label, label_frame
from rql_cli.rollout import run_rollout

WIDTH, HEIGHT = 96, 64
STEPS = 6  # time limit of every test episode; a 2-step agent never solves cube-single that fast
REPO_ROOT = Path(__file__).resolve().parents[1]


def rollout_app() -> typer.Typer:
    """A stand-in for the real app: the command registered the way app.py registers it."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a callback keeps `rollout` a subcommand, as under `rql`
        pass

    app.command()(rollout)
    return app


def invoke(*args: str):
    return CliRunner().invoke(rollout_app(), ["rollout", *args], catch_exceptions=False)


def read_frames(path: Path) -> list[np.ndarray]:
    return [np.asarray(frame)[..., :3] for frame in imageio.mimread(path, memtest=False)]


def clean_env(**extra: str) -> dict:
    """This environment without a GL backend choice or a display."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def gif_rollout(tiny_run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gif") / "episodes.gif"
    report = run_rollout(
        str(tiny_run_dir), episodes=2, render=True, out=out, size=(WIDTH, HEIGHT),
        max_episode_steps=STEPS, seed=0, device="cpu",
    )
    return report, out


def test_mp4_through_the_cli_has_one_frame_per_state_of_every_episode(tiny_run_dir, tmp_path):
    out = tmp_path / "episodes.mp4"
    result = invoke(
        "--checkpoint", str(tiny_run_dir), "--render", "--episodes", "2", "--max-steps", str(STEPS),
        "--size", f"{WIDTH}x{HEIGHT}", "--out", str(out), "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    assert f"Video written to {out}" in " ".join(result.output.split())
    frames = read_frames(out)
    assert len(frames) == 2 * (STEPS + 1)  # each episode: its reset state, then one frame per step
    assert {frame.shape for frame in frames} == {(HEIGHT, WIDTH, 3)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes.mp4"]  # no partial file left


def test_gif_has_one_frame_per_state_and_the_report_agrees(gif_rollout):
    report, out = gif_rollout
    frames = read_frames(out)
    assert len(frames) == report.frames == sum(record.length + 1 for record in report.episodes)
    assert {frame.shape for frame in frames} == {(HEIGHT, WIDTH, 3)}
    assert report.video == str(out) and report.frame_size == (WIDTH, HEIGHT)
    assert [record.seed for record in report.episodes] == [0, 1]
    assert report.render_fps > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["episodes.gif"]


def test_same_seed_gives_the_same_episodes_and_frames(gif_rollout, tiny_run_dir, tmp_path):
    report, out = gif_rollout

    path = tmp_path / "again.gif"
    same = run_rollout(
        str(tiny_run_dir), episodes=2, render=True, out=path, size=(WIDTH, HEIGHT),
        max_episode_steps=STEPS, seed=0, device="cpu",
    )
    same_frames = read_frames(path)
    assert same.episodes == report.episodes
    first_video = read_frames(out)
    assert all(np.array_equal(a, b) for a, b in zip(same_frames, first_video, strict=True))
    # Frames do depend on the seed: below the labels, episodes 1 and 2 (env seeds 0, 1) start apart.
    scene = slice(HEIGHT // 3, None)
    assert not np.array_equal(first_video[0][scene], first_video[STEPS + 1][scene])


def test_label_is_drawn_in_a_strip_across_the_top():
    raw = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    text = frame_label(episode=2, episodes=3, step=57, successes=1, finished=1)
    assert text == "episode 2/3  step 57  success so far 1/1"
    assert frame_label(2, 3, 57, 0, 1, success_reported=False) == "episode 2/3  step 57"  # e.g. Pendulum
    labelled = label_frame(raw, text)
    assert labelled.shape == raw.shape and labelled.dtype == np.uint8
    assert np.array_equal(raw, np.full_like(raw, 128))  # the input is left alone
    strip = np.flatnonzero((labelled != raw).any(axis=(1, 2)))
    assert strip[0] == 0 and strip[-1] < HEIGHT // 2  # a strip at the top, the scene below untouched
    assert not np.array_equal(labelled, label_frame(raw, text.replace("57", "58")))  # the text itself
    solved = label_frame(raw, text, solved=True)
    assert (solved[..., 1].astype(int) - solved[..., 0]).max() > 50  # green text while solved


def test_rollout_without_render_needs_no_gl(tiny_run_dir):
    # No backend chosen, no display: any GL context would fail. Renderers are also booby-trapped.
    code = f"""
import json, os, mujoco
def refuse(*args, **kwargs):
    raise AssertionError("a GL context was requested")
mujoco.Renderer = mujoco.GLContext = mujoco.MjrContext = refuse
from rql_cli.rollout import run_rollout
report = run_rollout({str(tiny_run_dir)!r}, episodes=2, max_episode_steps={STEPS}, device="cpu")
print(json.dumps(dict(lengths=[r.length for r in report.episodes], video=report.video,
                      mujoco_gl=os.environ.get("MUJOCO_GL"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == dict(lengths=[STEPS, STEPS], video=None, mujoco_gl=None)


def test_video_for_push_renders_even_after_mujoco_chose_no_backend(tiny_run_dir, tmp_path):
    # `rql push` may import ogbench (and so mujoco, fixing its GL backend to glfw) before it films.
    checkpoint = tiny_run_dir / "checkpoints" / "step_00000002"
    out = tmp_path / "video.mp4"
    code = f"""
import mujoco
from pathlib import Path
from rql_cli.rollout import render_video_for_push
print(render_video_for_push(Path({str(checkpoint)!r}), Path({str(out)!r}), max_episode_steps=2))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    frames = read_frames(out)
    assert len(frames) == 3 and frames[0].shape == (480, 640, 3)  # the default size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "64by48"], "--size expects WIDTHxHEIGHT in pixels, e.g. 640x480; got '64by48'."),
        (["--size", "0x48"], "width and height must each lie between 16 and 4096 pixels"),
        (["--render", "--size", "95x64"], "An mp4 needs an even width and height, got 95x64: use --size 96x64"),
        (["--render", "--out", "clip.avi"], "use a name ending in .mp4 or .gif"),
    ],
)
def test_bad_size_or_video_name_is_a_clean_error_before_any_work(args, message, tmp_path):
    result = invoke("--checkpoint", str(tmp_path / "not-loaded"), *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split())
