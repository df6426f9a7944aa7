"""How a run uses the machine: thread counts that follow other processes, and the compile choice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from rql_cli.config import RQLConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.errors import RQLError
from rql_cli.training.runtime import (
    AUTO_COMPILE_MIN_STEPS,
    CpuLoad,
    ThreadGovernor,
    compile_mode,
    configure_threads,
    prepare_update,
    usable_cores,
)
from tests.test_fast_path import ACT, OBS, batch_with_an_episode_end, make_agent, one_thread  # noqa: F401 (a fixture)

CPU = torch.device("cpu")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FixedLoad:
    """A CpuLoad stand-in that reports given readings (the governor's input, not the thing tested)."""

    def __init__(self, *readings: float):
        self.readings = list(readings)

    def sample(self) -> float:
        return self.readings.pop(0)


def test_governor_keeps_the_cores_others_leave_free(restore_threads):
    torch.set_num_threads(4)
    governor = ThreadGovernor(4, interval=0.0, load=FixedLoad(0.2, 1.0, 2.6, 3.9, 0.0))
    assert governor.poll() is None  # 0.2 of a core elsewhere: keep all four
    assert governor.poll() == 3 and torch.get_num_threads() == 3
    assert governor.poll() == 1  # 2.6 busy elsewhere leaves 1.4 cores
    assert governor.poll() is None  # never below one thread
    assert governor.poll() == 4 and torch.get_num_threads() == 4  # the others ended: take them back
    assert governor.changes == 3


def test_governor_of_a_threaded_group_changes_its_workers_not_torchs_threads(restore_threads):
    torch.set_num_threads(1)
    workers: list[int] = []
    governor = ThreadGovernor(2, interval=0.0, load=FixedLoad(1.0, 0.0), apply=workers.append)
    assert governor.poll() == 1 and governor.poll() == 2
    assert workers == [1, 2] and torch.get_num_threads() == 1


def test_a_threaded_group_is_handed_the_threads_instead_of_torch(restore_threads):
    torch.set_num_threads(1)
    spread: list[int] = []
    settings, _ = configure_threads(0, CPU, spread=spread.append)
    assert spread == [usable_cores()] and settings.threads == usable_cores() and settings.per_seed
    assert torch.get_num_threads() == 1  # ThreadedSeeds.set_threads shares them out, not configure_threads


def test_governor_waits_for_its_interval(restore_threads):
    governor = ThreadGovernor(2, interval=3600.0, load=FixedLoad(2.0))
    assert governor.poll() is None
    assert governor.threads == torch.get_num_threads()


@pytest.mark.skipif(not CpuLoad.available(), reason="needs /proc/stat")
def test_cpu_load_counts_other_processes_and_not_this_one():
    """Readings are relative (the machine may be busy with others): a busy child must read a good
    part of a core higher than this process spinning on its own. That needs a core the others leave
    free: on a machine already busy on every core the child only takes turns with them, and the
    readings cannot tell it apart."""
    load = CpuLoad()
    time.sleep(0.5)
    free = len(os.sched_getaffinity(0)) - load.sample()
    if free < 0.45:  # the child would get less than the 0.4 of a core asked below
        pytest.skip(f"other processes keep the cores busy ({free:.2f} of a core free)")
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:  # this process busy: not counted
        pass
    own_spin = load.sample()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.3)
        load.sample()
        time.sleep(1.0)
        child_spin = load.sample()
    finally:
        busy.kill()
        busy.wait()
    assert child_spin - own_spin > 0.4, (own_spin, child_spin)


def test_fixed_threads_are_capped_and_adaptive_ones_are_recorded(restore_threads):
    cores = usable_cores()
    settings, governor = configure_threads(1, CPU)
    assert (settings.threads, settings.adaptive, governor) == (1, False, None)
    assert torch.get_num_threads() == 1
    settings, _ = configure_threads(10_000, CPU)
    assert settings.threads == cores  # never more threads than usable cores
    settings, governor = configure_threads(0, CPU)
    assert settings.threads == cores
    assert settings.adaptive == (cores > 1 and CpuLoad.available()) == (governor is not None)
    assert set(settings.to_dict()) >= {"threads", "usable_cores", "adaptive", "interop_threads", "wait_policy"}


