"""Checkpoints that ship with rql in the repository's ``checkpoints/`` folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rql_cli.io.checkpoint import task_results


def bundled_root() -> Path:
    """``$RQL_CHECKPOINTS`` if set, else the ``checkpoints/`` folder beside the package."""
    override = os.environ.get("RQL_CHECKPOINTS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "checkpoints"


def bundled_checkpoints() -> list[dict[str, Any]]:
    """One entry per bundled checkpoint folder: name, path, dataset, step and measured success."""
    root = bundled_root()
    if not root.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        config = json.loads((folder / "config.json").read_text())
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        task = next(iter(task_results(metrics)), {})
        rate = task.get("success_rate")
        entries.append(
            dict(
                name=folder.name,
                path=str(folder),
                dataset=config.get("dataset", "?"),
                step=config.get("step", "?"),
                success=f"{100 * rate:.1f}%" if rate is not None else "not measured",
                episodes=task.get("episodes", "-"),
            )
        )
    return entries
