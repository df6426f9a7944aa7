"""Datasets larger than memory: a folder of shards, one resident at a time.

The paper's two 100M-transition sets (``puzzle-4x4-play-100m-v0``, ``cube-quadruple-play-100m-v0``)
are folders of numbered ``.npz`` shards of 1M transitions each, every shard with its ``-val.npz``
beside it. The official code trains on one shard and moves to the next every 1000 gradient steps;
so do we, with two differences: the next shard is read in a background thread while the current one
trains (the update never waits for the disk unless loading is slower than ``swap_every`` steps), and
which shard a step uses is a function of the step alone, so a resumed run continues on the right one.

Memory: one shard is resident, plus the next one while it loads: about two shards whatever the folder
holds. Each shard is an ordinary ``OfflineDataset`` sampled by the ordinary ``ChunkSampler``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from zipfile import BadZipFile, ZipFile

import numpy as np

from rql_cli.data.dataset import ChunkSampler, OfflineDataset
from rql_cli.errors import DatasetError

VAL_SUFFIX = "-val.npz"


def list_shards(folder: Path) -> list[Path]:
    """The training shards of a shard folder, in order: every ``*.npz`` but ``*-val.npz``, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.npz") if not p.name.endswith(VAL_SUFFIX) and p.is_file())


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding at least one training shard."""
    return bool(list_shards(path))


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` of every array in an ``.npz``, read from the headers alone.

    Nothing is decompressed but each member's first bytes, so this is cheap for 1 GB shards.
    Raises DatasetError for a file that is not a readable archive of ``.npy`` arrays.
    """
    shapes = {}
    try:
        with ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                shapes[member[: -len(".npy")]] = (tuple(shape), dtype.str)
    except (OSError, BadZipFile, ValueError) as error:
        raise DatasetError(
            f"{path} is not a readable .npz archive of arrays ({type(error).__name__}: {error})."
        ) from None
    return shapes


def folder_fingerprint(folder: Path) -> dict[str, str | int]:
    """``{'file', 'size', 'sha256', 'shards'}`` of a shard folder without reading its shards.

    The digest covers every shard's name and size (hashing 100 GB of shards on every resume would take
    minutes); a shard replaced by one of another size, added or removed changes it.
    """
    shards = list_shards(folder)
    digest = hashlib.sha256()
    total = 0
    for shard in shards:
        size = shard.stat().st_size
        total += size
        digest.update(f"{shard.name}\t{size}\n".encode())
    return {"file": str(Path(folder).resolve()), "size": total, "sha256": digest.hexdigest(), "shards": len(shards)}


def folder_summary(folder: Path) -> dict[str, int]:
    """``{'shards', 'transitions', 'episodes'}`` of a shard folder, reading only each shard's terminals.

    Transitions count as ogbench's loader makes them: each episode's last row is dropped.
    """
    shards = list_shards(folder)
    episodes = rows = 0
    for shard in shards:
        rows += npz_shapes(shard)["terminals"][0][0]
        with np.load(shard) as file:
            episodes += int(np.count_nonzero(file["terminals"]))
    return {"shards": len(shards), "transitions": rows - episodes, "episodes": episodes}


@dataclass
class ShardSwap:
    """One change of resident shard.

    Attributes:
        step: the first gradient step trained on it.
        shard: its index in the folder's order.
        file: its name.
        load_seconds: time spent reading and preparing it (in the background when prefetched).
        wait_seconds: time the training loop waited for it (0 when it was ready in time).
    """

    step: int
    shard: int
    file: str
    load_seconds: float
    wait_seconds: float


