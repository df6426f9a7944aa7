"""Watching a checkpoint act: resolve it, load it, run episodes in one env, optionally film them.

Episodes follow ``rql eval``'s rules (EMA policy, chunks open loop, episode i reset with seed+i,
success = the final step's ``info['success']``) and its noise seeding, so a rollout's outcomes are
those of ``rql eval --envs 1`` with the same seed. Without rendering no GL is touched.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.device import make_generator, resolve_device
from rql_cli.envs import render as rendering
from rql_cli.envs.chunks import PolicyFn
from rql_cli.envs.evaluate import run_episode
from rql_cli.envs.make import env_dims, episode_limit, make_eval_env
from rql_cli.envs.policy import chunk_policy
from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_meta import check_checkpoint_dims
from rql_cli.io.resolve import LoadedCheckpoint, load_checkpoint
from rql_cli.results import Episode, EpisodeCallback, EpisodeProgress

if TYPE_CHECKING:
    from gymnasium import Env

DEFAULT_SIZE = (640, 480)
"""(width, height) of rendered frames: the cube is about 25 px wide, readable in a browser."""

DEFAULT_FPS = 30
"""Playback frames/s (OGBench manipulation control runs at 20 steps/s, so 1.5x real time)."""

FrameCallback = Callable[[int, int], None]
"""on_frame(frames_written, frames_expected): frames_expected is an upper bound until the last
episode ends (an episode may stop before its time limit)."""


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
        episodes: one per episode, in order (``index`` from 0; episode i was reset with ``seed + i``).
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
    episodes: list[Episode] = field(default_factory=list)
    video: str | None = None
    frames: int = 0
    frame_size: tuple[int, int] | None = None
    fps: float = DEFAULT_FPS
    render_fps: float | None = None
    wall_time_s: float = 0.0

    @property
    def success_reported(self) -> bool:
        """Whether the env reports success (OGBench envs do; Pendulum, say, does not)."""
        return all(record.success_reported for record in self.episodes)

    @property
    def mean_return(self) -> float:
        """Mean undiscounted return over the episodes run (0 before any episode)."""
        return sum(record.episode_return for record in self.episodes) / max(len(self.episodes), 1)

    @property
    def successes(self) -> int:
        """Episodes that ended in success."""
        return sum(record.success for record in self.episodes)

    @property
    def success_rate(self) -> float:
        """Successes over episodes run, in [0, 1] (0 before any episode)."""
        return self.successes / max(len(self.episodes), 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, with ``success_rate`` added; each episode numbered from 1 (``episode``)."""
        out = asdict(self)
        out["episodes"] = [
            dict(episode=number, seed=record.seed, success=record.success,
                 episode_return=record.episode_return, length=record.length,
                 success_reported=record.success_reported)
            for number, record in enumerate(self.episodes, start=1)  # episode i holds index i - 1
        ]
        out["success_rate"] = self.success_rate if self.success_reported else None
        out["success_reported"] = self.success_reported
        out["mean_return"] = self.mean_return
        out["frame_size"] = list(self.frame_size) if self.frame_size else None
        return out


