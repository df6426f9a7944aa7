"""Where transitions come from: OGBench files, read through ogbench's own loader.

ogbench's loader downloads a missing file from a host our machines cannot reach and would hang,
so we look for both files first and fail at once with a message that says how to make them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from rql_cli.data.dataset import OfflineDataset
from rql_cli.errors import DatasetError, DatasetNotFoundError, RQLError
from rql_cli.names import TaskName, parse_task_name

DEFAULT_DATASET_DIR = Path("~/.ogbench/data")


@dataclass
class DataSpec:
    """Which dataset a run trains on and where its files are (JSON-friendly, kept in the run record).

    Attributes:
        name: dataset or singletask name, e.g. ``'cube-single-play-v0'``.
        dataset_dir: folder holding ``NAME.npz`` and ``NAME-val.npz`` (None: ``DEFAULT_DATASET_DIR``).
        dataset_path: the training ``.npz`` itself (its ``-val.npz`` beside it); wins over the folder.
        task: reward task 1..5; None: the task in the name, else the family's default.
        fingerprint: the training file a run started on: ``{'file', 'size', 'sha256'}`` (absolute
            path, bytes, content hash), so a resume finds it from anywhere and refuses another file.
    """

    name: str
    dataset_dir: str | None = None
    dataset_path: str | None = None
    task: int | None = None
    fingerprint: dict[str, str | int] | None = None

    def location(self) -> dict[str, object]:
        """Where the files are, as the run record keeps it: dataset_dir, dataset_path, task, fingerprint."""
        return dict(dataset_dir=self.dataset_dir, dataset_path=self.dataset_path, task=self.task,
                    fingerprint=self.fingerprint)

    def training_file(self) -> Path:
        """The training .npz this spec names (DatasetNotFoundError saying where we looked)."""
        return resolve_dataset_path(
            self.name, Path(self.dataset_dir) if self.dataset_dir else None,
            Path(self.dataset_path) if self.dataset_path else None,
        )

    def with_fingerprint(self) -> DataSpec:
        """This spec with absolute paths and the fingerprint of its training file now."""
        file = self.training_file().resolve()
        return replace(
            self, dataset_dir=str(file.parent) if self.dataset_path is None else None,
            dataset_path=str(file) if self.dataset_path is not None else None, fingerprint=file_fingerprint(file),
        )

    def check_fingerprint(self) -> None:
        """Refuse to continue on a training file other than the one the run started on (both named)."""
        if not self.fingerprint:
            return
        now = file_fingerprint(self.training_file().resolve())
        if (now["size"], now["sha256"]) != (self.fingerprint.get("size"), self.fingerprint.get("sha256")):
            raise DatasetError(
                f"The run started on {self.fingerprint.get('file')} ({self.fingerprint.get('size'):,} bytes, "
                f"sha256 {str(self.fingerprint.get('sha256'))[:16]}...), but {now['file']} is now "
                f"{now['size']:,} bytes, sha256 {str(now['sha256'])[:16]}...: another file. Resuming on it would "
                "mix two datasets; restore the original file or start a new run."
            )

    def load(
        self, *, sparse_rewards: bool, device: torch.device | str = "cpu", with_val: bool = True
    ) -> LoadedData:
        """``load_ogbench`` of this spec."""
        return load_ogbench(
            self.name, task=self.task,
            dataset_dir=Path(self.dataset_dir) if self.dataset_dir else None,
            dataset_path=Path(self.dataset_path) if self.dataset_path else None,
            sparse_rewards=sparse_rewards, device=device, with_val=with_val,
        )


@dataclass
class LoadedData:
    """A training set, its validation set and where they came from."""

    train: OfflineDataset
    val: OfflineDataset | None
    env_id: str
    """The singletask env id the rewards were relabelled for, e.g. cube-single-play-singletask-v0."""
    train_path: Path


def file_fingerprint(path: Path) -> dict[str, str | int]:
    """``{'file': absolute path, 'size': bytes, 'sha256': hex digest}`` of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": str(Path(path).resolve()), "size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def resolve_dataset_path(name: str | TaskName, dataset_dir: Path | None, dataset_path: Path | None) -> Path:
    """The training file for ``name``; raises DatasetNotFoundError naming where we looked."""
    stem = parse_task_name(name).dataset_name
    if dataset_path is not None and Path(dataset_path).expanduser().is_dir():
        raise DatasetNotFoundError(
            f"--dataset-path {dataset_path} is a folder; pass the training .npz itself "
            f"(e.g. {Path(dataset_path) / (stem + '.npz')}), or use --dataset-dir {dataset_path}."
        )
    if dataset_path is not None:
        candidates = [Path(dataset_path).expanduser()]
    else:
        directory = Path(dataset_dir or DEFAULT_DATASET_DIR).expanduser()
        candidates = [directory / f"{stem}.npz"]
    train = candidates[0]
    val = train.with_name(train.name.replace(".npz", "-val.npz"))
    missing = [p for p in (train, val) if not p.is_file()]
    if missing:
        where = ", ".join(str(p) for p in missing)
        out_dir = train.parent
        raise DatasetNotFoundError(
            f"Dataset '{stem}' not found: no file at {where}. Downloads are not attempted. "
            f"Make it here with `rql data generate {stem} --out {out_dir}` "
            f"(add --episodes 100 for a quick set), or point --dataset-dir at a folder holding the "
            f"official {stem}.npz and {stem}-val.npz."
        )
    return train


def load_ogbench(
    name: str | TaskName,
    *,
    task: int | None = None,
    dataset_dir: Path | None = None,
    dataset_path: Path | None = None,
    sparse_rewards: bool = False,
    device: torch.device | str = "cpu",
    with_val: bool = True,
) -> LoadedData:
    """Load an OGBench dataset through ``ogbench.make_env_and_datasets`` with singletask rewards.

    Official files and files made by ``rql data generate`` load the same way. ``task`` picks the
    reward task (None: the name's, else the default); ``sparse_rewards`` as in ``RQLConfig``.
    """
    import ogbench  # noqa: F401  (registers the env ids)

    parsed = parse_task_name(name)
    train_path = resolve_dataset_path(parsed, dataset_dir, dataset_path)
    env_id = parsed.env_id(task)
    try:
        env, train, val = ogbench.make_env_and_datasets(
            env_id, dataset_path=str(train_path), compact_dataset=False
        )
    except Exception as error:  # ogbench raises plain errors for names and files alike
        raise _unreadable(env_id, train_path, error) from error
    env.close()
    return LoadedData(
        train=OfflineDataset.from_arrays(train, sparse_rewards=sparse_rewards, device=device),
        val=OfflineDataset.from_arrays(val, sparse_rewards=sparse_rewards, device=device)
        if with_val
        else None,
        env_id=env_id,
        train_path=train_path,
    )


def _unreadable(env_id: str, train_path: Path, error: Exception) -> RQLError:
    """The error for a dataset file ogbench could not read; never a hint to load it unsafely."""
    text = str(error)
    if "pickle" in text or isinstance(error, (OSError, EOFError)) or "zip" in text.lower():
        return DatasetError(
            f"{train_path} (or its -val.npz) is not a readable .npz archive of arrays ({type(error).__name__}); "
            "it may be truncated, or another kind of file. Regenerate it with `rql data generate`, or "
            "download the official file again. (rql never loads pickled data.)"
        )
    return DatasetError(f"ogbench could not load '{env_id}' from {train_path}: {text}")
