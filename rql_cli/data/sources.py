"""Where transitions come from: OGBench files and shard folders, read through ogbench's own loader.

ogbench's loader downloads a missing file from a host our machines cannot reach and would hang,
so we look for both files first and fail at once with a message that says how to make them.

A shard folder (the official ``*-100m-v0`` sets, or ``rql data generate --shard-size``) is read one
shard at a time (``rql_cli.data.shards``); ``--dataset-path FOLDER`` or a ``--dataset-dir`` that is
itself such a folder selects it.

ogbench is imported inside the functions that read its files (it takes seconds to import).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rql_cli import minari_store
from rql_cli.data.dataset import OfflineDataset
from rql_cli.data.external import minari_arrays, plain_arrays
from rql_cli.data.shards import ShardRotation, ShardSwap, folder_fingerprint, is_shard_folder, list_shards
from rql_cli.envs.make import make_eval_env, make_registered_env
from rql_cli.errors import DatasetError, DatasetNotFoundError, RQLError
from rql_cli.names import ExternalName, ParsedName, parse_ogbench_name, parse_task_name
from rql_cli.spaces import as_box

if TYPE_CHECKING:
    from gymnasium import Env

DEFAULT_DATASET_DIR = Path("~/.ogbench/data")


@dataclass
class DataSpec:
    """Which dataset a run trains on and where its files are (JSON-friendly, kept in the run record).

    Attributes:
        name: dataset or singletask name, e.g. ``'cube-single-play-v0'``.
        dataset_dir: folder holding ``NAME.npz`` and ``NAME-val.npz`` (None: ``DEFAULT_DATASET_DIR``).
        dataset_path: the training ``.npz`` itself (its ``-val.npz`` beside it), or a shard folder; wins
            over ``dataset_dir``. A ``dataset_dir`` without ``NAME.npz`` that holds shards is a shard folder.
        task: reward task 1..5; None: the task in the name, else the family's default.
        fingerprint: the training file a run started on: ``{'file', 'size', 'sha256'}`` (absolute
            path, bytes, content hash), so a resume finds it from anywhere and refuses another file. For a
            shard folder: its path, total bytes, a digest of its shards' names and sizes, and ``shards``.
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

    @property
    def external(self) -> ExternalName | None:
        """The parsed name of a Minari dataset or a plain file's gymnasium env; None for OGBench."""
        parsed = parse_task_name(self.name)
        return parsed if isinstance(parsed, ExternalName) else None

    def training_file(self) -> Path:
        """The training .npz (or shard folder, or Minari dataset folder) this spec names.

        DatasetNotFoundError says where we looked.
        """
        external = self.external
        if external is not None and external.source == "minari":
            folder = minari_store.dataset_folder(external.ident)
            if not (folder / "data").is_dir():
                minari_store.load(external.ident)  # raises the message that says where we looked and how to get it
            return folder
        if external is not None:
            if self.dataset_path is None:
                raise DatasetNotFoundError(
                    f"{self.name} names the environment; give the data with --dataset-path FILE.npz "
                    "(observations, actions, rewards, terminals; optional masks, next_observations, timeouts)."
                )
            path = Path(self.dataset_path).expanduser()
            if not path.is_file():
                raise DatasetNotFoundError(f"Dataset file not found: {path}.")
            return path
        return resolve_dataset_path(
            self.name, Path(self.dataset_dir) if self.dataset_dir else None,
            Path(self.dataset_path) if self.dataset_path else None,
        )

    def training_files(self) -> list[Path]:
        """The files training reads in turn: the one .npz, or every shard of a shard folder."""
        file = self.training_file()
        return list_shards(file) if file.is_dir() and self.external is None else [file]

    @property
    def sharded(self) -> bool:
        """Whether training reads a folder of shards in turn."""
        return self.external is None and self.training_file().is_dir()

    @property
    def env_id(self) -> str:
        """The singletask name the rewards are relabelled for, e.g. ``'cube-single-play-singletask-task3-v0'``."""
        return parse_task_name(self.name).env_id(self.task)

    def with_fingerprint(self) -> DataSpec:
        """This spec with absolute paths and the fingerprint of its training file (or shard folder) now."""
        file = self.training_file().resolve()
        if self.external is not None:
            return replace(self, fingerprint=fingerprint(file))
        in_dir = self.dataset_path is None and not file.is_dir()
        return replace(
            self, dataset_dir=str(file.parent) if in_dir else None,
            dataset_path=None if in_dir else str(file), fingerprint=fingerprint(file),
        )

    def check_fingerprint(self) -> None:
        """Refuse to continue on a training file other than the one the run started on (both named)."""
        if not self.fingerprint:
            return
        now = fingerprint(self.training_file().resolve())
        if (now["size"], now["sha256"]) != (self.fingerprint.get("size"), self.fingerprint.get("sha256")):
            raise DatasetError(
                f"The run started on {self.fingerprint.get('file')} ({self.fingerprint.get('size'):,} bytes, "
                f"sha256 {str(self.fingerprint.get('sha256'))[:16]}...), but {now['file']} is now "
                f"{now['size']:,} bytes, sha256 {str(now['sha256'])[:16]}...: another file. Resuming on it would "
                "mix two datasets; restore the original file or start a new run."
            )

    def rotation(
        self, *, sparse_rewards: bool, device: torch.device | str, horizon: int, swap_every: int,
        prefetch: bool = True, on_swap: Callable[[ShardSwap], None] | None = None,
        relabel_env: Env | None = None,
    ) -> ShardRotation:
        """What training samples from: the one file, or the shard folder's shards in turn.

        A single file (or Minari dataset) loads through ``load`` (an OGBench file's validation file too,
        as ogbench reads both), relabelled in ``relabel_env`` when given; shards load through
        ``ShardLoader``, training arrays only, in its own env (it reads ahead in another thread).
        """
        files = self.training_files()
        load: Callable[[Path], OfflineDataset]
        if not self.sharded:
            def load(_: Path) -> OfflineDataset:
                return self.load(sparse_rewards=sparse_rewards, device=device, with_val=False,
                                 relabel_env=relabel_env).train
        else:
            load = ShardLoader(self.env_id, sparse_rewards=sparse_rewards, device=device).load
        return ShardRotation(files, load, horizon, swap_every, prefetch=prefetch, on_swap=on_swap)

    def load(
        self, *, sparse_rewards: bool, device: torch.device | str = "cpu", with_val: bool = True,
        relabel_env: Env | None = None,
    ) -> LoadedData:
        """``load_ogbench`` of this spec (of a shard folder: its first shard and that shard's val file).

        A Minari dataset or a plain file has no validation part (``val`` None) and no use for
        ``relabel_env``.
        """
        if self.external is not None:
            return load_external(self, sparse_rewards=sparse_rewards, device=device)
        return load_ogbench(
            self.name, task=self.task,
            dataset_dir=Path(self.dataset_dir) if self.dataset_dir else None,
            dataset_path=Path(self.dataset_path) if self.dataset_path else None,
            sparse_rewards=sparse_rewards, device=device, with_val=with_val, relabel_env=relabel_env,
        )


