"""Where a generation's episodes are collected: in this process, or in spawned worker processes, each
episode cached as it finishes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from rql_cli.data.episode_cache import EpisodeCache
from rql_cli.data.oracle import EpisodeCollector
from rql_cli.data.recipes import EpisodeSpec, Key

Episode = dict[str, np.ndarray]


def collect_episodes(
    jobs: list[Key], spec: EpisodeSpec, cache: EpisodeCache, workers: int,
    on_episode: Callable[[int, int], None] | None,
) -> dict[Key, Episode]:
    """Every episode of ``jobs``: cached ones first, then the missing ones, each cached as it comes.

    ``workers`` 1 collects here; more start that many spawned processes. ``on_episode(done,
    len(jobs))`` follows every episode, cached or new.
    """
    episodes: dict[Key, Episode] = {}

    def finished(key: Key, episode: Episode) -> None:
        episodes[key] = episode
        if on_episode is not None:
            on_episode(len(episodes), len(jobs))

    for key in jobs:
        episode = cache.load(key)
        if episode is not None:
            finished(key, episode)
    todo = [key for key in jobs if key not in episodes]
    if not todo:
        return episodes
    stream = _collect_here(todo, spec) if workers == 1 else _collect_in_processes(todo, spec, workers)
    try:
        for key, episode in stream:
            cache.save(key, episode)
            finished(key, episode)
    finally:
        stream.close()  # stops the collection now if on_episode raised or the user interrupted
    return episodes


def _collect_here(todo: list[Key], spec: EpisodeSpec) -> Generator[tuple[Key, Episode], None, None]:
    """Episodes of ``todo`` collected in this process, one after another, yielded as they finish."""
    collector = EpisodeCollector(spec)
    saved_global_state = np.random.get_state()  # the oracles draw from np.random; leave ours as it was
    try:
        for key in todo:
            yield key, collector.collect(*key)
    finally:
        np.random.set_state(saved_global_state)
        collector.close()


def _collect_in_processes(
    todo: list[Key], spec: EpisodeSpec, workers: int
) -> Generator[tuple[Key, Episode], None, None]:
    """Episodes of ``todo`` from ``workers`` spawned processes, yielded as they finish."""
    # MuJoCo and GL state must not cross a fork: each worker starts fresh and makes its own env.
    # An executor (unlike multiprocessing.Pool) fails instead of respawning a worker that cannot start.
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(spec,),
    )
    try:
        futures = [pool.submit(_collect_in_worker, key) for key in todo]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            "A dataset worker process died. Run with one worker (--workers 1) to see its error."
        ) from error
    finally:
        # On an interrupt, drop the queued episodes instead of waiting for them; finished ones are cached.
        pool.shutdown(wait=False, cancel_futures=True)


# Each spawned worker keeps one collector for all its episodes; it exists only inside that process.
_worker_collector: EpisodeCollector | None = None


def _init_worker(spec: EpisodeSpec) -> None:
    global _worker_collector
    _exit_with_parent(os.getppid())
    _worker_collector = EpisodeCollector(spec)


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker once ``parent`` is gone. A SIGTERM or SIGKILL of `rql data generate` ends it
    without its cleanup, and an idle worker would then wait on the pool's queue for ever (two of
    them, 560 MB each, outlived their parent by an hour). Finished episodes are in the parent's cache."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="rql-parent-watch", daemon=True).start()


def _collect_in_worker(key: Key) -> tuple[Key, Episode]:
    assert _worker_collector is not None, "worker used before _init_worker"
    return key, _worker_collector.collect(*key)
