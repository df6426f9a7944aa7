"""Frames from MuJoCo envs on headless machines: fast render settings, labels, video files.

Software rendering (EGL on Mesa's llvmpipe) spends most of a frame on the shadow map and on
multisampling, which the OGBench models set high (a 4096 shadow map, 4x MSAA). ``make_render_env``
lowers both before the first frame, which is when the GL context reads them.

Heavy imports (mujoco, ogbench, PIL, imageio) happen inside functions: a rollout without rendering
(and every other user of this module's checks) never pays for them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rql_cli.envs.make import make_eval_env
from rql_cli.errors import RQLError
from rql_cli.names import ParsedName

if TYPE_CHECKING:
    from gymnasium import Env
    from imageio.core.format import Format
    from mujoco import MjModel
    from PIL.ImageFont import FreeTypeFont, ImageFont


@dataclass(frozen=True)
class RenderQuality:
    """GL settings read when the render context is created (``model.vis.quality``).

    Attributes:
        shadow_size: side of the square shadow map in texels; the models ask for 4096.
        offsamples: multisamples (MSAA) of the offscreen buffer; 0 turns multisampling off.
    """

    shadow_size: int
    offsamples: int


FAST = RenderQuality(shadow_size=1024, offsamples=0)
"""Shadows stay (a 1024 map still gives soft, readable contact shadows); jagged edges are the cost."""

VIDEO_SUFFIXES = (".mp4", ".gif")


def mujoco_model(env: Env) -> MjModel:
    """The compiled ``mujoco.MjModel`` behind a (wrapped) env: OGBench manipspace and locomaze envs,
    and gymnasium's MujocoEnv. OGBench's manipspace envs compile it at their first ``reset``."""
    unwrapped = env.unwrapped
    model = getattr(unwrapped, "_model", None)  # ogbench manipspace (its .model raises before reset)
    if model is None:
        model = getattr(unwrapped, "model", None)
    if model is None:
        raise RuntimeError(
            f"{type(unwrapped).__name__} has no compiled MjModel yet; reset it before changing render settings."
        )
    return model


def apply_render_quality(env: Env, quality: RenderQuality = FAST) -> RenderQuality:
    """Set the shadow map size and multisampling of the env's model; returns the previous values.

    Must run before the env's first frame: the GL context reads these once, when it is created,
    and later changes are silently ignored (OGBench's manipspace envs keep their context).
    """
    model = mujoco_model(env)
    previous = RenderQuality(int(model.vis.quality.shadowsize), int(model.vis.quality.offsamples))
    model.vis.quality.shadowsize = int(quality.shadow_size)
    model.vis.quality.offsamples = int(quality.offsamples)
    return previous


def make_render_env(
    task_name: str | ParsedName,
    task: int | None = None,
    width: int = 320,
    height: int = 240,
    max_episode_steps: int | None = None,
    quality: RenderQuality | None = FAST,
) -> Env:
    """``make_eval_env`` with rendering, at ``quality`` (None keeps the model's own settings).

    Sets ``MUJOCO_GL=egl`` if the user has not chosen a backend, and renders one frame to check
    that rendering works (a clear error otherwise).

    Args:
        task_name: dataset or singletask name (or its parsed ``TaskName``).
        task: task number 1..5; None: the task in the name, else the family default.
        width, height: frame size in pixels; ``env.render()`` gives ``(height, width, 3)`` uint8.
        max_episode_steps: override the registered time limit (steps); None keeps OGBench's.
        quality: GL settings applied before the first frame; None keeps the model's own.
    """
    prepare = None if quality is None else functools.partial(apply_render_quality, quality=quality)
    return make_eval_env(
        task_name, task, render=True, width=width, height=height,
        max_episode_steps=max_episode_steps, before_first_frame=prepare,
    )


def render_frame(env: Env) -> np.ndarray:
    """The env's current state as an RGB frame ``(height, width, 3)`` uint8 (a fresh array)."""
    return np.asarray(env.unwrapped.render(), dtype=np.uint8)


def frame_label(
    episode: int, episodes: int, step: int, successes: int, finished: int, success_reported: bool = True
) -> str:
    """``'episode 2/3  step 57  success so far 1/1'``; ``episode`` counts from 1. Without a success
    signal (``success_reported`` False) the tally is left out: ``'episode 2/3  step 57'``."""
    label = f"episode {episode}/{episodes}  step {step}"
    return f"{label}  success so far {successes}/{finished}" if success_reported else label


@functools.cache
def _font(size: int) -> FreeTypeFont | ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # the fixed bitmap font


def label_frame(frame: np.ndarray, text: str, solved: bool = False) -> np.ndarray:
    """Draw ``text`` on a dark translucent strip across the top of ``frame``.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB; not modified.
        text: one line; the font scales with the frame height (about 5%, at least 8 px).
        solved: draw the text green instead of white (the task is solved at this step).

    Returns:
        A new ``(H, W, 3)`` uint8 frame.
    """
    from PIL import Image, ImageDraw

    height = frame.shape[0]
    font = _font(max(8, round(height * 0.05)))
    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pad = max(2, height // 80)
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.rectangle((0, 0, image.width, bottom + 2 * pad), fill=(0, 0, 0, 150))
    color = (120, 230, 120, 255) if solved else (255, 255, 255, 255)
    draw.text((2 * pad, pad + (0 - top) // 2), text, font=font, fill=color)
    return np.asarray(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))


def parse_size(text: str) -> tuple[int, int]:
    """``'640x480'`` -> ``(640, 480)`` (width, height); RQLError for anything else."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        width, height = int(parts[0]), int(parts[1])
        if 16 <= width <= 4096 and 16 <= height <= 4096:
            return width, height
        raise RQLError(f"--size {text}: width and height must each lie between 16 and 4096 pixels.")
    raise RQLError(f"--size expects WIDTHxHEIGHT in pixels, e.g. 640x480; got '{text}'.")


def check_video_path(path: Path, width: int, height: int) -> None:
    """Refuse, before any work, a video path or size the writer cannot honour exactly.

    H.264 (mp4) stores 4:2:0 colour, which needs even sides; imageio would otherwise pad the frames.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise RQLError(f"Cannot write a video to '{path}': use a name ending in .mp4 or .gif.")
    if suffix == ".mp4" and (width % 2 or height % 2):
        raise RQLError(
            f"An mp4 needs an even width and height, got {width}x{height}: "
            f"use --size {width + width % 2}x{height + height % 2}, or write a .gif."
        )


def open_video_writer(path: Path, fps: float) -> Format.Writer:
    """A streaming imageio writer for ``path`` (.mp4 via imageio-ffmpeg's H.264, or .gif).

    Append frames with ``writer.append_data(frame)`` and close it (it is a context manager);
    frames are encoded as they come, never held in memory together.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        return imageio.get_writer(path, mode="I", duration=1000.0 / fps, loop=0)
    # macro_block_size=1: keep the exact size (check_video_path already asked for even sides);
    # yuv420p so every player (browsers, QuickTime, the Hub's viewer) can show it.
    return imageio.get_writer(
        path, fps=fps, codec="libx264", quality=7, pixelformat="yuv420p", macro_block_size=1,
        ffmpeg_log_level="error",
    )