@dataclass
class LoadedData:
    """A training set, its validation set and where they came from."""

    train: OfflineDataset
    val: OfflineDataset | None
    env_id: str
    """The singletask env id the rewards were relabelled for, e.g. cube-single-play-singletask-v0."""
    train_path: Path


def fingerprint(path: Path) -> dict[str, str | int]:
    """``file_fingerprint`` of a file, ``folder_fingerprint`` of a shard folder, ``tree_fingerprint``
    of another folder (a Minari dataset)."""
    path = Path(path)
    if not path.is_dir():
        return file_fingerprint(path)
    return folder_fingerprint(path) if is_shard_folder(path) else tree_fingerprint(path)


def tree_fingerprint(folder: Path) -> dict[str, str | int]:
    """``{'file', 'size', 'sha256'}`` of a folder: its path, total bytes, and a digest of every file's
    relative name and content (a Minari dataset: metadata and HDF5 data)."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        total += path.stat().st_size
        digest.update(f"{path.relative_to(folder)}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"file": str(Path(folder).resolve()), "size": total, "sha256": digest.hexdigest()}


def file_fingerprint(path: Path) -> dict[str, str | int]:
    """``{'file': absolute path, 'size': bytes, 'sha256': hex digest}`` of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": str(Path(path).resolve()), "size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def _holds_shards_of(folder: Path, stem: str) -> bool:
    """Whether ``folder`` itself is a shard folder of dataset ``stem``: its shards are named after the
    dataset (``cube-double-play-v0-000.npz``). A folder of other datasets' single files is not one,
    so asking it for a dataset it lacks is "not found", never another dataset's file."""
    prefix = stem.rpartition("-")[0]  # cube-double-play-v0 -> cube-double-play, as generate names shards
    shards = list_shards(folder)
    return bool(shards) and all(shard.name.startswith(prefix) for shard in shards)


