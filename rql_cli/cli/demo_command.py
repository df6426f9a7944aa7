"""`rql demo`: a newcomer's first five minutes on a CPU: watch a trained agent, then train one briefly.

What needs torch or the envs is imported inside the functions, so `rql --help` stays instant.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from rql_cli.cli.common import check_output_path, handles_errors
from rql_cli.cli.data_commands import default_workers, generate_with_progress
from rql_cli.cli.display import console, eval_table
from rql_cli.cli.train_command import run_training
from rql_cli.errors import RQLError
from rql_cli.io.bundled import BundledCheckpoint, bundled_checkpoints
from rql_cli.io.resolve import load_checkpoint
from rql_cli.io.run_layout import CURVES_FILE
from rql_cli.presets import CPU_NETWORKS, make_config

DEMO_DATASET = "cube-single-play-v0"
DEFAULT_OUT = Path.home() / "rql-demo"


@handles_errors
def demo(
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Folder for the video, the dataset and the run.",
                             show_default="~/rql-demo"),
    episodes: int = typer.Option(30, "--episodes", help="cube-single episodes to generate (1000 steps each)."),
    steps: int = typer.Option(2000, "--steps", help="Gradient steps of the short training run."),
    eval_episodes: int = typer.Option(20, "--eval-episodes", help="Episodes of each evaluation."),
    video_steps: int = typer.Option(200, "--video-steps", help="Environment steps filmed of the bundled agent."),
    workers: int = typer.Option(default_workers(), "--workers", "-j", help="Processes for generation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """A first look in a few minutes on a CPU: score and film the best bundled agent, then make a small
    dataset here, train RQL on it briefly and score that run.

    Everything goes into --out (default ~/rql-demo); nothing is downloaded. The short run is a few
    thousand gradient steps, so expect a low score from it: the bundled agent shows what a longer run
    reaches. The last lines say where the video and the run are and what to try next.

    Example: rql demo --out /tmp/rql-demo
    """
    from rql_cli.data.sources import DataSpec

    out = out.expanduser()
    check_output_path(out, "--out", folder=True)
    agent = _best_bundled()
    video = None
    if agent is not None:
        console.print(f"1/4 The bundled agent [bold]{agent.name}[/] ({agent.step:,} training steps):")
        video = _film(agent.path, out / f"{agent.name}.mp4", video_steps, device)  # first: it picks the GL backend
        _score(str(agent.path), eval_episodes, device)
    else:
        console.print("1/4 No bundled agent is installed; skipping to the short training run.")

    data_dir = out / "data"
    if (data_dir / f"{DEMO_DATASET}.npz").is_file():
        console.print(f"2/4 Using the dataset already in {data_dir}.")
    else:
        console.print(
            f"2/4 Generating {episodes} episodes of {DEMO_DATASET} with OGBench's scripted oracle into {data_dir} ..."
        )
        generate_with_progress(
            DEMO_DATASET, data_dir, episodes=episodes, val_episodes=max(1, episodes // 10), seed=0,
            workers=workers, episode_length=1001, force=False, quiet=False,
        )
    run_dir = out / f"run-{datetime.now():%Y%m%d-%H%M%S}"
    reach = (
        f"; the bundled agent reached {agent.success} after {agent.step:,}"
        if agent and agent.success_rate is not None else ""
    )
    console.print(
        f"3/4 A short training run: {steps:,} gradient steps into {run_dir} (a few minutes' worth{reach}) ..."
    )
    config = make_config(DEMO_DATASET, overrides=dict(
        **CPU_NETWORKS, steps=steps, eval_interval=0, eval_episodes=0, device=device,
    ))
    run_training(config, DataSpec(name=DEMO_DATASET, dataset_dir=str(data_dir)), run_dir, resume=False, quiet=False)
    console.print(f"4/4 The short run after {steps:,} steps (a low score is expected this early):")
    _score(str(run_dir), eval_episodes, device)
    _next_steps(agent, video, run_dir, data_dir)


def _best_bundled() -> BundledCheckpoint | None:
    """The bundled agent with the highest measured success (None when none is installed)."""
    usable = [b for b in bundled_checkpoints() if b.env_id]
    return max(usable, key=lambda b: (b.success_rate or 0.0, b.step), default=None)


def _score(ref: str, episodes: int, device: str) -> None:
    from rql_cli.device import resolve_device
    from rql_cli.evaluation import evaluate_checkpoint

    loaded = load_checkpoint(ref, resolve_device(device))
    report = evaluate_checkpoint(loaded, tasks=[None], episodes=episodes)  # envs: rql eval's default
    console.print(eval_table(report))


def _film(folder: Path, video: Path, max_steps: int, device: str) -> Path | None:
    """One labelled episode of the agent at 320x240; a machine that cannot render says why and goes on."""
    from rql_cli.rollout import run_rollout

    try:
        report = run_rollout(str(folder), episodes=1, render=True, out=video, size=(320, 240),
                             device=device, max_episode_steps=max_steps)
    except RQLError as error:
        console.print(f"[yellow]No video: {error}[/]")
        return None
    console.print(f"   Filmed one episode ({report.frames} frames): {report.video}")
    return None if report.video is None else Path(report.video)


def _next_steps(agent: BundledCheckpoint | None, video: Path | None, run_dir: Path, data_dir: Path) -> None:
    lines = []
    if agent is not None and video is not None:
        lines.append(f"Video of {agent.name}: {video}")
    lines += [
        f"Short run: {run_dir} (curves: {run_dir / CURVES_FILE}); data: {data_dir}",
        "Next:",
        f"  rql train --resume {run_dir} --steps 40000          # keep training the short run",
        f"  rql eval --checkpoint {agent.name if agent else run_dir} --episodes 100 --task all",
        f"  rql rollout --checkpoint {agent.name if agent else run_dir} --render --episodes 3 --out agent.mp4",
        # The short run's: the data made here are its dataset (the filmed agent may be of another family).
        f"  rql finetune --checkpoint {run_dir} --online-steps 20000 --dataset-dir {data_dir}",
        f"  rql push {run_dir} --repo-id YOU/rql-cube-single   # share it on the Hub",
    ]
    console.print("\n".join(lines))
