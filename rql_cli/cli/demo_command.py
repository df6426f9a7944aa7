"""`rql demo`: the whole path on a laptop CPU in minutes (make data, train, evaluate)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from rql_cli.cli.common import handles_errors
from rql_cli.cli.data_commands import default_workers, generate_with_progress
from rql_cli.cli.display import console
from rql_cli.cli.train_command import run_training

DEMO_DATASET = "cube-single-play-v0"


@handles_errors
def demo(
    out: Path = typer.Option(Path("rql-demo"), "--out", "-o", help="Folder for the dataset and the run."),
    episodes: int = typer.Option(30, "--episodes", help="cube-single episodes to generate (1000 steps each)."),
    steps: int = typer.Option(2000, "--steps", help="Gradient steps of the demo run."),
    eval_episodes: int = typer.Option(20, "--eval-episodes", help="Episodes of the final evaluation."),
    workers: int = typer.Option(default_workers(), "--workers", "-j", help="Processes for generation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """The whole path on a laptop CPU in minutes: make data, train, evaluate, then score the bundled agent.

    Generates a small cube-single-play dataset here (no download), trains RQL with the cube preset and CPU-sized networks, evaluates the run, and evaluates each bundled checkpoint for cube-single.

    Example: rql demo --out rql-demo
    """
    from rql_cli.config import CPU_NETWORKS, make_config
    from rql_cli.data.sources import DataSpec

    data_dir = out / "data"
    if (data_dir / f"{DEMO_DATASET}.npz").is_file():
        console.print(f"1/3 Using the dataset already in {data_dir}.")
    else:
        console.print(f"1/3 Generating {episodes} episodes of {DEMO_DATASET} into {data_dir} ...")
        generate_with_progress(
            DEMO_DATASET, data_dir, episodes=episodes, val_episodes=max(1, episodes // 10), seed=0,
            workers=workers, episode_length=1001, force=False, quiet=False,
        )
    run_dir = out / f"run-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"2/3 Training {steps} steps into {run_dir} ...")
    config = make_config(DEMO_DATASET, overrides=dict(
        **CPU_NETWORKS, steps=steps, eval_interval=steps, eval_episodes=eval_episodes,
        eval_envs=workers, device=device,
    ))
    run_training(config, DataSpec(name=DEMO_DATASET, dataset_dir=str(data_dir)), run_dir, resume=False, quiet=False)
    console.print("3/3 Bundled checkpoints for cube-single:")
    _score_bundled(eval_episodes, workers, device)
    console.print(
        f"Next: rql eval --checkpoint {run_dir} --episodes 50, or train longer with "
        f"rql train --resume {run_dir} --steps {10 * steps}."
    )


def _score_bundled(episodes: int, workers: int, device: str) -> None:
    """Evaluate every bundled cube-single checkpoint and print its table."""
    from rql_cli.cli.display import eval_table
    from rql_cli.device import resolve_device
    from rql_cli.evaluation import evaluate_checkpoint
    from rql_cli.io.bundled import bundled_checkpoints
    from rql_cli.io.resolve import load_checkpoint

    bundled = [b for b in bundled_checkpoints() if b.dataset.startswith("cube-single")]
    if not bundled:
        console.print("  none installed.")
    for entry in bundled:
        loaded = load_checkpoint(str(entry.path), resolve_device(device))
        report = evaluate_checkpoint(loaded, tasks=[None], episodes=episodes, num_envs=workers)
        console.print(eval_table(report.to_dict()))
