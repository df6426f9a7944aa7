"""Make OGBench manipulation datasets on this machine: ``rql data generate``.

One ``Generation`` says what to make; ``generate_dataset`` writes it as a train and a val file,
``generate_shards`` as a folder of shards laid out like the official 100M-transition sets. What each
dataset is collected with is in ``recipes.py``, one episode's procedure in ``oracle.py``, the worker
processes in ``workers.py`` and the resume cache in ``episode_cache.py``.

Files: ``{name}.npz`` (train) and ``{name}-val.npz`` are ``np.savez_compressed`` archives in the
official layout, N = episodes x ``episode_length`` rows, episodes back to back:

- ``observations``: (N, obs_dim) float32, the observation before the step.
- ``actions``: (N, 5) float32 in [-1, 1], the clipped action taken from that observation
  (relative effector x, y, z, yaw and gripper opening, normalised).
- ``terminals``: (N,) bool, True on the last row of each episode.
- ``qpos``: (N, nq) float32 and ``qvel``: (N, nv) float32, MuJoCo state before the step.
- ``button_states``: (N, num_buttons) int64, scene and puzzle only, button states before the step
  (int64 like the env's own array: ``env.unwrapped.set_state`` indexes with it).

ogbench's loader drops each episode's last row, so E episodes give E x (episode_length - 1)
transitions.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rql_cli.data.episode_cache import EpisodeCache
from rql_cli.data.recipes import DatasetRecipe, EpisodeSpec, Key, lookup_recipe
from rql_cli.data.workers import Episode, collect_episodes
from rql_cli.errors import RQLError


@dataclasses.dataclass(frozen=True)
class Generation:
    """What one ``rql data generate`` makes, where, and how.

    Episode k of split s (``'train'`` or ``'val'``) depends only on (seed, s, k): the same seed gives
    identical arrays for any ``workers``, and changing ``num_episodes`` keeps the episodes both runs
    share. Finished episodes are cached in ``{out_dir}/.{name}.partial/`` (a shard folder:
    ``.{folder}.partial/``) so an interrupted run picks up where it stopped; the cache is removed
    once every file is written.

    Attributes:
        name: a key of ``GENERATABLE``, e.g. ``'cube-single-play-v0'``.
        out_dir: folder for the files (a shard folder is made inside it); created if missing.
        num_episodes: train episodes (of a shard folder: in all); None: the official count
            (``GENERATABLE[name].num_episodes``).
        num_val_episodes: val episodes (of a shard folder: per shard); None: a tenth of
            ``num_episodes`` (of the shard size), at least 1.
        seed: base seed of every episode.
        workers: processes collecting episodes; 1 runs in this process.
        force: overwrite existing output files instead of refusing.
        episode_length: steps per episode; 1001 matches the official sets, shorter is for tests and
            quick looks.
        on_episode: called in this process as ``on_episode(done, total)`` after each episode (cached
            ones included), ``total`` counting train and val episodes.
    """

    name: str
    out_dir: Path
    num_episodes: int | None = None
    num_val_episodes: int | None = None
    seed: int = 0
    workers: int = 1
    force: bool = False
    episode_length: int = 1001
    on_episode: Callable[[int, int], None] | None = None

    @property
    def episodes(self) -> EpisodeSpec:
        """What every episode of this generation depends on."""
        return EpisodeSpec(self.name, self.seed, self.episode_length)

    def checked_counts(self, recipe: DatasetRecipe, val_base: int | None = None) -> tuple[int, int]:
        """(train episodes, val episodes) with the defaults filled in and checked. ``val_base``: the
        number of train episodes the default val count is a tenth of (default: all of them)."""
        num_episodes = recipe.num_episodes if self.num_episodes is None else self.num_episodes
        base = num_episodes if val_base is None else val_base
        num_val = max(1, base // 10) if self.num_val_episodes is None else self.num_val_episodes
        if num_episodes < 1:
            raise RQLError(f"num_episodes must be at least 1, got {num_episodes}.")
        if num_val < 1:
            # ogbench's loader cannot read an empty -val file.
            raise RQLError(f"num_val_episodes must be at least 1, got {num_val}.")
        if self.workers < 1:
            raise RQLError(f"workers must be at least 1, got {self.workers}.")
        if self.episode_length < 2:
            # The loader drops each episode's last row; one row would leave no transitions.
            raise RQLError(f"episode_length must be at least 2, got {self.episode_length}.")
        return num_episodes, num_val


def generate_dataset(request: Generation) -> list[Path]:
    """Collect a dataset and write ``{out_dir}/{name}.npz`` and ``{out_dir}/{name}-val.npz``.

    The files hold N = episodes x ``episode_length`` rows in the official layout (module docstring).

    Returns:
        ``[train_path, val_path]``.

    Raises:
        UnknownNameError: ``name`` is not in ``GENERATABLE``.
        RQLError: an output file exists and ``force`` is False, or a count is out of range.
        RuntimeError: a worker process died (rerun with ``workers=1`` to see why).
    """
    num_episodes, num_val_episodes = request.checked_counts(lookup_recipe(request.name))
    out_dir = Path(request.out_dir)
    train_path, val_path = _claim_output_paths(out_dir, request.name, request.force)
    cache = EpisodeCache(out_dir / f".{request.name}.partial", request.episodes)
    files = [(train_path, _keys("train", 0, num_episodes)), (val_path, _keys("val", 0, num_val_episodes))]
    _collect_and_write(request, cache, files, request.on_episode)
    cache.remove()
    return [train_path, val_path]


def generate_shards(request: Generation, shard_size: int) -> list[Path]:
    """Collect a dataset as a shard folder, laid out like the official 100M-transition sets.

    ``{out_dir}/{stem}-{size}-{version}/`` (e.g. ``cube-single-play-40k-v0``) holds
    ``{name}-000.npz``, ``{name}-000-val.npz``, ``{name}-001.npz``, ...: shard i has train episodes
    [i * shard_size, (i + 1) * shard_size) of the same seeded sequence ``generate_dataset`` draws (so the
    shards of a seed concatenate to the single file of that seed), and its own validation episodes.
    The last shard holds the remainder.

    Shards are written one at a time as they finish (memory: one shard's episodes); an interrupted
    run keeps its finished shards and its cached episodes and picks up where it stopped.

    Args:
        request: what to make; its ``num_val_episodes`` counts per shard.
        shard_size: train episodes per shard (the official 100M sets: 1000, i.e. 1M transitions).

    Returns:
        The training shards, in order.
    """
    recipe = lookup_recipe(request.name)
    if shard_size < 1:
        raise RQLError(f"shard_size must be at least 1 episode, got {shard_size}.")
    num_episodes, val_per_shard = request.checked_counts(recipe, val_base=shard_size)
    out_dir = Path(request.out_dir)
    folder = out_dir / shard_folder_name(request.name, num_episodes * (request.episode_length - 1))
    paths = _shard_paths(folder, request.name, -(-num_episodes // shard_size))
    cache_folder = out_dir / f".{folder.name}.partial"
    _claim_shard_folder(folder, paths, request.force, interrupted=cache_folder.is_dir())
    cache = EpisodeCache(cache_folder, request.episodes)
    total = num_episodes + len(paths) * val_per_shard
    done = 0
    for i, (train_path, val_path) in enumerate(paths):
        train_keys = _keys("train", i * shard_size, min((i + 1) * shard_size, num_episodes))
        val_keys = _keys("val", i * val_per_shard, (i + 1) * val_per_shard)
        if train_path.is_file() and val_path.is_file():  # written before an interruption
            if request.on_episode is not None:
                request.on_episode(done + len(train_keys) + len(val_keys), total)
        else:
            progress = _offset_progress(request.on_episode, done, total)
            _collect_and_write(request, cache, [(train_path, train_keys), (val_path, val_keys)], progress)
        done += len(train_keys) + len(val_keys)
    cache.remove()
    return [train for train, _ in paths]


def size_tag(transitions: int) -> str:
    """How OGBench names a dataset's size: 100_000_000 -> ``'100m'``, 1e9 -> ``'1b'``, 40_000 -> ``'40k'``."""
    for unit, letter in ((10**9, "b"), (10**6, "m"), (10**3, "k")):
        if transitions >= unit and transitions % unit == 0:
            return f"{transitions // unit}{letter}"
    return str(transitions)


def shard_folder_name(name: str, transitions: int) -> str:
    """The folder of a sharded set, named like the official ones: ``puzzle-4x4-play-100m-v0``."""
    stem, _, version = name.rpartition("-")
    return f"{stem}-{size_tag(transitions)}-{version}"


def _keys(split: str, start: int, stop: int) -> list[Key]:
    return [(split, k) for k in range(start, stop)]


def _collect_and_write(
    request: Generation, cache: EpisodeCache, files: list[tuple[Path, list[Key]]],
    on_episode: Callable[[int, int], None] | None,
) -> None:
    """Collect the episodes of every file in ``files`` ((path, its episodes)), then write them all."""
    jobs = [key for _, keys in files for key in keys]
    episodes = collect_episodes(jobs, request.episodes, cache, request.workers, on_episode)
    _write_npz_files([(path, _concatenate([episodes[key] for key in keys])) for path, keys in files])


def _offset_progress(
    on_episode: Callable[[int, int], None] | None, offset: int, total: int
) -> Callable[[int, int], None] | None:
    """One shard's progress reported as the whole folder's: ``offset`` episodes done before it."""
    if on_episode is None:
        return None
    return lambda done, _: on_episode(offset + done, total)


def _claim_output_paths(out_dir: Path, name: str, force: bool) -> tuple[Path, Path]:
    """The train and val paths; refuses existing files unless ``force``, and creates ``out_dir``."""
    train_path = out_dir / f"{name}.npz"
    val_path = out_dir / f"{name}-val.npz"
    existing = [p for p in (train_path, val_path) if p.exists()]
    if existing and not force:
        listed = " and ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise RQLError(f"{listed} already {verb}. Pass --force to overwrite, or choose another folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return train_path, val_path


def _shard_paths(folder: Path, name: str, num_shards: int) -> list[tuple[Path, Path]]:
    """(train, val) file of each shard: ``{name}-000.npz`` and ``{name}-000-val.npz``, ..."""
    width = max(3, len(str(num_shards - 1)))
    stems = [f"{name}-{i:0{width}d}" for i in range(num_shards)]
    return [(folder / f"{stem}.npz", folder / f"{stem}-val.npz") for stem in stems]


def _claim_shard_folder(folder: Path, paths: list[tuple[Path, Path]], force: bool, interrupted: bool) -> None:
    """Refuse a folder that already holds shards, unless ``force`` (which deletes them) or an
    interrupted run of the same folder is being resumed; creates the folder."""
    existing = [p for pair in paths for p in pair if p.exists()]
    if existing and not force and not interrupted:
        raise RQLError(f"{folder} already holds shards ({existing[0].name}, ...). Pass --force to overwrite, "
                       "or choose another folder.")
    if force:
        for path in existing:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _concatenate(episodes: list[Episode]) -> Episode:
    return {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}


def _write_npz_files(items: list[tuple[Path, Episode]]) -> None:
    """Write each archive under a temporary name in its folder, then move them all into place."""
    staged = []
    try:
        for path, arrays in items:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            staged.append(tmp)
            with open(tmp, "wb") as f:  # a file object, so numpy does not append '.npz' to the name
                np.savez_compressed(f, allow_pickle=False, **arrays)
        for (path, _), tmp in zip(items, staged, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
