"""Writing an export: the checks a checkpoint must pass, what its env says about the file's inputs and
outputs, and the file written, validated and described in ``FILE.json``, or nothing left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.errors import CheckpointError, RQLError
from rql_cli.export.policy import (
    FORMATS,
    INPUT_NAMES,
    MAX_FLOW_STEPS,
    ONNX_MAX_BYTES,
    OUTPUT_NAME,
    TOLERANCE,
    VALIDATION_BATCHES,
    open_exported,
    require_export_packages,
    validation_difference,
    write_policy,
)

if TYPE_CHECKING:
    import numpy as np

    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint_meta import CheckpointMeta
    from rql_cli.io.resolve import LoadedCheckpoint

SIDECAR_FORMAT = 1
ENV_OBSERVATIONS = 8
"""Validation rows taken from env resets (the rest are standard-normal observations)."""


@dataclass
class ExportReport:
    """What ``export_checkpoint`` wrote and measured.

    Attributes:
        path: the exported file; sidecar: ``path`` + ``.json``; export_format: 'onnx' or 'pt2'.
        max_abs_diff: largest |exported - eager act| over the validation batches; tolerance: its limit.
        size_bytes: the file's size. seconds: wall time of export and validation.
        interface: the sidecar's content.
    """

    path: Path
    sidecar: Path
    export_format: str
    max_abs_diff: float
    tolerance: float
    size_bytes: int
    seconds: float
    interface: dict[str, Any]



def check_exportable(meta: CheckpointMeta, agent: RQLAgent, export_format: str, ref: str) -> None:
    """Refuse a checkpoint whose policy this exporter cannot write (CheckpointError saying why)."""
    steps = meta.config.flow_steps
    if steps > MAX_FLOW_STEPS:
        raise CheckpointError(
            f"The checkpoint {ref} takes {steps} Euler steps per action (flow_steps); rql export unrolls "
            f"them into the graph and writes at most {MAX_FLOW_STEPS} (the paper's agents take 10). "
            "Train with fewer flow steps (--set flow_steps=10) to export this policy."
        )
    weight_bytes = sum(p.numel() * p.element_size() for p in agent.velocity_target.parameters())
    if export_format == "onnx" and weight_bytes > ONNX_MAX_BYTES:
        raise CheckpointError(
            f"The checkpoint {ref} has a velocity field of {weight_bytes / 2**30:.1f} GiB, over the 2 GiB "
            "an ONNX file can hold. Export it with --format pt2."
        )



# ------------------------------------------------------------------------------------------
# The environment's side: observation layout, action bounds, real observations
# ------------------------------------------------------------------------------------------


def env_interface(loaded: LoadedCheckpoint) -> tuple[dict[str, Any], np.ndarray | None]:
    """(the observation layout and action bounds of the checkpoint's env, up to ``ENV_OBSERVATIONS``
    reset observations (N, obs_dim) float32 for validation).

    The env is built as evaluation builds it (``envs.make.make_eval_env``). Where it cannot be built
    (a Minari checkpoint whose dataset is not on disk and records no env spec, say) the layout is
    recorded as unknown with the reason, and the export goes on: the file itself needs no env.
    """
    import gymnasium
    import numpy as np

    from rql_cli.envs.make import make_eval_env
    from rql_cli.io.checkpoint_meta import check_checkpoint_dims

    meta = loaded.meta
    try:
        env = make_eval_env(meta.task_name)
    except Exception as error:  # env constructors raise many types; none of them stops an export
        return {"observation_layout": None, "action_bounds": None, "env_unavailable": str(error)}, None
    try:
        spaces = (env.observation_space, env.action_space)
        obs_dim, action_dim = (space.shape[-1] if space.shape else 0 for space in spaces)
        check_checkpoint_dims(loaded.resolved.ref, meta, obs_dim, action_dim, "the environment", meta.env_id)
        observation_space, action_space = _spaces_before_adapters(env)
        resets = [np.asarray(env.reset(seed=seed)[0], np.float32).ravel() for seed in range(ENV_OBSERVATIONS)]
    finally:
        env.close()
    low = np.broadcast_to(np.asarray(action_space.low, np.float64), action_space.shape).tolist()
    high = np.broadcast_to(np.asarray(action_space.high, np.float64), action_space.shape).tolist()
    interface = {
        "observation_layout": _layout(observation_space, gymnasium),
        "action_bounds": {
            "low": low, "high": high,
            "from_unit_range": "env_action = low + (action + 1) / 2 * (high - low)"
            + (" (identity here: the env acts in [-1, 1])" if all(v == -1 for v in low) and all(v == 1 for v in high)
               else ""),
        },
    }
    return interface, np.stack(resets)


def _spaces_before_adapters(env: Any) -> tuple[Any, Any]:
    """The observation space before flattening and the action space before rescaling to [-1, 1]
    (``envs.external`` adds those adapters to Minari and gymnasium envs), else the env's own."""
    import gymnasium

    observation_space, action_space = env.observation_space, env.action_space
    layer = env
    while isinstance(layer, gymnasium.Wrapper):
        if isinstance(layer, gymnasium.wrappers.FlattenObservation):
            observation_space = layer.env.observation_space
        if isinstance(layer, gymnasium.wrappers.RescaleAction):
            action_space = layer.env.action_space
        layer = layer.env
    return observation_space, action_space


def _layout(space: Any, gymnasium: Any) -> list[dict[str, Any]]:
    """The parts of the flat observation vector, in order: key (None for a plain vector; 'a/b' for
    nested dicts), shape, and the [start, stop) columns it fills (``gymnasium.spaces.flatten``'s order)."""
    parts: list[dict[str, Any]] = []

    def visit(part: Any, key: str | None) -> None:
        if isinstance(part, gymnasium.spaces.Dict):
            for name, sub in part.spaces.items():
                visit(sub, f"{key}/{name}" if key else str(name))
            return
        start = parts[-1]["stop"] if parts else 0
        size = int(gymnasium.spaces.flatdim(part))
        shape = list(part.shape) if part.shape is not None else None
        parts.append({"key": key, "shape": shape, "start": start, "stop": start + size})

    visit(space, None)
    return parts


