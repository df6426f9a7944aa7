"""A run folder's layout: its file names, what counts as one, and the checks before writing into one.

    RUN_DIR/
      train_config.json    the run record (``run_record.py``): dataset and where it lives, env id,
                           dims, the typed config, where it started from, what changed at which step
      metrics.csv          training losses every log_interval steps (``run_logs.py``)
      eval.csv             one row per evaluation
      curves.png           learning curves, redrawn after each evaluation (``curves.py``)
      .lock                held while a process trains here (``run_lock.py``)
      checkpoints/step_00010000/   checkpoint folders (``checkpoint.py``; listing and retention in
                           ``run_checkpoints.py``)

Run folders of format 1 kept the record in ``config.json`` (the name a checkpoint's own file has).
No heavy imports: the CLI checks folders with these before torch loads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_files import VELOCITY_FILE, is_checkpoint_folder

RUN_FILE = "train_config.json"
LEGACY_RUN_FILE = "config.json"  # format 1 run folders
CHECKPOINTS = "checkpoints"
CURVES_FILE = "curves.png"
LOCK_FILE = ".lock"
"""A run folder's lock while a process trains in it: ``{"pid", "host"}`` of that process."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``RUN_DIR/checkpoints/step_00001234``."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def is_run_dir(path: Path) -> bool:
    """A folder with ``checkpoints/`` and a run record (``train_config.json``, or format 1's)."""
    path = Path(path)
    has_record = (path / RUN_FILE).is_file() or (
        (path / LEGACY_RUN_FILE).is_file() and not (path / VELOCITY_FILE).exists()
    )
    return has_record and (path / CHECKPOINTS).is_dir()


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse a new run's folder that would overwrite something, or that cannot be written.

    A file, a checkpoint folder or any non-empty folder is refused, naming it; so is a folder that
    cannot be made (checked with a temporary file in its nearest existing ancestor, so a refused run
    leaves nothing behind).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RQLError(f"--out {run_dir} is a file; a run needs a folder. Choose another --out.")
    if (run_dir / VELOCITY_FILE).exists():
        raise RQLError(f"--out {run_dir} is a checkpoint folder; a new run would overwrite it. Choose another --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RQLError(
            f"--out {run_dir} already exists and is not empty; a new run never writes into it. Choose another --out."
        )
    ancestor = run_dir if run_dir.is_dir() else next(p for p in run_dir.absolute().parents if p.exists())
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise RQLError(
            f"Cannot write the run folder {run_dir}: {error.strerror or error}. Choose another --out."
        ) from None


def check_resumable(run_dir: Path) -> None:
    """Refuse --resume of something that is not a run folder, saying what it is and what to pass."""
    run_dir = Path(run_dir)
    if is_checkpoint_folder(run_dir):
        above = run_dir.parent.parent if run_dir.parent.name == CHECKPOINTS else None
        hint = f" Pass the run folder above it: `--resume {above}`." if above else ""
        raise RQLError(f"{run_dir} is a checkpoint folder, not a run folder.{hint}")
    if not is_run_dir(run_dir):
        raise RQLError(
            f"{run_dir} is not a run folder (one made by `rql train --out`, with {RUN_FILE} and {CHECKPOINTS}/)."
        )
