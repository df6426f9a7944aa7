"""The one checkpoint resolver behind every ``--checkpoint REF``.

Order: a local checkpoint folder; a local run folder (its latest checkpoint); the name of a
checkpoint bundled in ``checkpoints/``. Hub ids come next, in a later release.
"""

from __future__ import annotations

from pathlib import Path

from rql_cli.errors import CheckpointError
from rql_cli.io import run_files
from rql_cli.io.bundled import bundled_checkpoints


def resolve_checkpoint(ref: str) -> Path:
    """The checkpoint folder that ``ref`` names; raises CheckpointError saying what was tried."""
    path = Path(ref).expanduser()
    if (path / "config.json").is_file() and (path / "velocity.safetensors").exists():
        return path
    if path.is_dir() and run_files.is_run_dir(path):
        checkpoints = run_files.list_checkpoints(path)
        if not checkpoints:
            raise CheckpointError(f"Run folder {path} has no checkpoint yet.")
        return checkpoints[-1]
    if path.is_dir():
        if (path / "config.json").is_file():
            return path  # a checkpoint folder missing its weights: read_meta names what is missing
        raise CheckpointError(
            f"{path} is neither a checkpoint folder (config.json + velocity.safetensors + "
            "value.safetensors) nor a run folder (config.json + checkpoints/)."
        )
    bundled = {entry["name"]: Path(entry["path"]) for entry in bundled_checkpoints()}
    if ref in bundled:
        return bundled[ref]
    listed = f" Bundled: {', '.join(sorted(bundled))}." if bundled else ""
    raise CheckpointError(
        f"No checkpoint '{ref}': no such folder and no bundled checkpoint of that name.{listed} "
        "Pass a run folder (from `rql train --out`), a checkpoint folder inside its checkpoints/, "
        "or a name from `rql list`."
    )
