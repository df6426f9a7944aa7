"""Shared fixtures: a tiny cube-single dataset made by our generator, once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

TINY_NAME = "cube-single-play-v0"


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """3 train + 1 val episodes of 101 rows (100 transitions each) of cube-single-play."""
    from rql_cli.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("data")
    generate_dataset(TINY_NAME, out, num_episodes=3, num_val_episodes=1, seed=0, episode_length=101)
    return out
