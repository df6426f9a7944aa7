"""Gradient steps per second of our training update against the official JAX code (aoberai/rql at
229c956), alternating in one run on the machine at hand.

The official side lives in a scratch folder outside the repository (default ~/.cache/rql-bench): its
source unpacked from a git mirror (or copied from --official-src), and a virtualenv with jax for CPU
and the requirements its update imports, from the package index. Both are made on the first run and
reused. It is driven the way its main.py drives it: ``RQLAgent.create`` on an example batch, then
``agent.update(dataset.sample(batch_size))`` with the official ``Dataset``'s own window sampler and
the update jit-compiled. Its windows come from a small cube-single set (a few episodes generated once
with ``rql data generate``, or the file in --dataset-dir), rewards relabelled as ``rql train`` loads them.

Our side is ``train_throughput.measure``, unchanged: what ``benchmarks/train_throughput.py --modes
compiled`` measures (its synthetic cube-single-shaped data, its sampler, eager or torch.compile).

Each measurement runs in its own process and prints one JSON line; the parent alternates official and
ours round by round, so a machine that gets busier drifts both alike, and prints the median of each
and ours/official. Warm-up steps (which hold the jit compile) are not timed; the timed steps include
sampling the batch, on both sides, as training does.

    python benchmarks/vs_official.py                                   # paper and small-cpu, 3 rounds
    python benchmarks/vs_official.py --quick                           # small-cpu, few steps, 1 round
    python benchmarks/vs_official.py --dataset-dir /work/data --threads 1
    python benchmarks/vs_official.py --setup-only                      # make the scratch folder, print versions

Threads: ``--threads N`` (default: every usable core) gives both sides N. When N is below the usable
cores both are pinned to the same first N of them (XLA sizes its pools from the affinity), and at
N = 1 XLA also gets ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``; ours gets
``torch.set_num_threads(N)`` through our own thread set-up with adaptation off. ``--threads 0``
leaves each side its default: XLA takes every core, ours adapts to the cores others leave free as
``rql train`` does.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

# this folder is on the path when run as a script; train_throughput imports only the standard library
# at the top, so the official side's virtualenv can read its CONFIGS too
import train_throughput as throughput

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_REPO, OFFICIAL_COMMIT = "aoberai/rql", "229c956"
DEFAULT_MIRROR = Path("/work/.mirror/aoberai+rql/repo")
DEFAULT_SCRATCH = Path("~/.cache/rql-bench")
DATASET = "cube-single-play-v0"

OFFICIAL_NAMES = {"actor_hidden_dims": "actor_hidden_dims", "value_hidden_dims": "value_hidden_dims",
                  "ensemble_size": "ensemble_ct", "flow_steps": "flow_steps", "horizon": "h",
                  "batch_size": "batch_size"}
"""Our name of each benchmarked hyperparameter -> the official config's name for it."""

NOT_IMPORTED_BY_UPDATE = {"ogbench", "matplotlib", "moviepy", "wandb"}
"""Official requirements only main.py's environments, logging and videos use (--all-requirements keeps them)."""
UNLISTED_IMPORTS = ["einops"]
"""Imported by the official agents/rql.py and utils/networks.py but missing from its requirements.txt."""

WINDOW_FIELDS = ("observations", "actions", "rewards", "masks", "terminals")
"""What the official ``Dataset.sample_traj`` reads."""

VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "distrax", "numpy")


# ------------------------------------------------------------------------------------------------
# The children: one measurement each, one JSON line on stdout
# ------------------------------------------------------------------------------------------------
def pin_threads(threads: int) -> int:
    """Restrict this process to the first ``threads`` usable CPUs when fewer than all; return the count
    it may use. Both sides call it before importing their framework, so both see the same cores."""
    cpus = sorted(os.sched_getaffinity(0))
    if 0 < threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
        return threads
    return len(cpus)


