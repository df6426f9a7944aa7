"""Watching a checkpoint act: resolve it, load it, run episodes in one env, optionally film them.

Episodes follow ``rql eval``'s rules (EMA policy, chunks open loop, episode i reset with seed+i,
success = the final step's ``info['success']``) and its noise seeding, so a rollout's outcomes are
those of ``rql eval --envs 1`` with the same seed. Without rendering no GL is touched.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rql_cli.errors import RQLError

DEFAULT_SIZE = (640, 480)
"""(width, height) of rendered frames: the cube is about 25 px wide, readable in a browser."""

DEFAULT_FPS = 30
"""Playback frames/s (OGBench manipulation control runs at 20 steps/s, so 1.5x real time)."""

FrameCallback = Callable[[int, int], None]
"""on_frame(frames_written, frames_expected): frames_expected is an upper bound until the last
episode ends (an episode may stop before its time limit)."""


@dataclass
class EpisodeRecord:
    """One rollout episode. ``episode`` counts from 1; ``seed`` reset the env."""

    episode: int
    seed: int
    success: bool
    episode_return: float
    length: int


EpisodeCallback = Callable[[EpisodeRecord, int], None]
"""on_episode(record, episodes_total), after each episode."""


@dataclass
class RolloutReport:
    """What ``run_rollout`` did.

    Attributes:
        checkpoint: the resolved checkpoint folder.
        dataset, env_id, task: what ran (env_id names the task, e.g. ...-singletask-task1-v0).
        step: the checkpoint's training step.
        device: torch device of the policy.
        seed: episode i was reset with ``seed + i``.
        max_episode_steps: the time limit used (steps).
        episodes: one record per episode, in order.
        video: the written file, or None without rendering.
        frames: frames written; each episode gives ``length + 1`` (its reset state, then one frame
            per env step).
        frame_size: (width, height) in pixels, or None without rendering.
        fps: playback frames/s of the video.
        render_fps: frames per wall-clock second while filming (stepping, policy, rendering,
            labelling and encoding together); None without rendering.
        wall_time_s: seconds for the episodes (loading and env start-up excluded).
    """

    checkpoint: str
    dataset: str
    env_id: str
    task: int
    step: int
    device: str
    seed: int
    max_episode_steps: int
    episodes: list[EpisodeRecord] = field(default_factory=list)
    video: str | None = None
    frames: int = 0
    frame_size: tuple[int, int] | None = None
    fps: float = DEFAULT_FPS
    render_fps: float | None = None
    wall_time_s: float = 0.0

    @property
    def successes(self) -> int:
        return sum(record.success for record in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(len(self.episodes), 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["success_rate"] = self.success_rate
        out["frame_size"] = list(self.frame_size) if self.frame_size else None
        return out


def run_rollout(
    ref: str,
    *,
    episodes: int = 1,
    render: bool = False,
    out: Path | str | None = None,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    task: int | None = None,
    seed: int = 0,
    device: str = "auto",
    best: bool = False,
    max_episode_steps: int | None = None,
    fast_render: bool = True,
    on_frame: FrameCallback | None = None,
    on_episode: EpisodeCallback | None = None,
) -> RolloutReport:
    """Run ``episodes`` episodes of checkpoint ``ref``'s EMA policy; with ``render``, film them.

    Args:
        ref: checkpoint reference (folder, run folder, bundled name, Hub id): ``resolve_checkpoint``.
        episodes: number of episodes, run one after another in one env in this process.
        render: write the episodes, one after another, into the video ``out``, each frame labelled
            ``episode k/N  step t  success so far x/y`` (y: episodes finished, an episode's last
            frame counting it; green while the task is solved).
        out: ``.mp4`` (H.264) or ``.gif``; default ``rollout.mp4``. Written under a temporary name
            and renamed when complete, so a failed rollout never leaves half a video in its place.
        fps: playback frames per second of the video.
        size: (width, height) of the frames in pixels; even sides for mp4.
        task: task number 1..5; None: the checkpoint's task.
        seed: episode i is reset with env seed ``seed + i``; the flow noise is seeded like
            ``rql eval --seed``'s.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the policy.
        best: for a run folder, its best-evaluated checkpoint instead of the latest.
        max_episode_steps: override the env's time limit (steps), for quick looks and tests.
        fast_render: lower the shadow map and multisampling (``rql_cli.envs.render.FAST``);
            False keeps the model's own (slow in software) settings.
        on_frame, on_episode: progress callbacks (see ``FrameCallback``, ``EpisodeCallback``).

    Returns:
        RolloutReport.
    """
    from rql_cli.core.device import make_generator, resolve_device
    from rql_cli.envs import render as rendering
    from rql_cli.envs.make import episode_limit, make_eval_env, parse_task_name
    from rql_cli.envs.policy import chunk_policy
    from rql_cli.evaluation import check_dims_against_env
    from rql_cli.io.checkpoint import load_agent
    from rql_cli.io.resolve import resolve_checkpoint

    if episodes < 1:
        raise RQLError(f"--episodes must be at least 1, got {episodes}.")
    if not fps > 0:
        raise RQLError(f"--fps must be positive, got {fps}.")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise RQLError(f"max_episode_steps must be at least 1, got {max_episode_steps}.")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise RQLError(f"--size must be positive, got {width}x{height}.")
    video_path = Path(out if out is not None else "rollout.mp4").expanduser() if render else None
    if video_path is not None:
        rendering.check_video_path(video_path, width, height)

    folder = resolve_checkpoint(ref, best=best)
    torch_device = resolve_device(device)
    agent, meta = load_agent(folder, torch_device)
    parsed = parse_task_name(meta.env_id)
    task_number = parsed.resolve_task(task)
    if render:
        env = rendering.make_render_env(
            meta.env_id, task_number, width, height, max_episode_steps,
            quality=rendering.FAST if fast_render else None,
        )
    else:
        env = make_eval_env(meta.env_id, task_number, max_episode_steps=max_episode_steps)
    try:
        check_dims_against_env(meta, meta.env_id, task_number, env=env)
        report = RolloutReport(
            checkpoint=str(folder), dataset=meta.dataset, env_id=parsed.env_id(task_number),
            task=task_number, step=meta.step, device=str(torch_device), seed=seed,
            max_episode_steps=int(max_episode_steps or episode_limit(meta.env_id)), fps=fps,
        )
        # The same generator seed as evaluate_checkpoint's first task: identical flow noise.
        policy = chunk_policy(agent, make_generator(torch_device, seed * 1000))
        if video_path is None:
            _run_episodes(report, env, policy, episodes, on_episode=on_episode)
        else:
            _film_episodes(report, env, policy, episodes, video_path, on_frame, on_episode)
    finally:
        env.close()
    return report


def _run_episodes(
    report: RolloutReport, env: Any, policy: Any, episodes: int,
    on_step: Callable[[int, int, dict, bool], None] | None = None, on_episode: EpisodeCallback | None = None,
) -> None:
    """Run the episodes into ``report``; ``on_step(episode_index, step, info, done)`` sees every state."""
    from rql_cli.envs.evaluate import run_episode

    started = time.perf_counter()
    for index in range(episodes):
        step_callback = None if on_step is None else functools.partial(on_step, index)
        outcome = run_episode(env, policy, report.seed + index, on_step=step_callback)
        record = EpisodeRecord(
            episode=index + 1, seed=outcome.seed, success=outcome.success,
            episode_return=outcome.episode_return, length=outcome.length,
        )
        report.episodes.append(record)
        if on_episode is not None:
            on_episode(record, episodes)
    report.wall_time_s = time.perf_counter() - started


def _film_episodes(
    report: RolloutReport, env: Any, policy: Any, episodes: int, video_path: Path,
    on_frame: FrameCallback | None, on_episode: EpisodeCallback | None,
) -> None:
    """Run the episodes, streaming one labelled frame per state into the video at ``video_path``."""
    from rql_cli.envs import render as rendering

    partial = video_path.with_name(f".{video_path.stem}.partial{video_path.suffix}")
    frames_per_episode = report.max_episode_steps + 1

    def on_step(index: int, step: int, info: dict, done: bool) -> None:
        frame = rendering.render_frame(env)
        if report.frame_size is None:
            report.frame_size = (frame.shape[1], frame.shape[0])
        solved = bool(info.get("success", False))
        # An episode's last frame already counts it, so the video ends on the final tally.
        text = rendering.frame_label(
            index + 1, episodes, step, report.successes + int(done and solved), len(report.episodes) + int(done)
        )
        writer.append_data(rendering.label_frame(frame, text, solved=solved))
        report.frames += 1
        if on_frame is not None:
            left_in_episode = 0 if done else report.max_episode_steps - step
            expected = report.frames + left_in_episode + (episodes - index - 1) * frames_per_episode
            on_frame(report.frames, expected)

    writer = rendering.open_video_writer(partial, report.fps)
    try:
        with writer:
            _run_episodes(report, env, policy, episodes, on_step, on_episode)
        os.replace(partial, video_path)
    finally:
        partial.unlink(missing_ok=True)
    report.video = str(video_path)
    report.render_fps = report.frames / report.wall_time_s if report.wall_time_s > 0 else None


def render_video_for_push(
    checkpoint_folder: Path, out_path: Path, *, max_episode_steps: int | None = None
) -> Path:
    """Film one episode of a checkpoint at the default settings into ``out_path``; returns it.

    For ``rql push --video``. If this process already imported mujoco without choosing a GL
    backend (glfw, which fails without a display), rendering happens in a fresh child process,
    which picks EGL; otherwise here.
    """
    out_path = Path(out_path)
    if _gl_backend_settled_without_display():
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_render_one_episode, Path(checkpoint_folder), out_path, max_episode_steps).result()
    return _render_one_episode(Path(checkpoint_folder), out_path, max_episode_steps)


def _render_one_episode(checkpoint_folder: Path, out_path: Path, max_episode_steps: int | None) -> Path:
    report = run_rollout(
        str(checkpoint_folder), episodes=1, render=True, out=out_path, max_episode_steps=max_episode_steps
    )
    return Path(report.video)


def _gl_backend_settled_without_display() -> bool:
    """mujoco is imported (so its GL backend is fixed) with no backend chosen and no display."""
    return "mujoco" in sys.modules and not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY")
