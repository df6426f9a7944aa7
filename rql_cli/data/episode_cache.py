"""Finished episodes of an interrupted ``rql data generate``, kept so that a rerun picks up where it stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from rql_cli.data.recipes import EpisodeSpec, Key

# Bump when the collection procedure changes, so cached partial episodes from an older version are
# not mixed into a new file.
_PROCEDURE_VERSION = 1


class EpisodeCache:
    """Finished episodes of one generation, one compressed npz per episode in ``folder``.

    A ``meta.json`` records what the episodes depend on (the ``EpisodeSpec`` and the procedure
    version); a cache made with other values is discarded rather than mixed in.
    """

    def __init__(self, folder: Path, spec: EpisodeSpec):
        self.folder = folder
        self.meta = {**dataclasses.asdict(spec), "procedure_version": _PROCEDURE_VERSION}
        meta_path = folder / "meta.json"
        if folder.exists():
            try:
                matches = json.loads(meta_path.read_text()) == self.meta
            except (OSError, ValueError):
                matches = False
            if not matches:
                shutil.rmtree(folder)
        if not folder.exists():
            folder.mkdir(parents=True)
            meta_path.write_text(json.dumps(self.meta, indent=2))

    def _path(self, key: Key) -> Path:
        split, index = key
        return self.folder / f"{split}-{index:06d}.npz"

    def load(self, key: Key) -> dict[str, np.ndarray] | None:
        """The cached episode ``key``, or None when it was not finished (or its file is torn)."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path) as file:
                return {k: file[k] for k in file.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a torn write: collect it again
            return None

    def save(self, key: Key, episode: dict[str, np.ndarray]) -> None:
        """Keep episode ``key``, written under a temporary name and moved into place."""
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, allow_pickle=False, **episode)
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
