"""How a run uses the machine: CPU threads that make room for other processes, and the compiled update.

Threads. torch's OpenMP pool uses one thread per core and makes every thread wait for the slowest
at the end of each parallel operation. When another process keeps a core busy, one of our threads is
off-CPU for a scheduler slice at a time and the whole step waits for it: measured here on 2 cores, a
3x256 update fell from 31.5 to 9.6 steps/s beside one busy process, while one thread kept 17.3.
Making OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) cost 36% when quiet and
shorter spins did not help, so we change the thread count instead: ``ThreadGovernor`` watches how
much CPU the rest of the machine uses (``/proc/stat`` minus this process) and keeps the pool at the
cores left free, between 1 and the cores this process may run on.

Compilation. ``torch.compile`` of the loss terms (forward and backward) fuses the elementwise work
between the matmuls (GELU, LayerNorm, the losses); Adam is one fused kernel either way. It costs a
compile once per process (cached on disk by inductor), so ``compile='auto'`` uses it on CPU runs long
enough to win it back. On CUDA 'auto' also replays the step as CUDA graphs (torch.compile's
'reduce-overhead'): on an H200 at the paper's configuration 411.6 steps/s against 163.5 for the plain
compile, with losses identical to the last printed digit over 3,000 steps of ``rql train``. A compile
that fails under 'auto' falls back, with a warning: graphs to the plain compile, the plain compile to
eager.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rql_cli.config import RunConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.device import usable_cores
from rql_cli.errors import RQLError
from rql_cli.training.matmul_route import MatmulRoute, choose_matmul_route, hidden_product_dtype
from rql_cli.training.signals import StopNow, StopSignals

POLL_SECONDS = 2.0
"""How often the governor measures the machine (a few file reads; negligible next to a step)."""


@dataclass
class ThreadSettings:
    """What a run chose, recorded in its train_config.json.

    requested: the config's ``threads`` (0 = adapt).  usable_cores: affinity and cgroup quota.
    threads: threads at the start.  adaptive: whether the governor may change them.
    interop_threads: torch's inter-op pool.  wait_policy: OMP_WAIT_POLICY as the process started.
    per_seed: whether the threads step a group's seeds side by side (``ThreadedSeeds``, one worker per
    seed up to the threads, the rest of the threads shared out as intra-op threads).
    """

    requested: int
    usable_cores: int
    threads: int
    adaptive: bool
    interop_threads: int
    wait_policy: str
    per_seed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def configure_threads(
    requested: int, device: torch.device, spread: Callable[[int], None] | None = None,
) -> tuple[ThreadSettings, ThreadGovernor | None]:
    """Set torch's thread pools for a run; return the settings and a governor when they adapt.

    ``requested`` > 0 fixes the threads (capped at the usable cores). 0 adapts on a CPU run where
    ``/proc/stat`` can be read; a CUDA run keeps a fixed pool (the CPU only feeds the GPU). With
    ``spread`` (a group's ``ThreadedSeeds.set_threads``) the threads step the seeds side by side,
    and the governor hands its count to ``spread`` instead of torch.
    """
    cores = usable_cores()
    threads = min(requested, cores) if requested > 0 else cores
    (spread or torch.set_num_threads)(threads)
    try:
        torch.set_num_interop_threads(1)  # we never run independent ops in parallel; spare the threads
    except RuntimeError:  # already set, or inter-op work already ran in this process
        pass
    governor = None
    if requested == 0 and device.type == "cpu" and cores > 1 and CpuLoad.available():
        governor = ThreadGovernor(cores, apply=spread)
    settings = ThreadSettings(
        requested=requested, usable_cores=cores, threads=threads, adaptive=governor is not None,
        interop_threads=torch.get_num_interop_threads(),
        wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"), per_seed=spread is not None,
    )
    return settings, governor


class CpuLoad:
    """CPU time (in cores) that processes other than this one use, between two ``sample`` calls."""

    def __init__(self) -> None:
        self._cpus = _allowed_cpus()
        self._last = self._read()

    @staticmethod
    def available() -> bool:
        return Path("/proc/stat").is_file()

    def sample(self) -> float:
        """Mean cores busy outside this process since the last call (0 when nothing else ran)."""
        now = self._read()
        (busy0, own0, wall0), (busy1, own1, wall1) = self._last, now
        self._last = now
        elapsed = wall1 - wall0
        if elapsed <= 0:
            return 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed)

    def _read(self) -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines()[1:]:
            name, *values = line.split()
            if not name.startswith("cpu"):
                break
            if self._cpus is not None and int(name[3:]) not in self._cpus:
                continue
            numbers = [int(v) for v in values[:8]]
            busy += sum(numbers) - numbers[3] - numbers[4]  # all but idle and iowait
        own = os.times()
        return busy / ticks, own.user + own.system, time.monotonic()


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class ThreadGovernor:
    """Keeps torch's intra-op threads at the cores that other processes leave free.

    Call ``poll`` between steps; every ``POLL_SECONDS`` it measures the rest of the machine and sets
    ``max_threads - round(busy elsewhere)`` threads (at least 1). Two runs side by side each settle
    at half the cores; when one ends, the other takes them back within a poll. ``apply`` sets a
    count (torch's intra-op threads by default; a ``ThreadedSeeds`` group's ``set_threads``).
    """

    def __init__(self, max_threads: int, interval: float = POLL_SECONDS, load: CpuLoad | None = None,
                 apply: Callable[[int], None] | None = None):
        self.max_threads = max_threads
        self.interval = interval
        self._apply = apply or torch.set_num_threads
        self.threads = max_threads if apply else torch.get_num_threads()
        self.changes = 0
        self._load = load or CpuLoad()
        self._next = time.monotonic() + interval

    def poll(self) -> int | None:
        """Adjust the pool if a measurement is due; returns the new thread count when it changed."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval
        return self.apply(self._load.sample())

    def apply(self, busy_elsewhere: float) -> int | None:
        """Set the threads for ``busy_elsewhere`` cores in use by others; the new count if it changed."""
        free = self.max_threads - busy_elsewhere
        threads = max(1, min(self.max_threads, int(free + 0.5)))
        if threads == self.threads:
            return None
        self._apply(threads)
        self.threads = threads
        self.changes += 1
        return threads


AUTO_COMPILE_MIN_STEPS = 20_000
"""CPU runs with at least this many steps to go compile under 'auto': at the measured gain (about
7% at 3x256) that many steps win back a cold compile of about 30 s."""


def compile_mode(choice: str, device: torch.device, steps_to_run: int) -> str | None:
    """The torch.compile mode a run uses for ``compile=choice``, or None for eager.

    'graphs' (compile plus CUDA-graph replay of the step) needs CUDA; RQLError otherwise.
    """
    if choice == "graphs":
        if device.type != "cuda":
            raise RQLError(
                f"compile=graphs replays the update as CUDA graphs, but this run is on {device}. "
                "Use --set compile=on (or auto) on a CPU."
            )
        return "reduce-overhead"
    if choice == "on":
        return "default"
    if choice == "auto" and device.type == "cuda":
        return "reduce-overhead"
    if choice == "auto" and steps_to_run >= AUTO_COMPILE_MIN_STEPS:
        return "default"
    return None


class Compilable(Protocol):
    """What ``prepare_update`` compiles: an ``RQLAgent``, or a seed group's update (``core.seed_stack``)."""

    device: torch.device

    def compile_update(self, mode: str | None = ...) -> None: ...
    def warm_up(self, batch: ChunkBatch) -> None: ...
    def set_hidden_product_dtype(self, dtype: torch.dtype | None) -> None: ...


@dataclass
class CompileReport:
    """What the update runs as: ``mode`` (None = eager), the seconds the compile took, and why."""

    choice: str
    mode: str | None
    seconds: float = 0.0
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_update(agent: Compilable, choice: str, steps_to_run: int, example_batch: ChunkBatch) -> CompileReport:
    """Compile ``agent``'s update if ``choice`` says so, paying the compile now on ``example_batch``.

    The warm-up runs the loss forward and backward once on the example (no optimiser step, no
    random draws from the run's generators; ``update`` clears the gradients it leaves). A failing
    compile under 'auto' warns and tries the next mode down (graphs, then the plain compile, then
    eager); under 'on' or 'graphs' it is an RQLError.
    """
    mode = compile_mode(choice, agent.device, steps_to_run)
    report = CompileReport(choice=choice, mode=mode)
    if mode is None:
        return report
    started = time.perf_counter()
    while mode is not None:
        try:
            agent.compile_update(mode)
            agent.warm_up(example_batch)
            break
        except Exception as error:  # inductor raises many kinds (no C++ compiler, unsupported op, ...)
            agent.compile_update(None)
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if choice != "auto":
                raise RQLError(
                    f"Compiling the update (compile={choice}) failed ({message}). Train eagerly with "
                    "--set compile=off."
                ) from error
            mode = "default" if mode == "reduce-overhead" else None
            instead = "with the plain compile (no CUDA graphs)" if mode else "eagerly"
            warnings.warn(f"Compiling the update failed ({message}); training {instead} instead.", stacklevel=2)
            report.mode, report.fallback = mode, message
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class Runtime:
    """The machine settings one training session runs with; ``poll`` between steps."""

    threads: ThreadSettings
    compile: CompileReport
    matmul: MatmulRoute | None = None
    governor: ThreadGovernor | None = None

    def poll(self) -> None:
        """Let the thread governor measure the machine if it is due (cheap otherwise)."""
        if self.governor is not None:
            self.governor.poll()

    def to_dict(self) -> dict[str, Any]:
        """What train_config.json records for each start or resume."""
        matmul = {"matmul": self.matmul.to_dict()} if self.matmul else {}
        return {"threads": self.threads.to_dict(), "compile": self.compile.to_dict(), **matmul}


def set_up_runtime(
    agent: Compilable, config: RunConfig, steps_to_run: int, example_batch: ChunkBatch | None,
    stop: StopSignals | None = None, *, dims: tuple[int, int], spread: Callable[[int], None] | None = None,
) -> Runtime:
    """Thread pools for ``config.threads``, the matmul route for ``config.matmul_precision`` (measured on
    the run's layer shapes, ``dims`` = (obs_dim, action_dim)), then the update compiled for ``config.compile``.

    ``spread``: a group's ``ThreadedSeeds.set_threads`` (see ``configure_threads``).
    Without an ``example_batch`` (a fine-tuning buffer that starts empty) the update stays eager.
    With ``stop``, a Ctrl-C or SIGTERM during the compile (a cold one takes tens of seconds) abandons
    it at once: the update stays eager and the run stops before its first step.
    """
    threads, governor = configure_threads(config.threads, agent.device, spread)
    matmul = choose_matmul_route(config.matmul_precision, agent.device, config.agent, *dims)
    agent.set_hidden_product_dtype(hidden_product_dtype(matmul))  # before compiling: the graph bakes it in
    if example_batch is None:
        report = CompileReport(choice=config.compile, mode=None, fallback="no batch to compile with")
    elif stop is None:
        report = prepare_update(agent, config.compile, steps_to_run, example_batch)
    else:
        # Imported here, outside the window a signal cuts: the compile's first step would import it, and
        # a Ctrl-C inside that import leaves torch half-imported, unable to make the optimiser (whose
        # first use imports it too) that the stop's checkpoint saves.
        import torch._dynamo  # noqa: F401

        try:
            with stop.interruptible():
                report = prepare_update(agent, config.compile, steps_to_run, example_batch)
        except StopNow:
            agent.compile_update(None)
            report = CompileReport(choice=config.compile, mode=None, fallback=f"compile stopped by {stop.signal_name}")
    return Runtime(threads=threads, compile=report, matmul=matmul, governor=governor)
