"""The names of the files in a checkpoint folder, and how to tell such a folder, in one place.

What the files hold, and their readers and writers, are in ``checkpoint.py`` (``metrics.json`` in
``metrics.py``). This module imports nothing, so the path checks that run before any work (the
resolver, ``rql train --out``, ``--resume``) and ``rql --help`` never pay for torch.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
VELOCITY_FILE = "velocity.safetensors"
VALUE_FILE = "value.safetensors"
WEIGHT_FILES = (VELOCITY_FILE, VALUE_FILE)
TRAIN_STATE_FILE = "train_state.safetensors"
REQUIRED_FILES = (CONFIG_FILE, *WEIGHT_FILES)
"""What every checkpoint folder holds; the train state is optional (a shared checkpoint may lack it)."""
VIDEO_SUFFIXES = (".mp4", ".gif")
"""A checkpoint folder (a bundled or a pushed one) may hold its rollout video: ``rollout.mp4`` or ``.gif``."""


def is_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint's config and velocity weights (the resolver's and the
    run-folder checks' test; loading checks every file)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / VELOCITY_FILE).exists()