def resolve_dataset_path(name: str | ParsedName, dataset_dir: Path | None, dataset_path: Path | None) -> Path:
    """The training file (or shard folder) for ``name``; raises DatasetNotFoundError naming where we looked.

    ``dataset_path`` is the training .npz or a shard folder. Otherwise ``dataset_dir`` (default
    ``DEFAULT_DATASET_DIR``) holds ``NAME.npz``, or is itself a shard folder.
    """
    parsed = parse_ogbench_name(name)
    stem = parsed.dataset_name
    if parsed.folder_name is not None and dataset_path is None:  # puzzle-4x4-play-100m-v0: a shard folder
        directory = Path(dataset_dir or DEFAULT_DATASET_DIR).expanduser()
        if is_shard_folder(directory / parsed.folder_name):
            return directory / parsed.folder_name
        if _holds_shards_of(directory, stem):
            return directory
        raise DatasetNotFoundError(
            f"Dataset '{parsed.folder_name}' not found: no shard folder at {directory / parsed.folder_name}. "
            f"Put the official folder there (its .npz shards inside), or pass it with --dataset-path."
        )
    if dataset_path is not None and Path(dataset_path).expanduser().is_dir():
        folder = Path(dataset_path).expanduser()
        single = folder / f"{stem}.npz"
        if is_shard_folder(folder) and not single.is_file():
            return folder
        what = f"holds {single.name}, not shards" if single.is_file() else "holds no .npz shards"
        raise DatasetNotFoundError(
            f"--dataset-path {dataset_path} is a folder that {what}; pass the training .npz itself "
            f"(e.g. {single}), or use --dataset-dir {dataset_path}."
        )
    if dataset_path is not None:
        candidates = [Path(dataset_path).expanduser()]
    else:
        directory = Path(dataset_dir or DEFAULT_DATASET_DIR).expanduser()
        candidates = [directory / f"{stem}.npz"]
        if not candidates[0].is_file() and _holds_shards_of(directory, stem):
            return directory
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
            f"official {stem}.npz and {stem}-val.npz (a folder of shards: --dataset-path FOLDER)."
        )
    return train


def load_ogbench(
    name: str | ParsedName,
    *,
    task: int | None = None,
    dataset_dir: Path | None = None,
    dataset_path: Path | None = None,
    sparse_rewards: bool = False,
    device: torch.device | str = "cpu",
    with_val: bool = True,
    relabel_env: Env | None = None,
) -> LoadedData:
    """Load an OGBench dataset through ``ogbench.make_env_and_datasets`` with singletask rewards.

    Official files and files made by ``rql data generate`` load the same way. ``task`` picks the
    reward task (None: the name's, else the default); ``sparse_rewards`` as in ``RQLConfig``. The
    rewards are relabelled in the task's own env (``rql_cli.envs.make``): ``relabel_env`` when given
    (an env of that task the caller keeps, e.g. its evaluation env; only reset here), else one built
    and closed here.
    """
    import ogbench

    parsed = parse_ogbench_name(name)
    train_path = resolve_dataset_path(parsed, dataset_dir, dataset_path)
    if train_path.is_dir():
        train_path = list_shards(train_path)[0]
    env_id = parsed.env_id(task)
    env = make_eval_env(parsed, task) if relabel_env is None else relabel_env
    try:
        train, val = ogbench.make_env_and_datasets(
            env_id, dataset_path=str(train_path), compact_dataset=False, dataset_only=True, cur_env=env
        )
    except Exception as error:  # ogbench raises plain errors for names and files alike
        raise _unreadable(env_id, train_path, error) from error
    finally:
        if relabel_env is None:
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


class ShardLoader:
    """Reads shards of one dataset with ogbench's own file reader and singletask relabelling.

    The relabelling env is made once and reused for every shard (ogbench's ``cur_env`` route); only the
    training arrays are read (a shard's ``-val.npz`` is not needed to train). Used from one thread at
    a time (``ShardRotation`` reads one shard at once).
    """

    def __init__(self, env_id: str, *, sparse_rewards: bool, device: torch.device | str):
        self.env_id, self.sparse_rewards, self.device = env_id, sparse_rewards, device
        self._env: Env | None = None

    def load(self, path: Path) -> OfflineDataset:
        """One shard as an ``OfflineDataset`` on ``device``, rewards relabelled for ``env_id``."""
        from ogbench.utils import load_dataset, relabel_dataset

        singletask = parse_task_name(self.env_id).gym_id()  # the env id without the dataset type
        if self._env is None:
            self._env = make_eval_env(self.env_id)
        env = self._env
        try:
            arrays = load_dataset(str(path), compact_dataset=False, add_info=True)
            # The base env: its reset runs outside make_eval_env's warnings filter, which is not
            # thread-safe (shards after the first are read in a background thread).
            relabel_dataset(singletask, env.unwrapped, arrays)
        except Exception as error:
            raise _unreadable(self.env_id, Path(path), error) from error
        return OfflineDataset.from_arrays(arrays, sparse_rewards=self.sparse_rewards, device=self.device)


def load_external(spec: DataSpec, *, sparse_rewards: bool, device: torch.device | str = "cpu") -> LoadedData:
    """A Minari dataset (read in bulk) or a plain .npz evaluated in a gymnasium env, as ``LoadedData``."""
    external = spec.external
    assert external is not None
    if external.source == "minari":
        arrays = minari_arrays(minari_store.load(external.ident))
    else:
        try:
            env = make_registered_env(external)
        except Exception as error:
            raise DatasetError(
                f"--env {external.ident}: gymnasium cannot make it ({type(error).__name__}: {error})."
            ) from None
        try:
            arrays = plain_arrays(spec.training_file(), as_box(env.action_space, f"{external.ident}'s action space"))
        finally:
            env.close()
    return LoadedData(
        train=OfflineDataset.from_arrays(arrays, sparse_rewards=sparse_rewards, device=device),
        val=None, env_id=external.env_id(), train_path=spec.training_file(),
    )
