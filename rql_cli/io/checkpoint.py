"""Checkpoint folders: safetensors weights + JSON, written atomically, read with clear errors.

A checkpoint folder holds::

    config.json              format_version, the agent config, dataset, env id, dims, step, seed, versions
    velocity.safetensors     velocity field ("velocity.*") and its EMA target ("velocity_target.*")
    value.safetensors        value ensemble ("value.*") and its Polyak target ("value_target.*")
                             (a slim checkpoint keeps only "velocity_target.*", the field that acts,
                             and "value.*": see ``SLIM_STAND_INS``)
    train_state.safetensors  Adam moments, step, RNG states (for --resume; optional when shared)
    metrics.json             the latest evaluation (optional; schema and reader in metrics.py)

Nothing is pickled, so loading a stranger's checkpoint never runs code. ``config.json`` has one
schema (``CheckpointMeta``) and one reader (``read_meta``), both in ``checkpoint_meta.py`` with the
format history, and one writer (``save_checkpoint``, here).
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

import safetensors.torch  # called through the module, so a test can fault each write it makes
import torch

import rql_cli
from rql_cli.core.rql import RQLAgent
from rql_cli.device import check_agent_fits
from rql_cli.errors import CheckpointError
from rql_cli.io.atomic import fsync_folder_files, write_bytes_synced
from rql_cli.io.checkpoint_files import (
    CONFIG_FILE,
    TRAIN_STATE_FILE,
    VALUE_FILE,
    VELOCITY_FILE,
)
from rql_cli.io.checkpoint_meta import CheckpointMeta, read_meta
from rql_cli.io.metrics import EvaluationReport, write_metrics


def software_versions() -> dict[str, str]:
    """Versions of rql, torch and ogbench (when installed) for the record."""
    versions = {"rql": rql_cli.__version__, "torch": torch.__version__}
    try:
        versions["ogbench"] = metadata.version("ogbench")
    except metadata.PackageNotFoundError:
        pass
    return versions


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


# The networks a slim checkpoint leaves out, each with the stored network that stands in for it when one
# is loaded: a fine-tune's raw field starts at the EMA field that acts, and its Polyak target at the value
# ensemble, as a new run starts its target. Half the bytes; acting and evaluation read neither, but a
# fine-tune from a slim start was measured slower (docs/results.md), so bundles stay whole by default.
SLIM_STAND_INS = {"velocity": "velocity_target", "value_target": "value"}


def weight_tensors(agent: RQLAgent, *, slim: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The two weight files' contents, keyed by file name then tensor name (``velocity.mlp...``).

    ``slim`` leaves out the networks of ``SLIM_STAND_INS``.
    """
    def prefixed(*prefixes: str) -> dict[str, torch.Tensor]:
        kept = [prefix for prefix in prefixes if not (slim and prefix in SLIM_STAND_INS)]
        return {f"{prefix}.{k}": v for prefix in kept for k, v in getattr(agent, prefix).state_dict().items()}

    return {
        VELOCITY_FILE: prefixed("velocity", "velocity_target"),
        VALUE_FILE: prefixed("value", "value_target"),
    }


def train_state_tensors(agent: RQLAgent, generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Adam moments per parameter index (``optimizer.{i}.{exp_avg,...}``), ``step`` and ``rng.{name}``."""
    tensors: dict[str, torch.Tensor] = {"step": torch.tensor(agent.step, dtype=torch.int64)}
    for index, state in agent.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    return tensors


def save_checkpoint(
    directory: Path,
    agent: RQLAgent,
    meta: CheckpointMeta,
    *,
    generators: dict[str, torch.Generator] | None = None,
    metrics: EvaluationReport | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    slim: bool = False,
) -> Path:
    """Write a checkpoint folder atomically: into a temporary sibling, fsync, then rename.

    A crash at any point leaves either the previous folder or the new one, whole.
    With ``generators`` the train state (optimizer, step, RNG) is written too; ``extra_tensors``
    maps further safetensors file names to their tensors (fine-tuning's online buffer); ``slim``
    writes the weights a shared agent needs only (``SLIM_STAND_INS``).
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, agent, meta, generators, metrics, extra_tensors, slim)
        _swap_into_place(tmp, directory)
    except Exception as error:
        # safetensors reports a full disk as its own SafetensorError, the rest of Python as OSError.
        if not isinstance(error, OSError) and "os error" not in str(error):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the checkpoints written before it are intact" if directory.parent.exists() else "nothing was written"
        reason = getattr(error, "strerror", None) or str(error)
        raise CheckpointError(
            f"Could not write the checkpoint {directory}: {reason}; {kept}. Free some space (or choose "
            "another --out) and resume."
        ) from None
    return directory


def _write_files(
    tmp: Path, agent: RQLAgent, meta: CheckpointMeta, generators: dict[str, torch.Generator] | None,
    metrics: EvaluationReport | None, extra_tensors: dict[str, dict[str, torch.Tensor]] | None,
    slim: bool = False,
) -> None:
    """Every file of a checkpoint into the folder ``tmp``, fsynced."""
    for file_name, tensors in weight_tensors(agent, slim=slim).items():
        safetensors.torch.save_file(_cpu_contiguous(tensors), str(tmp / file_name), metadata={"format": "pt"})
    if generators is not None:
        safetensors.torch.save_file(
            _cpu_contiguous(train_state_tensors(agent, generators)),
            str(tmp / TRAIN_STATE_FILE),
            metadata={"step": str(agent.step)},
        )
    for file_name, tensors in (extra_tensors or {}).items():
        safetensors.torch.save_file(_cpu_contiguous(tensors), str(tmp / file_name))
    write_bytes_synced(tmp / CONFIG_FILE, (meta.to_json() + "\n").encode())
    if metrics is not None:
        write_metrics(tmp, metrics)
    fsync_folder_files(tmp)


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Rename the finished ``tmp`` folder to ``directory``, replacing an older one whole.

    ``.old`` is deleted only while ``directory`` exists, so an ``.old`` without its ``directory`` is
    the previous checkpoint, whole: ``run_checkpoints.remove_unfinished_writes`` puts it back at the next start.
    """
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file; CheckpointError naming the file if it is unreadable."""
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt. "
            "Re-download or re-save the checkpoint."
        ) from error


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def _check_tensor(path: Path, name: str, value: torch.Tensor, expected: torch.Tensor) -> None:
    """Shape, dtype (never converted silently) and finiteness of one stored tensor."""
    if value.shape != expected.shape:
        raise CheckpointError(
            f"{path}: tensor '{name}' has shape {tuple(value.shape)} but config.json describes "
            f"{tuple(expected.shape)}."
        )
    if value.dtype != expected.dtype:
        raise CheckpointError(
            f"{path}: tensor '{name}' is {str(value.dtype).replace('torch.', '')}, but rql stores "
            f"{str(expected.dtype).replace('torch.', '')} weights; it is refused rather than converted."
        )
    if not torch.isfinite(value).all():
        raise CheckpointError(f"{path}: tensor '{name}' holds NaN or infinite values; these weights cannot act.")