def measure_official(source: Path, windows: Path, config_name: str, steps: int, warmup: int,
                     threads: int, device: str, precision: str) -> dict[str, Any]:
    """Official ``RQLAgent.update`` steps per second, driven as its main.py does (jit, own sampler).

    ``precision``: JAX's ``jax_default_matmul_precision`` for the run ('' leaves JAX's default, which
    lets float32 matmuls use TF32 on a GPU)."""
    import resource
    from importlib.metadata import version

    cores = pin_threads(threads) if device == "cpu" else None
    sys.path.insert(0, str(source))
    import jax
    import numpy as np

    if precision:
        jax.config.update("jax_default_matmul_precision", precision)
    from agents.rql import RQLAgent, get_config
    from utils.datasets import Dataset

    config = get_config()
    for ours, theirs in OFFICIAL_NAMES.items():
        value = throughput.CONFIGS[config_name][ours]
        config[theirs] = tuple(value) if isinstance(value, list) else value
    with np.load(windows) as arrays:
        dataset = Dataset.create(**{name: arrays[name] for name in WINDOW_FIELDS})
    dataset.config = config  # main.py's switch to action-chunk windows (h + 1 rows each)
    np.random.seed(0)
    agent = RQLAgent.create(0, *(dataset.sample(1)[key] for key in ("observations", "actions")), config)
    batch_size = config["batch_size"]

    started = time.perf_counter()
    agent, info = agent.update(dataset.sample(batch_size))
    jax.block_until_ready((agent, info))
    compile_seconds = time.perf_counter() - started  # trace, XLA compile and the first step
    for _ in range(max(0, warmup - 1)):
        agent, info = agent.update(dataset.sample(batch_size))
    jax.block_until_ready((agent, info))
    started = time.perf_counter()
    for _ in range(steps):
        agent, info = agent.update(dataset.sample(batch_size))  # dispatch is asynchronous, as in main.py
    jax.block_until_ready((agent, info))
    elapsed = time.perf_counter() - started
    memory = jax.devices()[0].memory_stats() if device == "cuda" else None  # None on a CPU
    return {
        "steps_per_second": steps / elapsed, "compile_seconds": compile_seconds,
        "gflops": throughput.update_flops(throughput.CONFIGS[config_name]) * steps / elapsed / 1e9,
        "peak_mib": (memory["peak_bytes_in_use"] / 2**20 if memory
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": {"cores": cores, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "os_threads": len(os.listdir("/proc/self/task"))},
        "devices": [str(d) for d in jax.devices()], "windows": len(dataset["terminals"]),
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "JAX's default"),
        "versions": {name: version(name) for name in VERSION_PACKAGES},
        "total_loss": float(info["total_loss"]),
    }


def measure_ours(config_name: str, mode: str, steps: int, warmup: int, threads: int, device: str) -> dict[str, Any]:
    """``train_throughput.measure`` on ``device``, with a CPU's ``threads`` fixed when > 0."""
    if device == "cpu":
        pin_threads(threads)
    import torch

    if threads > 0 and device == "cpu":
        from rql_cli.training import runtime

        adaptive_default = runtime.configure_threads
        # measure() asks for 0 (adapt, as rql train does); the comparison wants a fixed count on both sides
        runtime.configure_threads = lambda _requested, device, spread=None: adaptive_default(threads, device, spread)
    result = throughput.measure(config_name, mode, device, steps, warmup, profile=False)
    return dict(result, versions={"torch": torch.__version__})