def run_rollout(
    ref: str | LoadedCheckpoint,
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
        ref: checkpoint reference (folder, run folder, bundled name, Hub id), or a checkpoint that
            ``rql_cli.io.resolve.load_checkpoint`` already loaded (``device`` and ``best`` then unused).
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
    video_path = _check_rollout_args(episodes, render, out, fps, size, max_episode_steps)
    loaded = ref if isinstance(ref, LoadedCheckpoint) else load_checkpoint(ref, resolve_device(device), best=best)
    env, report = _open_env(loaded, task, seed, fps, render, size, max_episode_steps, fast_render)
    try:
        policy = _policy(loaded, seed)
        if video_path is None:
            _run_episodes(report, env, policy, episodes, on_episode=on_episode)
        else:
            _film_episodes(report, env, policy, episodes, video_path, on_frame, on_episode)
    finally:
        env.close()
    return report


def _check_rollout_args(
    episodes: int, render: bool, out: Path | str | None, fps: float, size: tuple[int, int],
    max_episode_steps: int | None,
) -> Path | None:
    """Refuse bad arguments before anything is loaded; returns the video path (None without render)."""
    if episodes < 1:
        raise RQLError(f"--episodes must be at least 1, got {episodes}.")
    if not fps > 0:
        raise RQLError(f"--fps must be positive, got {fps}.")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise RQLError(f"max_episode_steps must be at least 1, got {max_episode_steps}.")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise RQLError(f"--size must be positive, got {width}x{height}.")
    if not render:
        return None
    video_path = Path(out if out is not None else "rollout.mp4").expanduser()
    rendering.check_video_path(video_path, width, height)
    return video_path


def _open_env(
    loaded: LoadedCheckpoint, task: int | None, seed: int, fps: float, render: bool, size: tuple[int, int],
    max_episode_steps: int | None, fast_render: bool,
) -> tuple[Env, RolloutReport]:
    """The env for the checkpoint's task (rendering or not), checked against its dims, and an empty report."""
    meta = loaded.meta
    task_name = meta.task_name
    task_number = task_name.resolve_task(task)
    width, height = (int(v) for v in size)
    if render:
        quality = rendering.FAST if fast_render else None
        env = rendering.make_render_env(task_name, task_number, width, height, max_episode_steps, quality=quality)
    else:
        env = make_eval_env(task_name, task_number, max_episode_steps=max_episode_steps)
    try:
        check_checkpoint_dims(loaded.resolved.ref, meta, *env_dims(env), "the environment", meta.env_id)
    except Exception:
        env.close()
        raise
    report = RolloutReport(
        checkpoint=str(loaded.folder), dataset=meta.dataset, env_id=task_name.env_id(task_number),
        task=task_number, step=meta.step, device=str(loaded.agent.device), seed=seed,
        max_episode_steps=int(max_episode_steps or episode_limit(task_name)), fps=fps,
    )
    return env, report


def _policy(loaded: LoadedCheckpoint, seed: int) -> PolicyFn:
    """The EMA policy with the same generator seed as ``evaluate_checkpoint``'s first task."""
    return chunk_policy(loaded.agent, make_generator(loaded.agent.device, seed * 1000))


def _run_episodes(
    report: RolloutReport, env: Env, policy: PolicyFn, episodes: int,
    on_step: Callable[[int, int, dict[str, Any], bool], None] | None = None,
    on_episode: EpisodeCallback | None = None,
) -> None:
    """Run the episodes into ``report``; ``on_step(episode_index, step, info, done)`` sees every state."""
    started = time.perf_counter()
    for index in range(episodes):
        step_callback = None if on_step is None else functools.partial(on_step, index)
        episode = replace(run_episode(env, policy, report.seed + index, on_step=step_callback), index=index)
        report.episodes.append(episode)
        if on_episode is not None:
            on_episode(EpisodeProgress(episode, done=index + 1, total=episodes, successes=report.successes))
    report.wall_time_s = time.perf_counter() - started


def _film_episodes(
    report: RolloutReport, env: Env, policy: PolicyFn, episodes: int, video_path: Path,
    on_frame: FrameCallback | None, on_episode: EpisodeCallback | None,
) -> None:
    """Run the episodes, streaming one labelled frame per state into the video at ``video_path``."""
    partial = video_path.with_name(f".{video_path.stem}.partial{video_path.suffix}")
    frames_per_episode = report.max_episode_steps + 1

    def on_step(index: int, step: int, info: dict[str, Any], done: bool) -> None:
        frame = rendering.render_frame(env)
        if report.frame_size is None:
            report.frame_size = (frame.shape[1], frame.shape[0])
        reported = bool(info.get("success_reported", True))
        solved = reported and bool(info.get("success", False))
        # An episode's last frame already counts it, so the video ends on the final tally.
        text = rendering.frame_label(
            index + 1, episodes, step, report.successes + int(done and solved), len(report.episodes) + int(done),
            success_reported=reported,
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
    checkpoint: LoadedCheckpoint | Path, out_path: Path, *, max_episode_steps: int | None = None
) -> Path:
    """Film one episode of a checkpoint (loaded, or its folder) at the default settings into ``out_path``.

    For ``rql push --video``; returns the video's path. If this process already imported mujoco
    without choosing a GL backend (glfw, which fails without a display), rendering happens in a
    fresh child process, which picks EGL and loads the (local) checkpoint folder itself; otherwise
    here, with the agent already loaded.
    """
    out_path = Path(out_path)
    folder = checkpoint.folder if isinstance(checkpoint, LoadedCheckpoint) else Path(checkpoint)
    if _gl_backend_settled_without_display():
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_render_one_episode, str(folder), out_path, max_episode_steps).result()
    in_process = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else str(folder)
    return _render_one_episode(in_process, out_path, max_episode_steps)


def _render_one_episode(
    checkpoint: str | LoadedCheckpoint, out_path: Path, max_episode_steps: int | None
) -> Path:
    report = run_rollout(checkpoint, episodes=1, render=True, out=out_path, max_episode_steps=max_episode_steps)
    assert report.video is not None  # a rendering rollout always writes its video
    return Path(report.video)


def _gl_backend_settled_without_display() -> bool:
    """mujoco is imported (so its GL backend is fixed) with no backend chosen and no display."""
    return "mujoco" in sys.modules and not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY")
