"""Shared fixtures: a tiny cube-single dataset made by our generator, once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
# Every run of the suite (here and in the `rql` processes it starts) on torch's default fp32 matmul route:
# a route measured while other tests load the cores could differ between two runs a test compares bit
# for bit. tests/test_matmul_route.py measures and chooses for real.
os.environ.setdefault("RQL_MATMUL_ROUTE", "default")
CALLERS_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # read before any test can compile

TINY_NAME = "cube-single-play-v0"


@pytest.fixture(scope="session", autouse=True)
def one_inductor_cache_per_session(tmp_path_factory):
    """One inductor cache for the whole run, under pytest's tmp and shared by the xdist workers: each
    graph the suite compiles (in a worker or in an `rql` it starts, which inherits the variable) is
    compiled once and then loaded (inductor writes its cache entries atomically, so workers may share
    it), and no cache left by earlier runs makes this run's timings differ from a clean machine's. A
    TORCHINDUCTOR_CACHE_DIR the caller set stands. test_interrupts.py's cold-compile test still gives
    its run an empty cache of its own."""
    if CALLERS_INDUCTOR_CACHE is not None:
        yield
        return
    base = tmp_path_factory.getbasetemp()
    run_base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: .../pytest-N/popen-gwK
    cache = run_base / "inductor-cache"
    cache.mkdir(exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    yield
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """3 train + 1 val episodes of 101 rows (100 transitions each) of cube-single-play."""
    from rql_cli.data.generate import Generation, generate_dataset

    out = tmp_path_factory.mktemp("data")
    generate_dataset(Generation(TINY_NAME, out, num_episodes=3, num_val_episodes=1, seed=0, episode_length=101))
    return out


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_dataset_dir, tmp_path_factory) -> Path:
    """A run folder trained for 2 steps on the tiny dataset with small networks."""
    from rql_cli.config import RunConfig
    from rql_cli.training.offline import DataSpec, train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = RunConfig.of(
        actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=2, flow_steps=4,
        horizon=5, batch_size=8, eval_episodes=0, steps=2, device="cpu",
    )
    train(config, DataSpec(name=TINY_NAME, dataset_dir=str(tiny_dataset_dir)), run)
    return run


@pytest.fixture
def hub():
    """A local Hub-API server on 127.0.0.1 (tests/hub_server.py), stopped after the test."""
    from hub_server import HubServer

    with HubServer() as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """Tests marked ``warm_compile`` run last, and tests marked ``cuda`` only where torch sees a GPU
    (benchmarks/gpu_check.sh runs them).

    A ``warm_compile`` test compiles test_fast_path's shared shape, which test_fast_path compiles cold
    early on (about 40 s of CPU); run last, its worker loads it from the session's inductor cache
    instead of compiling it a second time beside it (xdist gives each worker a contiguous part of this
    order, so a worker's last tests start long after the other's first).
    """
    import torch

    items.sort(key=lambda item: item.get_closest_marker("warm_compile") is not None)  # stable
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    """The run is over, in this process (the main one or an xdist worker): freeze the heap so that the
    interpreter's last collections skip it (torch's objects and every test's; about a second a process)."""
    import gc

    gc.freeze()
