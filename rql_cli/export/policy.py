"""The exported policy itself: the module that is traced, writing it as ONNX or pt2, running the
file back, and the check against the eager ``RQLAgent.act``.

The module is ``core.flow.euler_generate`` over the EMA velocity field, clipped and shaped as ``act``
does: inputs ``observation`` (B, obs_dim) float32 and ``noise`` (B, h*A) float32, the flow's
x^0 ~ N(0, I) drawn by the caller; output ``action_chunk`` (B, h, A) float32 in [-1, 1]; B dynamic.
torch, numpy and the ONNX packages are imported inside functions, so the CLI can read the constants
here without loading them.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.errors import RQLError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from rql_cli.core.rql import RQLAgent

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
"""Export format -> the file suffix it must carry (``rql eval`` tells an exported file by it)."""

TOLERANCE = 1e-4
"""Largest |exported - eager| action difference an export may show in validation (actions lie in
[-1, 1]). Measured: onnxruntime differs from eager torch by about 1e-6, a pt2 archive by 0."""

MAX_FLOW_STEPS = 100
"""The Euler steps are unrolled into the graph; beyond this many the graph, and the time to export
it (about half a second per step for ONNX), grow with no use (the paper's agents take 10)."""

ONNX_MAX_BYTES = 2**31 - 1
"""ONNX keeps a single-file model in one protobuf message, which cannot exceed 2 GiB."""

INPUT_NAMES = ("observation", "noise")
OUTPUT_NAME = "action_chunk"
VALIDATION_BATCHES = (1, 64)
"""Batch sizes validation runs (the batch dimension is dynamic: both must give the eager actions)."""

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ExportedFn = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
"""observation (B, obs_dim) float32, noise (B, h*A) float32 -> action chunks (B, h, A) float32."""


def export_format_for(out: Path, requested: str | None) -> str:
    """The format of an export to ``out``: ``requested`` or the one its suffix names; they must agree.

    Raises RQLError for an unknown format, a suffix that names none, or a suffix and a format that
    disagree (``rql eval`` recognises an exported file by its suffix).
    """
    known = ", ".join(FORMATS)
    if requested is not None and requested not in FORMATS:
        raise RQLError(f"Unknown export format '{requested}'. Formats: {known}.")
    by_suffix = next((name for name, suffix in FORMATS.items() if out.suffix == suffix), None)
    chosen = requested or by_suffix
    if chosen is None:
        raise RQLError(
            f"--out {out} names no format: end it in {' or '.join(FORMATS.values())} (e.g. {out.stem}.onnx), "
            "or pass --format onnx|pt2 with such a name."
        )
    if by_suffix != chosen:
        raise RQLError(
            f"--format {chosen} writes a {FORMATS[chosen]} file, but --out {out} ends in '{out.suffix}'. "
            f"Name it {out.with_suffix(FORMATS[chosen]).name}: `rql eval` tells an exported policy by its suffix."
        )
    return chosen


def require_export_packages(export_format: str) -> None:
    """Refuse, with the install command, when a package ``export_format`` needs is missing."""
    import importlib.util

    needed = ONNX_PACKAGES if export_format == "onnx" else ()
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise RQLError(
            f"Exporting to {export_format} needs {', '.join(needed)}; missing: {', '.join(missing)}. "
            f"Install them with: pip install {' '.join(needed)} (rql-cli's extra 'export')."
        )



# ------------------------------------------------------------------------------------------
# The graph
# ------------------------------------------------------------------------------------------


@functools.cache
def _policy_module_class() -> type[torch.nn.Module]:
    """The module that is exported (a class made on first use, so importing this file needs no torch)."""
    import torch

    from rql_cli.core.flow import euler_generate

    class UnrolledPolicy(torch.nn.Module):
        """``RQLAgent.act`` with the noise as an input: (B, obs_dim), (B, h*A) -> (B, h, A) in [-1, 1]."""

        def __init__(self, agent: RQLAgent):
            super().__init__()
            self.velocity = agent.velocity_target  # the EMA field, the one evaluation acts with
            self.flow_steps, self.horizon = agent.config.flow_steps, agent.config.horizon
            self.action_dim = agent.action_dim

        def forward(self, observation: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            chunk = euler_generate(self.velocity, observation, noise, self.flow_steps)
            return chunk.clamp(-1.0, 1.0).view(observation.shape[0], self.horizon, self.action_dim)

    return UnrolledPolicy


def policy_module(agent: RQLAgent) -> torch.nn.Module:
    """The agent's EMA policy as a module of (observation, noise), in eval mode, sharing the agent's weights."""
    return _policy_module_class()(agent).eval()


def _example_inputs(agent: RQLAgent) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    # Batch 2, not 1: torch.export would take a batch of 1 for a constant and specialise on it.
    return torch.zeros(2, agent.obs_dim), torch.zeros(2, agent.chunk_dim)


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    import torch

    batch = torch.export.Dim("batch")
    return {name: {0: batch} for name in INPUT_NAMES}


def write_policy(agent: RQLAgent, export_format: str, path: Path) -> None:
    """Trace the agent's EMA policy (on the CPU) and write it to ``path`` as ``export_format``."""
    import torch

    module = policy_module(agent)
    example = _example_inputs(agent)
    with _quiet_exporter(), torch.no_grad():
        if export_format == "pt2":
            program = torch.export.export(module, example, dynamic_shapes=_dynamic_batch())
            torch.export.save(program, str(path))
            return
        with tempfile.TemporaryDirectory() as artifacts:  # anything the exporter leaves goes with it
            onnx_program = torch.onnx.export(
                module, example, None, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamo=True, dynamic_shapes=_dynamic_batch(), verbose=False, artifacts_dir=artifacts,
            )
            assert onnx_program is not None  # the dynamo exporter always returns its program
            onnx_program.save(str(path), external_data=False)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notes, 'torchvision is not installed', axis names):
    none of it says anything a user can act on, and validation checks the result anyway."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------
# Running an exported file
# ------------------------------------------------------------------------------------------


def open_exported(path: Path, export_format: str, threads: int = 1) -> ExportedFn:
    """The exported file as a numpy function, run by onnxruntime (CPU) or ``torch.export.load``.

    ``threads``: onnxruntime's intra-op threads (at a robot's batch of 1, more only add hand-offs).
    Raises RQLError when the file cannot be read as ``export_format``.
    """
    import numpy as np

    if export_format == "onnx":
        require_export_packages("onnx")
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own pybind types for unreadable models
            raise RQLError(
                f"{path} is not a readable ONNX model ({error}). Export it again with `rql export`."
            ) from None

        def run_onnx(observation: np.ndarray, noise: np.ndarray) -> np.ndarray:
            feed = {INPUT_NAMES[0]: observation.astype(np.float32, copy=False),
                    INPUT_NAMES[1]: noise.astype(np.float32, copy=False)}
            return np.asarray(session.run([OUTPUT_NAME], feed)[0])

        return run_onnx

    import torch

    try:
        program = torch.export.load(str(path)).module()
    except Exception as error:  # a damaged archive fails in zipfile, json or torch's deserialiser
        raise RQLError(
            f"{path} is not a readable torch.export archive ({error}). Export it again with `rql export`."
        ) from None

    def run_pt2(observation: np.ndarray, noise: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            chunk = program(torch.from_numpy(np.ascontiguousarray(observation, np.float32)),
                            torch.from_numpy(np.ascontiguousarray(noise, np.float32)))
        return chunk.numpy()

    return run_pt2


def act_noise(batch_size: int, chunk_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The flow noise x^0 (B, h*A) ~ N(0, I) that ``RQLAgent.act`` draws from ``generator``, drawn the same way."""
    import torch

    return torch.randn(batch_size, chunk_dim, generator=generator, device=generator.device)


def validation_difference(agent: RQLAgent, run: ExportedFn, observations: np.ndarray, seed: int = 0) -> float:
    """Largest |run(obs, noise) - agent.act(obs)| over ``VALIDATION_BATCHES`` rows of ``observations``,
    with the noise ``act`` drew; inf when a batch comes back in the wrong shape or not finite.

    observations: (N, obs_dim) float32, N >= the largest validation batch.
    """
    import numpy as np
    import torch

    from rql_cli.device import make_generator

    worst = 0.0
    for index, size in enumerate(VALIDATION_BATCHES):
        rows = torch.as_tensor(observations[:size], dtype=torch.float32, device=agent.device)
        expected = agent.act(rows, make_generator(agent.device, seed + index)).cpu().numpy()
        noise = act_noise(size, agent.chunk_dim, make_generator(agent.device, seed + index)).cpu().numpy()
        got = run(rows.cpu().numpy(), noise)
        if got.shape != expected.shape or not np.isfinite(got).all():
            return float("inf")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


