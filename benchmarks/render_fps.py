"""Frames per second of step + render on an OGBench env, at the model's own render quality and at
rql's fast settings (a 1024 shadow map, no multisampling; ``rql_cli.envs.render.FAST``).

Random actions from a seeded generator; frames are rendered offscreen with MUJOCO_GL=egl unless
set. Each quality gets its own env, so each GL context is created with its settings. Examples:

    python benchmarks/render_fps.py
    python benchmarks/render_fps.py --size 320x240 --frames 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rql_cli.envs.render import (
    FAST,
    make_render_env,
    mujoco_model,
    parse_size,
    render_frame,
)
from rql_cli.rollout import DEFAULT_SIZE


def frames_per_second(env, frames: int, warmup: int, seed: int, render: bool = True) -> float:
    """Steps (each followed by a render when ``render``) per wall-clock second."""
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=seed)
    started = None
    for index in range(warmup + frames):
        if index == warmup:
            started = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if render:
            render_frame(env)
        if terminated or truncated:
            env.reset()
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cube-single-play-v0")
    parser.add_argument("--size", default="x".join(map(str, DEFAULT_SIZE)), help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=60, help="timed frames per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = parse_size(args.size)

    for label, quality in (("model's own", None), ("fast", FAST)):
        env = make_render_env(args.dataset, width=width, height=height, quality=quality)
        settings = mujoco_model(env).vis.quality
        rate = frames_per_second(env, args.frames, args.warmup, args.seed)
        print(
            f"{args.dataset} {width}x{height} {label} (shadow map {settings.shadowsize}, "
            f"{settings.offsamples}x MSAA): {rate:.1f} frames/s step+render",
            flush=True,
        )
        env.close()
    env = make_render_env(args.dataset, width=width, height=height)
    print(f"{args.dataset} step only: {frames_per_second(env, 5 * args.frames, args.warmup, args.seed, render=False):.0f} steps/s")
    env.close()


if __name__ == "__main__":
    main()
