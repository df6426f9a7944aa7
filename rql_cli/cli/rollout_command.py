"""`rql rollout`: run a checkpoint's policy for a few episodes and, with --render, film them.

Registered by the app; the envs and torch are imported when it runs, so `rql --help` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import Progress
from rich.table import Table

from rql_cli.cli.common import CHECKPOINT_HELP, check_options, check_output_path, handles_errors, ranged, seed_option
from rql_cli.cli.display import console, make_progress, pct
from rql_cli.results import EpisodeProgress

if TYPE_CHECKING:
    from rql_cli.rollout import RolloutReport

EPISODES_WITH_RENDER = 1
EPISODES_WITHOUT_RENDER = 5


@handles_errors
def rollout(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    episodes: int | None = typer.Option(
        None, "--episodes", "-n", help=ranged("--episodes", "Episodes to run, one after another."),
        show_default=f"{EPISODES_WITH_RENDER} with --render, else {EPISODES_WITHOUT_RENDER}",
    ),
    render: bool = typer.Option(
        False, "--render/--no-render", help="Write the episodes into a labelled video (headless: MUJOCO_GL=egl)."
    ),
    out: Path = typer.Option(Path("rollout.mp4"), "--out", "-o", help="Video file, .mp4 or .gif (with --render)."),
    fps: int = typer.Option(
        30, "--fps", help=ranged("--fps", "Playback frames per second (the env steps 20 times a second).")
    ),
    size: str = typer.Option("640x480", "--size", help="Frame size WIDTHxHEIGHT in pixels (even sides for mp4)."),
    task: int | None = typer.Option(
        None, "--task", help=ranged("--task", "Task number."),
        show_default="the checkpoint's task",
    ),
    seed: int = seed_option("Episode i starts from env seed SEED+i; flow noise as `rql eval --seed`."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    best: bool = typer.Option(False, "--best", help="For a run folder: its best-evaluated checkpoint, not the latest."),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help=ranged("--max-steps", "Cut each episode at this many steps, for a quick look."),
        show_default="the env's time limit"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the table and the video's path."),
) -> None:
    """Run a checkpoint's policy for a few episodes; with --render, write a video of them.

    Example: rql rollout --checkpoint runs/demo --render --episodes 3 --out demo.mp4
    """
    from rql_cli.envs.render import check_video_path, parse_size
    from rql_cli.rollout import run_rollout

    check_options({"--episodes": episodes, "--fps": fps, "--task": task, "--max-steps": max_steps})
    width, height = parse_size(size)
    if render:  # before loading anything
        check_video_path(out, width, height)
        check_output_path(out, "--out", example="rollout.mp4")
    count = episodes or (EPISODES_WITH_RENDER if render else EPISODES_WITHOUT_RENDER)

    with make_progress(quiet) as progress:
        shown = _RolloutProgress(progress, render, count)
        report = run_rollout(
            checkpoint, episodes=count, render=render, out=out, fps=fps, size=(width, height), task=task,
            seed=seed, device=device, best=best, max_episode_steps=max_steps,
            on_frame=shown.on_frame if render else None, on_episode=shown.on_episode,
        )
    console.print(_episodes_table(report))
    if report.video:
        if not quiet and report.frame_size is not None and report.render_fps is not None:
            console.print(
                f"{report.frames} frames of {report.frame_size[0]}x{report.frame_size[1]} at "
                f"{report.render_fps:.1f} frames/s (step, policy, render, encode)."
            )
        console.print(f"Video written to {report.video}")
        logged = _log_to_run(report)
        if logged:
            console.print(f"The video is in the run's {' and '.join(logged)} log at step {report.step:,}.")


def _log_to_run(report: RolloutReport) -> list[str]:
    """A video of a checkpoint in a run folder that logs to TensorBoard or W&B goes to those logs too."""
    from rql_cli.io.run_layout import is_run_dir
    from rql_cli.training.loggers import log_rollout_video

    run_dir = Path(report.checkpoint).parent.parent  # RUN/checkpoints/step_N
    if report.video is None or not is_run_dir(run_dir):
        return []
    return log_rollout_video(run_dir, report.step, Path(report.video), report.fps)


class _RolloutProgress:
    """Feeds a rollout's callbacks into one progress bar: frames (with --render) or episodes."""

    def __init__(self, progress: Progress, render: bool, episodes: int):
        self.progress, self.render = progress, render
        self.bar = progress.add_task("render" if render else "episodes", total=None if render else episodes,
                                     rate="", info="")
        self.first_frame_at: float | None = None  # loading and env start-up are not frames

    def on_frame(self, done: int, expected: int) -> None:
        """A frame was written: show frames/s since the first one."""
        now = time.perf_counter()
        self.first_frame_at = self.first_frame_at or now
        rate = f"{(done - 1) / (now - self.first_frame_at):.1f} frames/s" if done > 1 else ""
        self.progress.update(self.bar, completed=done, total=expected, rate=rate)

    def on_episode(self, shown: EpisodeProgress) -> None:
        """An episode ended: show the running success count."""
        episode = shown.episode
        tally = (f"success {shown.successes}/{shown.done}" if episode.success_reported
                 else f"return {episode.episode_return:.1f}")
        info = f"episode {shown.done}/{shown.total}, {tally}"
        if self.render:  # the bar counts frames
            self.progress.update(self.bar, info=info)
        else:
            self.progress.update(self.bar, info=info, completed=shown.done)


def _episodes_table(report: RolloutReport) -> Table:
    table = Table(title=f"{report.env_id} @ step {report.step:,} (seed {report.seed})")
    for column in ("episode", "env seed", "success", "return", "length"):
        table.add_column(column, justify="right")
    for number, record in enumerate(report.episodes, start=1):  # episode i holds index i - 1
        table.add_row(
            str(number), str(record.seed),
            ("yes" if record.success else "no") if record.success_reported else "n/a",
            f"{record.episode_return:.1f}", str(record.length),
        )
    if report.success_reported:
        table.add_row("all", "", f"{report.successes}/{len(report.episodes)} ({pct(report.success_rate)})", "", "")
    else:  # an env without a success signal (Pendulum, say): the mean return is the measure
        table.add_row("all", "", "n/a", f"{report.mean_return:.1f} (mean)", "")
    return table