class ShardRotation:
    """Hands out the chunk sampler of the shard due at a step, swapping shards as steps pass.

    Step ``s`` trains on shard ``(s // swap_every) % len(shards)``: steps 0..swap_every-1 on the first
    shard, and so on round the folder. A single file is a folder of one shard (never swapped).

    Args:
        shards: the training files, in order.
        load: reads one shard into an ``OfflineDataset`` on the sampling device (called in a background
            thread when ``prefetch``; never two at once).
        horizon: chunk length h of the samplers.
        swap_every: gradient steps per shard (the official code: 1000).
        prefetch: read the next shard in a background thread while the current one trains; without it
            the swap reads it in the training loop (the benchmark's comparison).
        on_swap: called with a ``ShardSwap`` whenever a shard becomes resident.
    """

    def __init__(
        self,
        shards: list[Path],
        load: Callable[[Path], OfflineDataset],
        horizon: int,
        swap_every: int,
        *,
        prefetch: bool = True,
        on_swap: Callable[[ShardSwap], None] | None = None,
    ):
        if not shards:
            raise DatasetError("A shard rotation needs at least one shard.")
        self.shards = [Path(p) for p in shards]
        self.horizon, self.swap_every = horizon, max(1, int(swap_every))
        self.prefetch = prefetch and len(self.shards) > 1
        self.on_swap = on_swap
        self._load = load
        self._current: int | None = None
        self._sampler: ChunkSampler | None = None
        self._pending: tuple[int, Future] | None = None
        self._loading: set[int] = set()  # shards being read right now (the resident count includes them)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rql-shard") if self.prefetch else None

    def shard_index(self, step: int) -> int:
        """The shard that gradient step ``step`` (0-based) trains on."""
        return (int(step) // self.swap_every) % len(self.shards)

    @property
    def current(self) -> int | None:
        """Index of the resident shard (None before the first call to ``sampler``)."""
        return self._current

    @property
    def resident(self) -> list[int]:
        """Indices of the shards held in memory now: the current one and any being read or read ahead."""
        with self._lock:
            held = set(self._loading)
            if self._current is not None:
                held.add(self._current)
            if self._pending is not None and self._pending[1].done() and not self._pending[1].exception():
                held.add(self._pending[0])
            return sorted(held)

    @property
    def dataset(self) -> OfflineDataset:
        """The resident shard's transitions."""
        if self._sampler is None:
            raise DatasetError("No shard is resident yet; ask for a step's sampler first.")
        return self._sampler.dataset

    def sampler(self, step: int) -> ChunkSampler:
        """The sampler of the shard due at ``step``, swapping (and reading ahead) when it changes."""
        due = self.shard_index(step)
        if due != self._current:
            self._swap_to(due, step)
        sampler = self._sampler
        assert sampler is not None, "_swap_to leaves the due shard resident"
        return sampler

    def _read(self, index: int) -> tuple[OfflineDataset, float]:
        with self._lock:
            self._loading.add(index)
        started = time.perf_counter()
        try:
            return self._load(self.shards[index]), time.perf_counter() - started
        finally:
            with self._lock:
                self._loading.discard(index)

    def _swap_to(self, index: int, step: int) -> None:
        # Drop the old shard first, so at most the current one and the one being read are held.
        self._sampler = None
        self._current = None
        waited = time.perf_counter()
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == index:
            dataset, load_seconds = pending[1].result()
        else:
            if pending is not None:  # read ahead for another step (a resumed run): let it finish, drop it
                pending[1].cancel() or pending[1].exception()
            del pending
            dataset, load_seconds = self._read(index)
        wait_seconds = time.perf_counter() - waited
        with self._lock:
            self._sampler = ChunkSampler(dataset, self.horizon)
            self._current = index
        del dataset
        if self.on_swap is not None:
            self.on_swap(ShardSwap(step=step, shard=index, file=self.shards[index].name,
                                   load_seconds=round(load_seconds, 3), wait_seconds=round(wait_seconds, 3)))
        if self._executor is not None:  # made when prefetching
            following = (index + 1) % len(self.shards)
            self._pending = (following, self._executor.submit(self._read, following))

    def close(self) -> None:
        """Stop reading ahead and release the shards."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._pending = None
        self._sampler = None
        self._current = None

    def __enter__(self) -> ShardRotation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
