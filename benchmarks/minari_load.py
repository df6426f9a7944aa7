"""How long a Minari dataset takes to become training arrays: rql's bulk read against a loop per episode.

Minari's reader costs about 2 ms per episode whichever call makes it; rql reads every episode with
one ``storage.get_episodes`` call and concatenates with numpy. To have a dataset of a useful size
without a download, this turns an OGBench file (1M transitions for the official-size sets made by
`rql data generate`) into a Minari dataset with minari's own writer, once, then times:

- ``rql``: ``DataSpec('minari:ID').load()``: bulk read, flatten, masks, tensors;
- ``per-episode loop``: ``[dataset[i] for i in range(n)]`` (what a naive loader does), reading only.

    python benchmarks/minari_load.py --source data/cube-single-play-v0.npz
    python benchmarks/minari_load.py --source ... --piece 50     # 20,000 episodes of 50 steps

The Minari copy keeps OGBench's observations, actions and the task-2 rewards (its env is the
singletask env, so success is reported); episodes end by truncation, as OGBench's do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np



def make_minari_copy(source: Path, dataset_id: str, episodes: int | None, piece: int | None = None) -> int:
    """Write ``source`` (an OGBench .npz) as a Minari dataset; returns its transitions."""
    import minari
    import ogbench
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env_id = "cube-single-play-singletask-task2-v0"
    env, train, _ = ogbench.make_env_and_datasets(env_id, dataset_path=str(source), compact_dataset=False)
    ends = np.flatnonzero(train["terminals"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    if episodes is not None:
        starts, ends = starts[:episodes], ends[:episodes]
    if piece is not None:  # many short episodes: cut each into pieces of `piece` transitions
        cuts = [np.arange(a, b, piece) for a, b in zip(starts, ends)]
        starts = np.concatenate(cuts)
        ends = np.concatenate([np.minimum(c + piece, b) for c, b in zip(cuts, ends)])
    buffers = []
    for index, (start, stop) in enumerate(zip(starts, ends)):
        length = stop - start
        observations = np.concatenate([train["observations"][start:stop], train["next_observations"][stop - 1:stop]])
        truncations = np.zeros(length, bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(
            id=index, observations=observations, actions=train["actions"][start:stop],
            rewards=train["rewards"][start:stop], terminations=np.zeros(length, bool), truncations=truncations,
        ))
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env.spec, algorithm_name="ogbench play oracle",
                                       description=f"{source.name} (task 2 rewards) converted for a load benchmark")
    env.close()
    return int(sum(ends - starts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="An OGBench cube-single-play-v0 .npz.")
    parser.add_argument("--episodes", type=int, default=None, help="Convert only this many episodes.")
    parser.add_argument("--piece", type=int, default=None,
                        help="Cut episodes into pieces of this many steps (many short episodes, like D4RL's).")
    parser.add_argument("--root", type=Path, default=None, help="MINARI_DATASETS_PATH to use (default: temporary).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ["MINARI_DATASETS_PATH"] = str(args.root or tempfile.mkdtemp(prefix="rql-minari-"))
    from rql_cli.data.sources import DataSpec
    from rql_cli.minari_store import is_local, load

    dataset_id = f"ogbench/cube-single/play{'' if args.piece is None else f'-pieces{args.piece}'}-v0"
    if not is_local(dataset_id):
        started = time.perf_counter()
        transitions = make_minari_copy(args.source, dataset_id, args.episodes, args.piece)
        print(f"wrote {dataset_id} ({transitions:,} transitions) in {time.perf_counter() - started:.1f} s")
    spec = DataSpec(name=f"minari:{dataset_id}")
    bulk, loop = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        loaded = spec.load(sparse_rewards=False)
        bulk.append(time.perf_counter() - started)
        dataset = load(dataset_id)
        started = time.perf_counter()
        episodes = [dataset[i] for i in range(dataset.total_episodes)]
        loop.append(time.perf_counter() - started)
        del episodes
    stats = loaded.train.statistics()
    print(f"{stats['transitions']:,} transitions in {stats['episodes']:,} episodes, obs {stats['obs_dim']}, "
          f"actions {stats['action_dim']}; medians of {args.rounds} rounds")
    print(f"rql bulk load (arrays and tensors)   {statistics.median(bulk):7.2f} s")
    print(f"per-episode loop (reading only)      {statistics.median(loop):7.2f} s")


if __name__ == "__main__":
    main()
