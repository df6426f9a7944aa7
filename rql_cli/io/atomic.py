"""Writes that a crash or a full disk can never leave half done (temporary name, fsync, rename), and
the one way our JSON records are read back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rql_cli.errors import RQLError


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (not atomic by itself: callers rename afterwards)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_bytes_synced(tmp, (json.dumps(payload, indent=2) + "\n").encode())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; RQLError naming the file when it is not JSON (or not text)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RQLError(f"{path} is not valid JSON: {error}.") from None


def fsync_folder_files(folder: Path) -> None:
    """fsync every file directly in ``folder`` (libraries such as safetensors write without it)."""
    for path in Path(folder).iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
