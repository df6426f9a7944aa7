"""Finding Minari datasets on disk (and fetching them on request), shared by the data and env layers.

Minari keeps datasets under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), one folder per
id (``D4RL/pen/human-v2``) with ``data/`` inside. Its remote is a Hugging Face Hub namespace
(``MINARI_REMOTE``, default ``hf://farama-minari``) reached through huggingface_hub, so
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply. A dataset that is not on disk is never fetched unless
asked (``--download`` / ``rql data download``); either way a failure is one message at once, saying
which id, where we looked and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rql_cli.errors import DatasetNotFoundError, RQLError

if TYPE_CHECKING:
    from minari import MinariDataset


def dataset_folder(dataset_id: str) -> Path:
    """Where Minari keeps ``dataset_id``: ``$MINARI_DATASETS_PATH/<id>`` (default ``~/.minari/datasets``)."""
    root = os.environ.get("MINARI_DATASETS_PATH") or str(Path("~/.minari/datasets").expanduser())
    return Path(root) / dataset_id


def is_local(dataset_id: str) -> bool:
    """Whether the dataset's ``data/`` folder is on disk."""
    return (dataset_folder(dataset_id) / "data").is_dir()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(dataset_id: str, force: bool = False) -> Path:
    """Fetch ``dataset_id`` through minari's own remote support; returns its folder.

    Honours ``HF_HUB_OFFLINE`` (refused at once) and ``HF_ENDPOINT`` / ``MINARI_REMOTE`` (through
    huggingface_hub). Failures raise DatasetNotFoundError naming the id, the remote and the fix.
    """
    if _offline():
        raise DatasetNotFoundError(
            f"Minari dataset '{dataset_id}' cannot be downloaded: HF_HUB_OFFLINE is set. Unset it, or copy the "
            f"dataset folder to {dataset_folder(dataset_id)}."
        )
    import minari  # local: an optional heavy dependency, loaded only when a Minari dataset is used

    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        minari.download_dataset(dataset_id, force_download=force)
    except Exception as error:  # network, missing id, refused: minari raises many kinds
        raise DatasetNotFoundError(
            f"Downloading Minari dataset '{dataset_id}' from {remote} (endpoint {endpoint}) failed: "
            f"{type(error).__name__}: {error}. Check the id (`minari list remote`), the network, or copy the "
            f"dataset folder to {dataset_folder(dataset_id)}."
        ) from None
    return dataset_folder(dataset_id)


def load(dataset_id: str, *, download_missing: bool = False) -> MinariDataset:
    """``minari.load_dataset`` of a dataset on disk (fetched first when ``download_missing``)."""
    if not is_local(dataset_id):
        if not download_missing:
            root = dataset_folder(dataset_id).parent
            raise DatasetNotFoundError(
                f"Minari dataset '{dataset_id}' is not on disk: looked in {dataset_folder(dataset_id)} "
                f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', 'unset')}). Get it with "
                f"`rql data download minari:{dataset_id}` (or add --download), or copy it under {root}."
            )
        download(dataset_id)
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except Exception as error:
        raise RQLError(f"minari could not open '{dataset_id}' at {dataset_folder(dataset_id)}: {error}") from error