def load_weights_into(agent: RQLAgent, directory: Path) -> None:
    """Load both weight files into ``agent``; shape mismatches name the tensor and both shapes.

    A network a slim checkpoint left out is loaded from its stand-in (``SLIM_STAND_INS``).
    """
    directory = Path(directory)
    parts = {
        VELOCITY_FILE: ("velocity", "velocity_target"),
        VALUE_FILE: ("value", "value_target"),
    }
    for file_name, prefixes in parts.items():
        tensors = load_tensors(directory / file_name)
        for prefix in prefixes:
            module: torch.nn.Module = getattr(agent, prefix)
            expected = module.state_dict()
            found = _split(tensors, prefix)
            if not found and prefix in SLIM_STAND_INS:
                found = _split(tensors, SLIM_STAND_INS[prefix])
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            if missing or extra:
                raise CheckpointError(
                    f"{directory / file_name} does not match the network in config.json: "
                    f"missing {missing[:3]}, unexpected {extra[:3]}."
                )
            for key, value in found.items():
                _check_tensor(directory / file_name, f"{prefix}.{key}", value, expected[key])
            module.load_state_dict(found)


def load_train_state_into(
    agent: RQLAgent, directory: Path, generators: dict[str, torch.Generator]
) -> None:
    """Restore Adam moments, the step counter and RNG states saved by ``save_checkpoint``."""
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: this checkpoint was saved without its training state "
            "(published checkpoints usually are), so it cannot be resumed exactly. "
            "Use `rql finetune` to continue from its weights instead."
        )
    tensors = load_tensors(path)
    missing = [key for key in ("step", *(f"rng.{name}" for name in generators)) if key not in tensors]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}; it cannot resume this run exactly. Start a new run from "
            "its weights with `rql finetune --checkpoint FOLDER --dataset NAME`."
        )
    agent.step = int(tensors["step"].item())
    _load_optimizer(agent, tensors)
    for name, generator in generators.items():
        try:
            generator.set_state(tensors[f"rng.{name}"])
        except (RuntimeError, TypeError) as error:
            raise CheckpointError(f"{path}: the RNG state 'rng.{name}' is damaged ({error}).") from None


def load_optimizer_state(agent: RQLAgent, directory: Path) -> bool:
    """Continue Adam from a checkpoint's train state when it has one; True if it did.

    Only the optimiser moments are taken (not the step counter or RNG states): a fine-tuning run
    counts its own steps and draws its own randomness.
    """
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        return False
    tensors = load_tensors(path)
    _load_optimizer(agent, tensors)
    return True


def _load_optimizer(agent: RQLAgent, tensors: dict[str, torch.Tensor]) -> None:
    optimizer_state = agent.optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer_state["state"] = state
    try:
        agent.optimizer.load_state_dict(optimizer_state)
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"The optimiser state does not fit these networks: {error}") from None


def load_agent(directory: Path, device: torch.device | str = "cpu") -> tuple[RQLAgent, CheckpointMeta]:
    """Build an RQLAgent on ``device`` from a checkpoint folder and load its weights (no train state).

    Every tensor is checked against the networks config.json describes; CheckpointError names the
    file and both shapes otherwise. ``rql_cli.io.resolve.load_checkpoint`` is the entry point that
    takes any ``--checkpoint`` reference.
    """
    meta, _ = read_meta(directory)
    check_agent_fits(meta.config, meta.obs_dim, meta.action_dim, torch.device(device))
    agent = RQLAgent(meta.config, meta.obs_dim, meta.action_dim, torch.device(device))
    load_weights_into(agent, directory)
    agent.step = meta.step
    return agent, meta
