"""Which library runs a CPU run's fp32 matmuls: torch's default (MKL) or oneDNN, chosen by measurement.

On some CPUs oneDNN runs fp32 matmuls at about twice MKL's rate with the same accuracy (AMD family 26,
see docs/speed.md); on others the two are about even. torch sends fp32 matmuls to oneDNN when the
float32 matmul precision is below 'highest', the same switch that lets oneDNN compute in bf16 on CPUs
where it chooses to. So the route is measured on the run's own layer shapes when a run starts, and
oneDNN is taken only when it is clearly faster *and* its products are as accurate as the default's
against float64: a CPU where it would round to bf16 fails that check and keeps the default. The
choice is cached per machine (CPU model, torch version, threads, shapes), so the measurement is paid
once; ``RQL_MATMUL_ROUTE=default`` (or ``oneDNN``) fixes the route without measuring. A
``matmul_precision`` below 'highest' is the user's own opt-in to lower precision: on a GPU it is set
as asked (TF32); 'medium' on a CPU with bf16 instructions multiplies between hidden layers in bf16
(route 'bf16': ``core.networks.set_hidden_product_dtype``; torch's own 'medium' left fp32 on such a
CPU here), the other products staying fp32 on the default route; otherwise it is set as asked.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from rql_cli.config import MATMUL_PRECISION_CHOICES, RQLConfig
from rql_cli.errors import RQLError

ONEDNN_SPEEDUP = 1.25
"""oneDNN is taken when its products are at least this much faster. On an AMD family-25 machine they
measured 1.15-1.2x while the whole compiled update ran 0.94-1.06x (benchmarks/train_throughput.py
--modes compiled@default,compiled@oneDNN): a smaller lead does not reach the update."""
ACCURACY_SLACK = 4.0
"""oneDNN's largest relative error may be this many times the default's (fp32 rounding differs in
order), and never above ``ERROR_CEILING``; bf16 products are ~1e-3 off."""
ERROR_CEILING = 1e-5
ROUTE_PRECISION = {"default": "highest", "oneDNN": "medium"}
"""torch's float32 matmul precision that selects each CPU route."""
ROUTE_VARIABLE = "RQL_MATMUL_ROUTE"


@dataclass
class MatmulRoute:
    """What a run's fp32 matmuls run on, recorded in train_config.json.

    Attributes:
        precision: the config's ``matmul_precision``.
        route: 'default' or 'oneDNN' (CPU), 'bf16' (CPU: bf16 products between hidden layers, the
            rest on the default route), 'asked' (torch's precision as given), 'cuda' (the GPU's own,
            TF32 only if ``precision`` allows).
        torch_precision: what ``torch.set_float32_matmul_precision`` was given.
        how: 'measured', 'cached' (an earlier measurement on this machine), 'asked' (``precision`` below
            'highest': set as given, nothing measured), 'set by RQL_MATMUL_ROUTE' or 'cuda'.
        gflops: measured GFLOP/s of each CPU route on the run's shapes.
        errors: largest relative error of each CPU route against float64 on the same products.
    """

    precision: str
    route: str
    torch_precision: str
    how: str
    gflops: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_matmul_route(precision: str, device: torch.device, agent: RQLConfig, obs_dim: int,
                        action_dim: int) -> MatmulRoute:
    """Set torch's float32 matmul precision for a run and say why.

    ``precision`` 'highest' on a CPU picks the faster fp32-accurate route for the run's layer shapes
    (``agent``'s networks at its batch size, ``obs_dim``/``action_dim`` wide inputs), measured once per
    machine and thread count; 'medium' on a CPU with bf16 instructions is route 'bf16' (the run then
    applies ``hidden_product_dtype``); other values are set as asked.
    """
    if precision not in MATMUL_PRECISION_CHOICES:
        raise ValueError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISION_CHOICES)}, got {precision!r}")
    if device.type == "cpu" and precision == "medium" and cpu_has_bf16():
        torch.set_float32_matmul_precision("highest")
        return MatmulRoute(precision, "bf16", "highest", "asked")
    if device.type == "cuda" or precision != "highest":
        torch.set_float32_matmul_precision(precision)
        return MatmulRoute(precision, "cuda" if device.type == "cuda" else "asked", precision,
                           "cuda" if device.type == "cuda" else "asked")
    fixed = os.environ.get(ROUTE_VARIABLE)
    if fixed:
        if fixed not in ROUTE_PRECISION:
            raise RQLError(f"{ROUTE_VARIABLE}={fixed!r} names no matmul route; use one of "
                           f"{', '.join(ROUTE_PRECISION)}.")
        torch.set_float32_matmul_precision(ROUTE_PRECISION[fixed])
        return MatmulRoute(precision, fixed, ROUTE_PRECISION[fixed], f"set by {ROUTE_VARIABLE}")
    shapes = layer_shapes(agent, obs_dim, action_dim)
    key = _cache_key(shapes)
    # Runs started together (a pair beside each other, a sweep) measure one at a time: the first
    # measures and writes, the others read its entry. Measured at once, each timed the other's load
    # (two runs started together here measured oneDNN at 1.28x and 1.02x the default, and the cache
    # kept whichever wrote last).
    with _cache_lock():
        cached = _read_cache().get(key)
        if cached is not None:
            route = MatmulRoute(**{**cached, "how": "cached"})
        else:
            route = measure_routes(shapes)
            _write_cache(key, route)
    torch.set_float32_matmul_precision(route.torch_precision)
    return route