# ------------------------------------------------------------------------------------------------
# Setting up the official side and the data (the parent, once; cached in the scratch folder)
# ------------------------------------------------------------------------------------------------
def unpack_official(folder: Path, mirror: Path, official_src: Path | None) -> str:
    """The official source in ``folder`` (made once); returns where it came from."""
    if (folder / "agents" / "rql.py").is_file():
        return (folder / "ORIGIN").read_text().strip() if (folder / "ORIGIN").is_file() else str(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if official_src is not None:
        shutil.copytree(official_src, partial, ignore=shutil.ignore_patterns(".git"))
        origin = f"copied from {official_src.resolve()}"
    elif mirror.exists():
        archive = subprocess.run(["git", "--git-dir", str(mirror), "archive", "--format=tar", OFFICIAL_COMMIT],
                                 check=True, capture_output=True).stdout
        partial.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        origin = f"{OFFICIAL_REPO} at {OFFICIAL_COMMIT} (git mirror {mirror})"
    else:
        sys.exit(f"No official source: no git mirror at {mirror} and no --official-src. Clone it with "
                 f"`git clone https://github.com/{OFFICIAL_REPO} DIR && git -C DIR checkout {OFFICIAL_COMMIT}` "
                 "and pass --official-src DIR (or --mirror DIR.git).")
    if not (partial / "agents" / "rql.py").is_file():
        sys.exit(f"{official_src or mirror} holds no agents/rql.py: not the official RQL source.")
    (partial / "ORIGIN").write_text(origin + "\n")
    partial.rename(folder)
    return origin


def official_requirements(source: Path, jax_spec: str, everything: bool) -> list[str]:
    """The official requirements.txt with jax for CPU, less what only main.py's envs and logging use,
    plus the imports it forgot to list."""
    wanted = []
    for line in (source / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if not line or (name in NOT_IMPORTED_BY_UPDATE and not everything):
            continue
        wanted.append(jax_spec if name == "jax" else line.replace(" ", ""))
    return wanted + [name for name in UNLISTED_IMPORTS if name not in wanted]


def make_virtualenv(folder: Path, requirements: list[str]) -> Path:
    """A virtualenv in ``folder`` with ``requirements`` (remade only when they change); its python."""
    python, marker = folder / "bin" / "python", folder / "rql-bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("requirements") == requirements:
        return python
    print(f"making {folder}: pip install {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
                   check=True)
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
    marker.write_text(json.dumps({"requirements": requirements, "freeze": frozen.split()}, indent=1))
    return python


def dataset_file(dataset_dir: Path | None, scratch: Path, episodes: int) -> Path:
    """``DATASET``'s training file: in ``dataset_dir``, else a few episodes generated once into scratch."""
    if dataset_dir is not None:
        return dataset_dir.expanduser() / f"{DATASET}.npz"
    folder = scratch / f"data-{episodes}"
    if not (folder / f"{DATASET}.npz").is_file():
        print(f"generating {episodes} episodes of {DATASET} into {folder}", flush=True)
        subprocess.run([sys.executable, "-m", "rql_cli", "data", "generate", DATASET, "--episodes", str(episodes),
                        "--val-episodes", "1", "--workers", "1", "--out", str(folder), "--quiet"],
                       check=True, env=throughput.tree_env(REPO))
    return folder / f"{DATASET}.npz"


def official_windows(train_file: Path, scratch: Path) -> Path:
    """The arrays the official sampler reads, as ``rql train`` loads ``train_file`` (rewards relabelled
    for the default task), saved once per file in scratch."""
    import numpy as np

    stat = train_file.stat()
    key = hashlib.sha256(f"{train_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = scratch / "windows" / f"{DATASET}-{key}.npz"
    if out.is_file():
        return out
    from rql_cli.data.sources import load_ogbench

    train = load_ogbench(DATASET, dataset_dir=train_file.parent, with_val=False).train
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.stem + ".partial.npz")
    np.savez(partial, **{name: getattr(train, name).numpy() for name in WINDOW_FIELDS})
    partial.rename(out)
    return out


# ------------------------------------------------------------------------------------------------
# The parent: set-up, rounds, the table
# ------------------------------------------------------------------------------------------------
def cpu_description() -> str:
    """'AMD EPYC 9R45 (family 26, model 2), AVX-512' from /proc/cpuinfo (the first CPU)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {vector}{', AVX512-BF16' if 'avx512_bf16' in flags else ''}")


def xla_flags(threads: int) -> str:
    """What the official side's XLA is told; empty when it may take every core it is pinned to."""
    extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    return " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), extra]))


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (a time limit's) ends the measuring as Ctrl-C does: the table of what was measured follows."""
    raise KeyboardInterrupt


def run_child(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=[*throughput.CONFIGS, "all"], default="all",
                        help="network sizes (train_throughput's CONFIGS)")
    parser.add_argument("--modes", default="eager,compiled",
                        help="our modes, comma list of eager, compiled, graphs (CUDA); MODE@high: TF32 on a GPU")
    parser.add_argument("--official-modes", default="jit",
                        help="the official side's: jit (JAX's default matmul precision), jit@highest, jit@high, ...")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both sides run (cuda: the official side on JAX's CUDA backend)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 15 paper, 100 small-cpu)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first holds the jit compile)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is printed")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for both sides (default: every usable core); 0: each side's own default")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="busy processes to start beside")
    parser.add_argument("--quick", action="store_true",
                        help="small-cpu only, 20 timed steps after 2, one round (a couple of minutes once set up)")
    parser.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH,
                        help="folder for the official source, its virtualenv and the data (outside the repository)")
    parser.add_argument("--official-src", type=Path, help=f"a checkout of {OFFICIAL_REPO} to use instead of the mirror")
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="bare git mirror of the official code")
    parser.add_argument("--jax", default="jax", metavar="SPEC", help="pip spec of jax (CPU), e.g. jax==0.10.2")
    parser.add_argument("--official-python", type=Path, metavar="PYTHON",
                        help="an interpreter that has jax and the official requirements (no virtualenv is made): "
                             "a GPU machine's, say, with the missing ones unpacked in --official-path")
    parser.add_argument("--official-path", type=Path, metavar="DIR",
                        help="a folder put first on the official side's PYTHONPATH (wheels unpacked there)")
    parser.add_argument("--all-requirements", action="store_true",
                        help="also install what only the official main.py uses (ogbench, wandb, ...)")
    parser.add_argument("--dataset-dir", type=Path, help=f"folder with {DATASET}.npz (default: generate --episodes)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes to generate when no --dataset-dir")
    parser.add_argument("--setup-only", action="store_true", help="set up the official side and the data, then stop")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write every measurement to FILE (JSON)")
    parser.add_argument("--child-official", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--child-ours", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=Path, metavar="NPZ",
                        help="the official sampler's arrays as --setup-only saves them (no data is made or read)")
    parser.add_argument("--precision", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    default_steps = {"paper": 15, "small-cpu": 100}
    if args.child_official:
        steps = args.steps or default_steps[args.child_official]
        print(json.dumps(measure_official(args.official_src, args.windows, args.child_official, steps,
                                          args.warmup, args.threads, args.device, args.precision)))
        return
    if args.child_ours:
        steps = args.steps or default_steps[args.child_ours[0]]
        print(json.dumps(measure_ours(*args.child_ours, steps, args.warmup, args.threads, args.device)))
        return
    if args.quick:
        args.config, args.rounds, args.warmup, args.steps = "small-cpu", 1, 2, args.steps or 20

    scratch = args.scratch.expanduser().resolve()
    if scratch.is_relative_to(REPO):
        sys.exit(f"--scratch {scratch} lies inside the repository; give a folder outside it.")
    started = time.perf_counter()
    home = scratch / f"official-{OFFICIAL_COMMIT}"
    origin = unpack_official(home / "src", args.mirror, args.official_src)
    if args.official_python:
        official_python = args.official_python
    else:
        requirements = official_requirements(home / "src", args.jax, args.all_requirements)
        official_python = make_virtualenv(home / "venv", requirements)
    official_seconds = time.perf_counter() - started
    windows = args.windows or official_windows(dataset_file(args.dataset_dir, scratch, args.episodes), scratch)
    setup_seconds = time.perf_counter() - started
    print(f"set-up: {setup_seconds:.0f} s ({official_seconds:.0f} s the official side; nothing to do when cached)")
    if args.setup_only:
        marker = home / "venv" / "rql-bench.json"
        frozen = json.loads(marker.read_text())["freeze"] if not args.official_python and marker.is_file() else []
        print(f"official: {origin}\n  {home / 'src'}\n  {official_python}: {' '.join(frozen)}\nwindows: {windows}")
        return

    import torch

    from rql_cli.training.runtime import CpuLoad

    load = CpuLoad()
    time.sleep(1.0)
    busy_before = load.sample()
    usable = len(os.sched_getaffinity(0))
    threads = min(args.threads, usable)
    names = list(throughput.CONFIGS) if args.config == "all" else [args.config]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    official_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if args.official_path:
        official_env["PYTHONPATH"] = str(args.official_path.resolve())
    if args.device == "cuda":  # JAX's GPU backend; allocating as it goes, so its peak memory is what it used
        official_env.update(JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
    else:
        official_env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(threads), TF_CPP_MIN_LOG_LEVEL="2")
    ours_env = throughput.tree_env(REPO)
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(threads),
              "--device", args.device]
    this_file = str(Path(__file__).resolve())

    print(f"CPU: {cpu_description()}; {usable} usable cores; other processes kept {busy_before:.1f} cores busy "
          f"before the start; busy processes started beside: {args.load}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}; both sides run there, one process per measurement")
    elif threads:
        pinned = f"pinned to the first {threads} usable cores, " if threads < usable else ""
        print(f"threads: {threads} each side: {pinned}torch.set_num_threads({threads}) (adaptation off), "
              f"XLA_FLAGS={official_env['XLA_FLAGS']!r}")
    else:
        print(f"threads: each side's default: ours adapts to the free cores (rql train's default), "
              f"XLA takes every core (XLA_FLAGS={official_env['XLA_FLAGS']!r})")
    print(f"official: {origin}; {args.rounds} alternating rounds; steps: "
          f"{args.steps or 'paper 15, small-cpu 100'} timed after {args.warmup} warm-up")

    official_modes = [m.strip() for m in args.official_modes.split(",") if m.strip()]
    variants = [*(("official", mode) for mode in official_modes), *(("ours", mode) for mode in modes)]
    pairs: list[tuple[str, str]] = []  # measured in pairs, so a run cut short has its first pairs whole
    for index in range(max(len(official_modes), len(modes))):
        pairs += [("official", official_modes[index])] if index < len(official_modes) else []
        pairs += [("ours", modes[index])] if index < len(modes) else []
    signal.signal(signal.SIGTERM, _stop)  # `timeout` (gpu_speed.sh's parts): print what was measured
    record: dict[str, Any] = {"cpu": cpu_description(), "usable_cores": usable, "threads": threads,
                              "load": args.load, "busy_before": busy_before, "official": origin, "results": {}}
    def command_for(side: str, mode: str, name: str) -> tuple[list[str], dict[str, str]]:
        if side == "official":
            return ([str(official_python), this_file, "--child-official", name, "--official-src", str(home / "src"),
                     "--windows", str(windows), "--precision", mode.partition("@")[2], *common], official_env)
        return [sys.executable, this_file, "--child-ours", name, mode, *common], ours_env

    stopped = False
    with throughput.busy_processes(args.load):
        for name in names:
            results: dict[tuple[str, str], list[dict]] = {variant: [] for variant in variants}
            try:
                for round_index in range(args.rounds):
                    for side, mode in pairs:
                        child_started = time.perf_counter()
                        result = run_child(*command_for(side, mode, name))
                        results[(side, mode)].append(result)
                        rate = f"{result['steps_per_second']:.2f} steps/s" if "steps_per_second" in result else result
                        print(f"  {name} round {round_index + 1}/{args.rounds} {side} {mode}: {rate} "
                              f"({time.perf_counter() - child_started:.0f} s in all)", flush=True)
            except KeyboardInterrupt:
                stopped = True
                print("stopped early: the table holds what was measured", flush=True)
            print_table(name, variants, results)
            record["results"][name] = {f"{side} {mode}": runs for (side, mode), runs in results.items()}
            if args.save:  # after each config, so an interrupted run keeps what it measured
                args.save.write_text(json.dumps(record, indent=1))
            if stopped:
                break
    first_official = f"official {official_modes[0]}"
    versions = {**next((r["versions"] for runs in record["results"].values() for r in runs[first_official]
                        if "versions" in r), {}), "torch": torch.__version__}
    print(f"\nversions: {', '.join(f'{k} {v}' for k, v in versions.items())}; python {sys.version.split()[0]}; "
          f"{(time.perf_counter() - started) / 60:.0f} min in all")
    if args.save:
        args.save.write_text(json.dumps({**record, "versions": versions}, indent=1))


def print_table(name: str, variants: list[tuple[str, str]], results: dict) -> None:
    """One row per side and mode: median steps/s [each round], ours over each official mode, GFLOP/s,
    compile, peak memory, and the threads (CPU) or device and matmul precision (GPU)."""
    config = throughput.CONFIGS[name]
    sizes = (f"{len(config['actor_hidden_dims'])}x{config['actor_hidden_dims'][0]}, K={config['ensemble_size']}, "
             f"F={config['flow_steps']}, h={config['horizon']}, batch {config['batch_size']}")
    official_modes = [mode for side, mode in variants if side == "official"]
    print(f"\n{name} ({sizes}): {throughput.update_flops(config) / 1e9:.1f} GFLOP of matmuls per update")
    print(f"  {'side':9s} {'mode':13s} {'steps/s (median [runs])':30s} {'ours / ' + ' | '.join(official_modes):>18s} "
          f"{'GFLOP/s':>8s} {'compile s':>9s} {'peak MiB':>8s}  threads or device")
    official: dict[str, float] = {}
    for side, mode in variants:
        runs = results[(side, mode)]
        good = [r for r in runs if "steps_per_second" in r]
        if not good:
            why = (runs[0].get("skipped") or runs[0].get("error")) if runs else "not measured"
            print(f"  {side:9s} {mode:13s} {why}")
            continue
        rates = [r["steps_per_second"] for r in good]
        median = statistics.median(rates)
        if side == "official":
            official[mode] = median
        ratio = " | ".join(f"{median / official[m]:.2f}x" for m in official_modes if m in official) \
            if side == "ours" else ""
        spread = ", ".join(f"{r:.2f}" for r in rates)
        failed = f"  ({len(runs) - len(good)} failed: {next(r for r in runs if 'error' in r)['error']})" \
            if len(good) < len(runs) else ""
        print(f"  {side:9s} {mode:13s} {f'{median:.2f} [{spread}]':30s} {ratio:>18s} "
              f"{statistics.median(r['gflops'] for r in good):8.0f} {good[-1]['compile_seconds']:9.1f} "
              f"{good[-1]['peak_mib']:8.0f}  {_where(side, good[-1])}{failed}")


def _where(side: str, result: dict[str, Any]) -> str:
    """How a measurement used the machine: its threads on a CPU, its device and matmul precision on a GPU."""
    if side == "official":
        cores = result["threads"]["cores"]
        if cores is None:  # a GPU run
            return f"{result['devices'][0]}, matmul precision {result['matmul_precision']}"
        return f"{cores} cores, {result['threads']['os_threads']} OS threads"
    threads = result.get("threads", {})
    if result.get("device", "cpu") != "cpu":
        return f"{result['device']}, matmuls {result.get('matmul', '?')}"
    adaptive = " adaptive" if threads.get("adaptive") else ""
    return f"{threads.get('threads')} of {threads.get('usable_cores')}{adaptive}, {result['threads_at_end']} at end"


if __name__ == "__main__":
    main()
