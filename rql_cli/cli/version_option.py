"""`rql --version` (`-V`): rql's version; with `--verbose`, the versions a bug report needs."""

from __future__ import annotations

import platform
from importlib import metadata

import rql_cli

# The packages whose versions change what rql does: the simulator and its tasks, the data, the Hub.
REPORTED_PACKAGES = ("numpy", "gymnasium", "mujoco", "ogbench", "minari", "huggingface_hub", "safetensors")


def installed_version(package: str) -> str:
    """The installed distribution's version, or "not installed"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def torch_version() -> str:
    """torch's version and what it was built for, e.g. "2.13.0+cpu (CPU only)" or "... (CUDA 12.8)"."""
    import torch  # only for --verbose: plain --version stays instant

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    return f"{torch.__version__} ({build})"


def version_lines(verbose: bool) -> list[str]:
    """``rql VERSION``, then with ``verbose`` one ``name: version`` line per thing that matters."""
    lines = [f"rql {rql_cli.__version__}"]
    if verbose:
        lines.append(f"python: {platform.python_version()} ({platform.system()} {platform.machine()})")
        lines.append(f"torch: {torch_version()}")
        lines += [f"{package}: {installed_version(package)}" for package in REPORTED_PACKAGES]
    return lines