def hidden_product_dtype(route: MatmulRoute) -> torch.dtype | None:
    """The dtype the run's networks multiply in between hidden layers (None: fp32)."""
    return torch.bfloat16 if route.route == "bf16" else None


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively through oneDNN (AVX512-BF16 or AMX); elsewhere bf16
    products are emulated, slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def layer_shapes(agent: RQLConfig, obs_dim: int, action_dim: int) -> list[tuple[int, int, int, int]]:
    """The update's hidden-layer products as (members, rows, inputs, outputs): the velocity field's
    (1 member) and the value ensemble's (K members), each at the batch size."""
    chunk = agent.horizon * action_dim
    shapes = []
    for members, widths, first_in in ((1, agent.actor_hidden_dims, obs_dim + chunk + 1),
                                      (agent.ensemble_size, agent.value_hidden_dims, obs_dim + chunk + 1)):
        inputs = first_in
        for width in widths:
            shapes.append((members, agent.batch_size, inputs, width))
            inputs = width
    return shapes


def measure_routes(shapes: list[tuple[int, int, int, int]], seconds: float = 0.3, rounds: int = 3) -> MatmulRoute:
    """Time both CPU routes on ``shapes`` (alternating, ``rounds`` rounds of about ``seconds`` each in
    all) and check their accuracy; the route to take, with the figures. Restores torch's precision."""
    generator = torch.Generator().manual_seed(0)
    operands = [(torch.randn(m, rows, k, generator=generator), torch.randn(m, k, n, generator=generator))
                for m, rows, k, n in shapes]
    flops = sum(2 * m * rows * k * n for m, rows, k, n in shapes)
    before = torch.get_float32_matmul_precision()
    elapsed = dict.fromkeys(ROUTE_PRECISION, 0.0)
    repeats = dict.fromkeys(ROUTE_PRECISION, 0)
    errors: dict[str, float] = {}
    try:
        for name, setting in ROUTE_PRECISION.items():
            torch.set_float32_matmul_precision(setting)
            errors[name] = max(_relative_error(a, b) for a, b in operands)
        for _ in range(rounds):
            for name, setting in ROUTE_PRECISION.items():
                torch.set_float32_matmul_precision(setting)
                start = time.perf_counter()
                while time.perf_counter() - start < seconds / (rounds * len(ROUTE_PRECISION)):
                    for a, b in operands:
                        _product(a, b)
                    repeats[name] += 1
                elapsed[name] += time.perf_counter() - start
    finally:
        torch.set_float32_matmul_precision(before)
    gflops = {name: flops * repeats[name] / elapsed[name] / 1e9 for name in ROUTE_PRECISION}
    name = pick_route(gflops, errors)
    return MatmulRoute("highest", name, ROUTE_PRECISION[name], "measured", gflops, errors)


def pick_route(gflops: dict[str, float], errors: dict[str, float]) -> str:
    """'oneDNN' when it is at least ``ONEDNN_SPEEDUP`` times as fast as the default and as accurate
    (relative error within ``ACCURACY_SLACK`` times the default's, and under ``ERROR_CEILING``), else 'default'."""
    accurate = errors["oneDNN"] <= min(ERROR_CEILING, max(ACCURACY_SLACK * errors["default"], 2e-6))
    faster = gflops["oneDNN"] >= ONEDNN_SPEEDUP * gflops["default"]
    return "oneDNN" if accurate and faster else "default"


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The product as the networks compute it: a linear layer's mm for one member (m = 1), the value
    ensemble's batched matmul for K members. a: (m, rows, k), b: (m, k, n) -> (m, rows, n)."""
    return torch.mm(a[0], b[0])[None] if a.shape[0] == 1 else torch.bmm(a, b)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |fp32 product - float64 product| over the largest |float64 product|."""
    exact = _product(a.double(), b.double())
    return float((_product(a, b).double() - exact).abs().max() / exact.abs().max())


def _cache_key(shapes: list[tuple[int, int, int, int]]) -> str:
    return json.dumps({"cpu": _cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "shapes": shapes}, sort_keys=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    """Where measured routes are kept: $XDG_CACHE_HOME/rql (else ~/.cache/rql)/matmul_routes.json."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rql" / "matmul_routes.json"


@contextmanager
def _cache_lock() -> Iterator[None]:
    """An exclusive lock on the cache, held for the block. Where it cannot be had (a folder that cannot
    be written, a minute's wait) the block runs unlocked: a second measurement costs a second, never a
    failed run."""
    path = cache_file()
    lock = FileLock(path.with_name(f".{path.name}.lock"), timeout=60)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except (Timeout, OSError):
        pass
    try:
        yield
    finally:
        if lock.is_locked:
            lock.release()


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, route: MatmulRoute) -> None:
    """Add ``route`` under ``key``; a cache that cannot be written only means measuring again next time."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {**_read_cache(), key: route.to_dict()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(temporary, path)  # atomic: runs starting together never read half a file
    except OSError:
        pass
