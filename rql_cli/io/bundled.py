"""Checkpoints that ship with rql: the repository's ``checkpoints/`` folder, which a wheel installs as
the package data ``rql_cli/bundled_checkpoints``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_files import CONFIG_FILE, VIDEO_SUFFIXES
from rql_cli.io.checkpoint_meta import read_meta
from rql_cli.io.metrics import METRICS_FILE, read_metrics

if TYPE_CHECKING:
    from rql_cli.io.checkpoint_meta import CheckpointMeta


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
        env_id: the singletask env it acts in ('' when config.json is unreadable).
        task: its task number (None when unknown).
        success_rate: the measured rate in [0, 1], None when not measured.
        success_ci95: its Wilson 95% interval, None when not measured.
        size_bytes: bytes on disk of the folder's files.
        video: file name of its rollout video, None when it has none.
    """

    name: str
    path: Path
    dataset: str
    step: int
    success: str
    episodes: int
    lineage: dict[str, Any] | None = None
    env_id: str = ""
    task: int | None = None
    success_rate: float | None = None
    success_ci95: tuple[float, float] | None = None
    size_bytes: int = 0
    video: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (`rql list --json`)."""
        out = {k: v for k, v in asdict(self).items() if k != "path"}
        out["path"] = str(self.path)
        out["success_ci95"] = list(self.success_ci95) if self.success_ci95 else None
        return out


def bundled_root() -> Path:
    """``$RQL_CHECKPOINTS`` if set; else the installed package data (a wheel install); else the
    repository's ``checkpoints/`` folder beside the package (a checkout or an editable install)."""
    override = os.environ.get("RQL_CHECKPOINTS")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]
    installed = package / "bundled_checkpoints"
    return installed if installed.is_dir() else package.parent / "checkpoints"


def bundled_checkpoint_folders() -> dict[str, Path]:
    """Name -> folder of every bundled checkpoint (a folder with a config.json); reads no file."""
    root = bundled_root()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}


def bundled_checkpoints() -> list[BundledCheckpoint]:
    """Every bundled checkpoint with its env, task, step, measured success and size (for `rql list`).

    A checkpoint whose config.json or metrics.json cannot be read is listed with the problem
    instead of its numbers, so one broken folder never hides the others.
    """
    return [_describe(name, folder) for name, folder in bundled_checkpoint_folders().items()]


def _describe(name: str, folder: Path) -> BundledCheckpoint:
    files = [p for p in folder.iterdir() if p.is_file()]
    described = BundledCheckpoint(
        name, folder, dataset=f"unreadable {CONFIG_FILE}", step=0, success="-", episodes=0,
        size_bytes=sum(p.stat().st_size for p in files),
        video=next((p.name for p in sorted(files) if p.suffix in VIDEO_SUFFIXES), None),
    )
    try:
        meta, _ = read_meta(folder)
    except RQLError:
        return described
    described = replace(described, dataset=meta.dataset, step=meta.step, lineage=meta.lineage,
                        env_id=meta.env_id, task=_task_of(meta))
    try:
        report = read_metrics(folder)
    except RQLError:
        return replace(described, success=f"unreadable {METRICS_FILE}")
    if report is None or not report.tasks:
        return replace(described, success="not measured")
    first = report.tasks[0]
    rate = float(first.success_rate)
    return replace(
        described, success=f"{100 * rate:.1f}%", episodes=int(first.episodes or 0), success_rate=rate,
        success_ci95=first.success_ci95,
        task=first.task or described.task,  # the task evaluated, where the name gives none
    )


def _task_of(meta: CheckpointMeta) -> int | None:
    try:
        return meta.task_name.task
    except (RQLError, ValueError):
        return None
