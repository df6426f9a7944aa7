"""Choosing the torch device from the user's ``--device`` string, and seeded generators on it.

Outside ``core/`` because it speaks to the user (its errors say how to fix the flag).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rql_cli.core.networks import parameter_count
from rql_cli.errors import RQLError

if TYPE_CHECKING:
    from rql_cli.config import RQLConfig


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu'; 'cuda' or 'cuda:N' (an error if absent).

    Never falls back silently: asking for CUDA on a machine without it is an error.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise RQLError(f"Unknown device '{name}': use auto, cpu, cuda or cuda:N.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RQLError(
                f"--device {name} asked for CUDA, but torch sees no CUDA device here "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                "Use --device cpu, or --device auto to pick CUDA only when present."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RQLError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    elif device.type != "cpu":
        raise RQLError(f"Device type '{device.type}' is not supported: use auto, cpu, cuda or cuda:N.")
    return device


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded torch.Generator living on ``device``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (GPU: free device memory; CPU: available RAM); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(needed_bytes: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, before allocating, ``what`` needing more than 80% of the free memory on ``device``."""
    free = available_bytes(device)
    if free is not None and needed_bytes > 0.8 * free:
        raise RQLError(
            f"{what} would need {needed_bytes / 2**30:,.2f} GiB on {device}, but only "
            f"{free / 2**30:,.2f} GiB are free. {fix}"
        )


def check_agent_fits(config: RQLConfig, obs_dim: int, action_dim: int, device: torch.device) -> None:
    """Refuse an agent whose weights, targets, gradients and Adam moments cannot fit on ``device``."""
    parameters = parameter_count(config, obs_dim, action_dim)
    check_fits(
        5 * 4 * parameters, device, f"An agent of {parameters:,} parameters (networks of this config)",
        "Check the config's hidden widths and ensemble_size.",
    )


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup v2 ``cpu.max`` (or v1 cfs quota), None when unlimited or unknown."""
    try:
        quota_text, period_text = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota_text == "max" else int(quota_text) / int(period_text)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
