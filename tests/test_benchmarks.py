"""The benchmark scripts run end to end on the CPU (gpu_check.sh calls the same throughput script).

Each script is a chain of processes that keeps about one core busy, so the module starts the scripts
its selected tests need two at a time, longest first, as soon as its first test runs (the machines
have two cores); each test then waits for its own script and checks its output as before.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


GPU_SCRIPTS = ("gpu_check.sh", "gpu_e2e.sh", "gpu_groups.sh", "gpu_speed.sh")
"""The scripts a GPU lease runs: each must say at once, exit 2, when there is no GPU."""


def benchmark_commands(tiny_dataset_dir: Path, tmp_path_factory) -> dict[str, list[tuple[list[str], dict]]]:
    """For each test, the commands it checks (with their subprocess.run arguments), longest first."""
    gpu_out = tmp_path_factory.mktemp("gpu-scripts")
    return {
        "test_shard_memory_benchmark_measures_every_variant": [(
            [sys.executable, str(REPO / "benchmarks" / "shard_memory.py"), "--source",
             str(tiny_dataset_dir / "cube-single-play-v0.npz"), "--shards", "3", "--steps", "20", "--swap-every", "5",
             "--work", str(tmp_path_factory.mktemp("shards"))], {})],
        "test_minari_pendulum_learning_check_runs_end_to_end": [(
            [sys.executable, str(REPO / "benchmarks" / "minari_pendulum.py"), "--episodes", "4", "--steps", "10",
             "--eval-episodes", "1", "--work", str(tmp_path_factory.mktemp("pendulum"))], {})],
        "test_throughput_benchmark_prints_a_row_per_mode_and_refuses_graphs_on_cpu": [(
            [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--config", "small-cpu",
             "--modes", "eager,graphs", "--steps", "2", "--warmup", "1", "--rounds", "1", "--profile"], {})],
        "test_minari_load_benchmark_converts_and_times": [(
            [sys.executable, str(REPO / "benchmarks" / "minari_load.py"), "--source",
             str(tiny_dataset_dir / "cube-single-play-v0.npz"), "--piece", "30", "--rounds", "1", "--root",
             str(tmp_path_factory.mktemp("minari"))], {})],
        "test_gpu_scripts_say_so_without_a_gpu": [
            (["bash", str(REPO / "benchmarks" / script)], {"env": {**os.environ, "OUT": str(gpu_out)}, "timeout": 120})
            for script in GPU_SCRIPTS
        ],
    }


@pytest.fixture(scope="module")
def benchmark_runs(request, tiny_dataset_dir, tmp_path_factory):
    """The finished (or running) commands of each selected test of this module, by test name."""
    import torch

    selected = {item.originalname for item in request.session.items if item.module is request.module}
    if torch.cuda.is_available():  # gpu_check.sh runs for real there; its test skips
        selected.discard("test_gpu_scripts_say_so_without_a_gpu")
    pool = ThreadPoolExecutor(max_workers=2)
    runs: dict[str, list[Future]] = {}
    for name, commands in benchmark_commands(tiny_dataset_dir, tmp_path_factory).items():
        if name in selected:
            runs[name] = [pool.submit(subprocess.run, command, **{"capture_output": True, "text": True, "timeout": 300,
                                                                  "cwd": REPO, **options})
                          for command, options in commands]
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def finished(benchmark_runs, name: str) -> list[subprocess.CompletedProcess]:
    return [future.result() for future in benchmark_runs[name]]


def test_throughput_benchmark_prints_a_row_per_mode_and_refuses_graphs_on_cpu(benchmark_runs):
    [done] = finished(benchmark_runs, "test_throughput_benchmark_prints_a_row_per_mode_and_refuses_graphs_on_cpu")
    assert done.returncode == 0, done.stderr
    eager = re.search(r"this tree\s+eager\s+([\d.]+) \[", done.stdout)
    assert eager and float(eager.group(1)) > 0, done.stdout
    assert "2.8 GFLOP of matmuls per update" in done.stdout
    # --profile: the profiler's table and the matmul floor under it (a share of the step, a rate above it)
    assert "aten::addmm" in done.stdout
    floor = re.search(r"matmuls: ([\d.]+) of ([\d.]+) ms per profiled step \((\d+)%\); the products alone would run "
                      r"([\d.]+) steps/s", done.stdout)
    assert floor, done.stdout
    matmul_ms, step_ms, share, floor_rate = (float(g) for g in floor.groups())
    assert 0 < matmul_ms < step_ms and 0 < share < 100
    assert floor_rate == pytest.approx(1e3 / matmul_ms, rel=0.01) and floor_rate > float(eager.group(1))
    graphs = next(line for line in done.stdout.splitlines() if "graphs" in line)
    assert "CUDA" in graphs  # the child's own refusal, not a crash


def test_gpu_scripts_say_so_without_a_gpu(benchmark_runs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: gpu_check.sh runs for real there")
    for script, done in zip(GPU_SCRIPTS, finished(benchmark_runs, "test_gpu_scripts_say_so_without_a_gpu"), strict=True):
        assert done.returncode == 2, (script, done.stdout, done.stderr)
        assert "sees no CUDA device" in done.stderr, script


def test_shard_memory_benchmark_measures_every_variant(benchmark_runs):
    [done] = finished(benchmark_runs, "test_shard_memory_benchmark_measures_every_variant")
    assert done.returncode == 0, done.stderr
    rows = {line[:28].strip(): line[28:].split() for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"one shard alone (a file)", "one file", "shards, read ahead", "shards, read at each swap"}
    assert all(float(values[0]) > 100 for values in rows.values())  # peak RSS in MiB: torch alone is more
    assert rows["shards, read ahead"][3] == "3" and rows["one file"][3] == "0"  # swaps at steps 5, 10, 15


def test_minari_load_benchmark_converts_and_times(benchmark_runs):
    [done] = finished(benchmark_runs, "test_minari_load_benchmark_converts_and_times")
    assert done.returncode == 0, done.stderr
    assert "300 transitions in 12 episodes, obs 28, actions 5" in done.stdout  # 3 episodes of 100, cut by 30
    assert "rql bulk load" in done.stdout and "per-episode loop" in done.stdout


def test_minari_pendulum_learning_check_runs_end_to_end(benchmark_runs):
    [done] = finished(benchmark_runs, "test_minari_pendulum_learning_check_runs_end_to_end")
    assert done.returncode == 0, done.stderr
    random_return, controller_return = map(float, re.search(r"random ([-\d.]+), controller ([-\d.]+)", done.stdout).groups())
    assert controller_return > random_return + 500  # the scripted swing-up works; random does not
    assert re.search(r"rql\s+alpha 1 .*normalised score", done.stdout)
    assert re.search(r"near-bc\s+alpha 1000 .*normalised score", done.stdout)