def test_compile_choices():
    assert compile_mode("off", CPU, 10**9) is None
    assert compile_mode("on", CPU, 1) == "default"
    assert compile_mode("auto", CPU, AUTO_COMPILE_MIN_STEPS - 1) is None
    assert compile_mode("auto", CPU, AUTO_COMPILE_MIN_STEPS) == "default"
    assert compile_mode("auto", torch.device("cuda"), 1) == "reduce-overhead"
    assert compile_mode("graphs", torch.device("cuda"), 1) == "reduce-overhead"
    with pytest.raises(RQLError, match="CUDA graphs.*compile=on"):
        compile_mode("graphs", CPU, 1)


def _odd_agent() -> RQLAgent:
    # Shapes no other test compiles, so nothing is served from inductor's caches.
    config = RQLConfig(actor_hidden_dims=[24], value_hidden_dims=[24], ensemble_size=2, horizon=3,
                       flow_steps=2, batch_size=16)
    return RQLAgent(config, OBS, ACT, CPU)


def test_a_compile_that_fails_falls_back_to_eager_under_auto_and_is_an_error_under_on():
    import torch._inductor.config as inductor

    batch = batch_with_an_episode_end()
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        agent = _odd_agent()
        with pytest.warns(UserWarning, match="training eagerly"):
            report = prepare_update(agent, "auto", AUTO_COMPILE_MIN_STEPS, batch)
        assert report.mode is None and report.fallback
        assert agent.compile_mode is None
        agent.update(batch, torch.Generator().manual_seed(0))  # eager still trains
        torch._dynamo.reset()
        with pytest.raises(RQLError, match="compile=off"):
            prepare_update(_odd_agent(), "on", 1, batch)
    torch._dynamo.reset()


class _AgentWhoseGraphsFail:
    """Records each compile mode it is given; recording CUDA graphs (or, with ``fail_all``, any
    compile) raises in the warm-up, as a failing inductor or graph capture would."""

    device = torch.device("cuda")

    def __init__(self, fail_all: bool = False):
        self.fail_all, self.modes, self.compile_mode = fail_all, [], None

    def compile_update(self, mode):
        self.modes.append(mode)
        self.compile_mode = mode

    def warm_up(self, batch):
        if self.compile_mode == "reduce-overhead" or (self.fail_all and self.compile_mode):
            raise RuntimeError(f"cannot compile in mode {self.compile_mode}")


def test_auto_on_cuda_steps_down_from_graphs_to_the_plain_compile_then_to_eager():
    agent = _AgentWhoseGraphsFail()
    with pytest.warns(UserWarning, match="plain compile"):
        report = prepare_update(agent, "auto", 1, None)
    assert agent.modes == ["reduce-overhead", None, "default"]
    assert report.mode == agent.compile_mode == "default" and "reduce-overhead" in report.fallback

    agent = _AgentWhoseGraphsFail(fail_all=True)
    with pytest.warns(UserWarning) as warned:
        report = prepare_update(agent, "auto", 1, None)
    assert agent.modes == ["reduce-overhead", None, "default", None]
    assert report.mode is None and agent.compile_mode is None and "default" in report.fallback
    assert "training eagerly" in str(warned[-1].message)

    with pytest.raises(RQLError, match="compile=graphs"):
        prepare_update(_AgentWhoseGraphsFail(), "graphs", 1, None)


@pytest.mark.warm_compile
def test_a_compiled_update_is_prepared_once_and_reports_its_time(one_thread):
    agent = make_agent()  # the suite's one compiled shape (test_fast_path), compiled once per session
    batch = batch_with_an_episode_end()
    report = prepare_update(agent, "on", 1, batch)
    assert report.mode == "default" and report.seconds > 0 and report.fallback is None
    assert all(p.grad is None for p in agent.parameters())  # the warm-up leaves no gradient behind
    before = [p.clone() for p in agent.velocity.parameters()]
    agent.update(batch, torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.velocity.parameters()))


def test_parallel_evaluation_only_where_it_repays_its_start():
    from rql_cli.envs.evaluate import PARALLEL_MIN_EPISODES, default_num_envs

    assert default_num_envs(PARALLEL_MIN_EPISODES - 1) == 1
    assert default_num_envs(1000) == usable_cores()
    assert default_num_envs(PARALLEL_MIN_EPISODES) == min(PARALLEL_MIN_EPISODES, usable_cores())
