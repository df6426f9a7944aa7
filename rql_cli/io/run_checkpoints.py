"""A run's checkpoint folders: listing them, finishing what a crashed write left, retention, disk room."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_files import CONFIG_FILE, TRAIN_STATE_FILE
from rql_cli.io.metrics import read_metrics
from rql_cli.io.run_layout import CHECKPOINTS


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are skipped).

    Until the run starts again, step N's checkpoint may be its ``.step_N.old`` (``replaced_by_a_dead_write``).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        name = (replaced_by_a_dead_write(p) or p).name
        if p.is_dir() and name.startswith("step_") and (p / CONFIG_FILE).is_file():
            found.append((int(name.split("_")[1]), p))
    return [p for _, p in sorted(found)]


def replaced_by_a_dead_write(folder: Path) -> Path | None:
    """The ``step_N`` that a ``.step_N.old`` folder is the whole checkpoint of, when ``step_N`` is missing.

    ``save_checkpoint`` renames a whole ``step_N`` to ``.old`` before renaming the new ``.tmp`` in, and
    deletes an ``.old`` only while ``step_N`` exists: an ``.old`` without its ``step_N`` is what a write
    that died between the two renames was replacing, whole. None for any other folder.
    """
    name = folder.name
    if not (name.startswith(".step_") and name.endswith(".old") and folder.is_dir()):
        return None
    replaced = folder.with_name(name[1:-len(".old")])
    return None if replaced.exists() else replaced


def latest_resumable(run_dir: Path, files: tuple[str, ...] = ()) -> Path:
    """The run's newest checkpoint with a train state (and ``files``), which ``--resume`` continues from."""
    found = [p for p in list_checkpoints(run_dir)
             if all((p / name).is_file() for name in (TRAIN_STATE_FILE, *files))]
    if not found:
        needs = " and ".join(["a training state", *files])
        raise RQLError(f"{run_dir} has no checkpoint with {needs} to resume from.")
    return found[-1]


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete checkpoints beyond the newest ``keep`` and the best evaluated one; returns what went.

    ``keep`` 0 keeps everything. The best is the highest mean success rate in metrics.json (the
    newest of equals); a checkpoint with an unreadable metrics.json is kept, never guessed about.
    """
    checkpoints = list_checkpoints(run_dir)
    if keep <= 0 or len(checkpoints) <= keep:
        return []
    kept = set(checkpoints[-keep:])
    best: tuple[float, int, Path] | None = None
    for index, folder in enumerate(checkpoints):
        try:
            report = read_metrics(folder)
        except RQLError:
            kept.add(folder)
            continue
        if report is not None and report.tasks and (best is None or (report.mean_success_rate, index) > best[:2]):
            best = (report.mean_success_rate, index, folder)
    if best is not None:
        kept.add(best[2])
    removed = [folder for folder in checkpoints if folder not in kept]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def remove_unfinished_writes(run_dir: Path) -> list[Path]:
    """Finish what a crashed checkpoint write left: put back a replaced checkpoint, delete the rest.

    A ``.step_N.old`` without its ``step_N`` is renamed back to ``step_N`` (``replaced_by_a_dead_write``:
    it is whole; the new ``.tmp`` may be torn and nothing on disk tells, so it is never finished). Every
    other ``.step_*.tmp`` / ``.old`` is deleted; returns those. Call only while holding the run's lock:
    a live writer may be between its renames.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    for folder in list(root.iterdir()):
        replaced = replaced_by_a_dead_write(folder)
        if replaced is not None:
            os.replace(folder, replaced)
    leftovers = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".step_")
                 and p.name.endswith((".tmp", ".old"))]
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return leftovers


def check_disk_for_checkpoints(run_dir: Path, checkpoint_bytes: int, count: int) -> None:
    """Refuse a run whose ``count`` checkpoints of ``checkpoint_bytes`` each cannot fit on its disk."""
    needed = checkpoint_bytes * count
    free = shutil.disk_usage(Path(run_dir)).free
    if needed > free:
        raise RQLError(
            f"The run's checkpoints need about {needed / 2**20:,.0f} MiB ({count} of "
            f"{checkpoint_bytes / 2**20:,.1f} MiB) but {run_dir} has only {free / 2**20:,.0f} MiB free. "
            "Free some space, keep fewer checkpoints (--set keep_checkpoints=N) or choose another --out."
        )
