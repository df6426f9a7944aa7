"""Choosing the torch device from the user's ``--device`` string, and seeded generators on it.

Outside ``core/`` because it speaks to the user (its errors say how to fix the flag).
"""

from __future__ import annotations

import torch

from rql_cli.errors import RQLError


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