# ------------------------------------------------------------------------------------------
# Export, validated
# ------------------------------------------------------------------------------------------


def sidecar_path(path: Path) -> Path:
    """``FILE.json`` beside the exported ``FILE``."""
    return path.with_name(path.name + ".json")


def export_checkpoint(
    loaded: LoadedCheckpoint, export_format: str, out: Path, *, tolerance: float = TOLERANCE
) -> ExportReport:
    """Export a loaded checkpoint's EMA policy to ``out``, validate it, and write ``out`` + ``.json``.

    The file is written under a temporary name beside ``out`` and renamed only after its actions
    match the eager ``act`` within ``tolerance``; on any failure nothing is left behind (an older
    ``out`` stays as it was). The agent must live on the CPU.

    Raises:
        CheckpointError: the checkpoint cannot be exported (``check_exportable``).
        RQLError: a package is missing, or validation found a difference above ``tolerance``.
    """
    import torch

    from rql_cli.io.atomic import write_json_atomic
    from rql_cli.io.checkpoint import software_versions

    started = time.perf_counter()
    agent, meta = loaded.agent, loaded.meta
    if agent.device.type != "cpu":
        raise ValueError(f"export_checkpoint needs an agent on the CPU, not {agent.device}.")
    require_export_packages(export_format)
    check_exportable(meta, agent, export_format, loaded.resolved.ref)
    environment, env_observations = env_interface(loaded)
    generator = torch.Generator().manual_seed(0)
    observations = torch.randn(max(VALIDATION_BATCHES), agent.obs_dim, generator=generator).numpy()
    if env_observations is not None:
        observations[: len(env_observations)] = env_observations[: len(observations)]

    out = Path(out).expanduser()
    made = _missing_folders(out.parent)
    tmp = out.with_name(f".{out.name}.tmp{FORMATS[export_format]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_policy(agent, export_format, tmp)
        difference = validation_difference(agent, open_exported(tmp, export_format), observations)
        if not difference <= tolerance:
            raise RQLError(
                f"The exported {export_format} policy differs from the checkpoint's own by up to {difference:.3g} "
                f"on the same observations and noise, above the tolerance {tolerance:g}; it was not kept. "
                "Run again with --debug and report it, or pass a larger --tolerance if you accept the difference."
            )
        interface = _sidecar(loaded, export_format, out, tmp, environment, difference, tolerance, software_versions())
        write_json_atomic(sidecar_path(out), interface)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return ExportReport(
        path=out, sidecar=sidecar_path(out), export_format=export_format, max_abs_diff=float(difference),
        tolerance=tolerance, size_bytes=out.stat().st_size, seconds=time.perf_counter() - started,
        interface=interface,
    )


def _missing_folders(folder: Path) -> list[Path]:
    """The outermost folder of ``folder``'s missing ancestors (itself included), to remove on failure."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    return missing[-1:]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(
    loaded: LoadedCheckpoint, export_format: str, out: Path, written: Path, environment: dict[str, Any],
    difference: float, tolerance: float, versions: dict[str, str],
) -> dict[str, Any]:
    """FILE.json: how to feed the file, where it came from, how it was checked."""
    from importlib import metadata

    from rql_cli.io.checkpoint_files import VELOCITY_FILE

    agent, meta, resolved = loaded.agent, loaded.meta, loaded.resolved
    h, a = meta.config.horizon, meta.action_dim
    runtime = f"onnxruntime {metadata.version('onnxruntime')}" if export_format == "onnx" else "torch.export.load"
    if export_format == "onnx":
        versions = {**versions, "onnx": metadata.version("onnx"), "onnxscript": metadata.version("onnxscript")}
    revision = resolved.folder.name if resolved.hub_ref is not None else None
    return {
        "format_version": SIDECAR_FORMAT,
        "format": export_format,
        "file": out.name,
        "sha256": sha256_of(written),
        "inputs": {
            INPUT_NAMES[0]: {
                "shape": ["batch", meta.obs_dim], "dtype": "float32",
                "about": "the observation as the env gives it, flattened in observation_layout's order",
            },
            INPUT_NAMES[1]: {
                "shape": ["batch", agent.chunk_dim], "dtype": "float32",
                "about": "the flow's start x^0: independent standard normal N(0, 1) values, fresh for every "
                         "call (row i flattens a (horizon, action_dim) chunk, action by action)",
            },
        },
        "outputs": {
            OUTPUT_NAME: {
                "shape": ["batch", h, a], "dtype": "float32", "range": [-1.0, 1.0],
                "about": "h actions to run open loop, one per env step, before calling again",
            },
        },
        "obs_dim": meta.obs_dim, "action_dim": a, "horizon": h, "flow_steps": meta.config.flow_steps,
        **environment,
        "source": {
            "ref": resolved.ref, "kind": resolved.source, "folder": str(resolved.folder),
            "hub_repo": resolved.hub_ref.repo_id if resolved.hub_ref else None, "revision": revision,
            "velocity_sha256": sha256_of(resolved.folder / VELOCITY_FILE),
            "checkpoint": json.loads(meta.to_json()),
        },
        "versions": versions,
        "validation": {
            "max_abs_diff": difference, "tolerance": tolerance, "batches": list(VALIDATION_BATCHES),
            "against": "RQLAgent.act (EMA velocity field, eager torch) on the same observations and noise",
            "runtime": runtime,
        },
    }


