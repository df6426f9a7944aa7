"""Peak memory and speed of training on a shard folder against the same transitions as one file.

A shard folder (the official 100M sets' layout) keeps one shard resident plus the next one being
read, so peak memory should stay near two shards however many the folder holds; with the reader in
a background thread a swap should not show in steps per second. This measures both:

    python benchmarks/shard_memory.py --source data/cube-single-play-v0.npz --shards 10
    python benchmarks/shard_memory.py --source ... --steps 800 --swap-every 100 --rounds 2

The source file is cut at episode boundaries into ``--shards`` shards (each with a small -val file)
in a scratch folder, unless it already exists. Each variant runs as its own `rql train` process
(small networks, no evaluation, eager update, one thread) and reports its peak resident memory
(``ru_maxrss`` from ``wait4``) and steps per second over the run after its first logged window (so a
swap that makes the loop wait counts). "One shard alone" is the floor: the process with one shard's
data. Variants alternate round by round; medians are printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = "cube-single-play-v0"
SMALL = ["actor_hidden_dims=[64,64]", "value_hidden_dims=[64,64]", "ensemble_size=2", "batch_size=256",
         "compile=off", "threads=1"]


def cut_into_shards(source: Path, folder: Path, shards: int) -> list[Path]:
    """Split ``source`` at episode boundaries into ``shards`` files (plus one-episode -val files)."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(source) as file:
        arrays = {k: file[k] for k in file.files}
    ends = np.flatnonzero(arrays["terminals"]) + 1
    groups = np.array_split(np.arange(len(ends)), shards)
    paths = []
    start = 0
    for index, group in enumerate(groups):
        stop = int(ends[group[-1]])
        part = {k: v[start:stop] for k, v in arrays.items()}
        first_end = int(ends[group[0]]) - start
        path = folder / f"{DATASET}-{index:03d}.npz"
        np.savez(path, **part)
        np.savez(folder / f"{DATASET}-{index:03d}-val.npz", **{k: v[:first_end] for k, v in part.items()})
        paths.append(path)
        start = stop
    return paths


def run(variant: str, data: list[str], out: Path, steps: int, swap_every: int) -> dict[str, float]:
    """One `rql train` process; its peak RSS (MiB), steps/s and wall time."""
    settings = [*SMALL, f"log_interval={max(1, steps // 10)}"]
    if variant == "shards, read at each swap":
        settings.append("shard_prefetch=false")
    command = [sys.executable, "-m", "rql_cli", "train", "--dataset", DATASET, *data, "--steps", str(steps),
               "--eval-episodes", "0", "--device", "cpu", "--shard-swap-every", str(swap_every), "--quiet",
               "--out", str(out)]
    for item in settings:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed:\n{process.stderr.read().decode()}")
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    # Over the whole run after the first window: a swap that makes the loop wait shows here.
    first, last = rows[0], rows[-1]
    speed = (float(last["step"]) - float(first["step"])) / (float(last["wall_time"]) - float(first["wall_time"]))
    waits = []
    if (out / "shards.csv").exists():
        with open(out / "shards.csv") as handle:
            waits = [float(row["wait_seconds"]) for row in csv.DictReader(handle)][1:]
    return {"rss": usage.ru_maxrss / 1024, "speed": speed, "wall": wall,
            "wait": sum(waits), "swaps": len(waits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help=f"A {DATASET}.npz with its -val.npz beside it.")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--swap-every", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="rql-shards-"))
    folder = work / f"{DATASET.removesuffix('-v0')}-{args.shards}shards-v0"
    if not folder.is_dir():
        cut_into_shards(args.source, folder, args.shards)
    shard_mib = sum(p.stat().st_size for p in folder.glob("*.npz")) / 2**20 / args.shards
    variants = {
        "one shard alone (a file)": ["--dataset-path", str(sorted(folder.glob(f"{DATASET}-000.npz"))[0])],
        "one file": ["--dataset-path", str(args.source)],
        "shards, read ahead": ["--dataset-path", str(folder)],
        "shards, read at each swap": ["--dataset-path", str(folder)],
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, data in variants.items():
            out = Path(tempfile.mkdtemp(prefix="run-", dir=work)) / "run"
            results[name].append(run(name, data, out, args.steps, args.swap_every))
    print(f"{args.shards} shards of ~{shard_mib:.0f} MiB on disk (npz) from {args.source}; {args.steps} steps, "
          f"a swap every {args.swap_every}; medians of {args.rounds} round(s)")
    print(f"{'variant':28s} {'peak RSS MiB':>13s} {'steps/s':>9s} {'waited s':>9s} {'swaps':>6s}")
    for name, rows in results.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in rows)
        print(f"{name:28s} {median('rss'):13.0f} {median('speed'):9.1f} {median('wait'):9.2f} {median('swaps'):6.0f}")


if __name__ == "__main__":
    main()
