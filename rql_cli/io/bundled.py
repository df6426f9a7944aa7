"""Checkpoints that ship with rql in the repository's ``checkpoints/`` folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rql_cli.errors import RQLError


@dataclass(frozen=True)
class BundledCheckpoint:
    """One bundled checkpoint as `rql list` shows it.

    Attributes:
        name: its folder name, which ``--checkpoint`` accepts.
        path: the folder.
        dataset: its dataset file stem.
        step: gradient steps it was trained for.
        success: measured success rate as text (``'14.0%'``), or why there is none.
        episodes: episodes behind that rate (0 when not measured).
        lineage: where a fine-tuned checkpoint came from (``CheckpointMeta.lineage``), else None.
    """

    name: str
    path: Path
    dataset: str
    step: int
    success: str
    episodes: int
    lineage: dict | None = None


def bundled_root() -> Path:
    """``$RQL_CHECKPOINTS`` if set, else the ``checkpoints/`` folder beside the package."""
    override = os.environ.get("RQL_CHECKPOINTS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "checkpoints"


def bundled_checkpoint_folders() -> dict[str, Path]:
    """Name -> folder of every bundled checkpoint (a folder with a config.json); reads no file."""
    root = bundled_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}


def bundled_checkpoints() -> list[BundledCheckpoint]:
    """Every bundled checkpoint with its dataset, step and measured success (for `rql list`).

    A checkpoint whose config.json or metrics.json cannot be read is listed with the problem
    instead of its numbers, so one broken folder never hides the others.
    """
    from rql_cli.io.checkpoint import read_meta
    from rql_cli.io.metrics import read_metrics

    entries = []
    for name, folder in bundled_checkpoint_folders().items():
        try:
            meta, _ = read_meta(folder)
        except RQLError:
            entries.append(BundledCheckpoint(name, folder, "unreadable config.json", 0, "-", 0))
            continue
        try:
            report = read_metrics(folder)
        except RQLError:
            report, success = None, "unreadable metrics.json"
        else:
            success = "not measured"
        if report is not None and report.tasks:
            first = report.tasks[0]
            success, episodes = f"{100 * first['success_rate']:.1f}%", int(first.get("episodes", 0))
        else:
            episodes = 0
        entries.append(BundledCheckpoint(name, folder, meta.dataset, meta.step, success, episodes, meta.lineage))
    return entries
