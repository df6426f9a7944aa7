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
schema (``CheckpointMeta``), one writer (``save_checkpoint``) and one reader (``read_meta``), which
migrates older formats:

    format 1   training wrote metrics.json as one result dict (``metrics.read_metrics`` migrates it)
    format 2   metrics.json always holds ``{..., tasks: [...]}``; config.json fields unchanged
    format 3   config.json's ``config`` holds the agent config alone (``RQLConfig``); how the run used
               the machine (steps, device, threads, ...) stays in the run's train_config.json. The
               run's ``seed`` moves to the top level. Older formats' run fields are read and dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch  # called through the module, so a test can fault each write it makes
import torch

import rql_cli
from rql_cli.config import RQLConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.device import check_agent_fits
from rql_cli.errors import CheckpointError, RQLError
from rql_cli.io.atomic import fsync_folder_files, write_bytes_synced
from rql_cli.io.checkpoint_files import (
    CONFIG_FILE,
    REQUIRED_FILES,
    TRAIN_STATE_FILE,
    VALUE_FILE,
    VELOCITY_FILE,
)
from rql_cli.io.metrics import EvaluationReport, write_metrics
from rql_cli.names import ExternalName, ParsedName, parse_task_name

FORMAT_VERSION = 3


@dataclass
class CheckpointMeta:
    """A checkpoint's config.json: the typed config and what the weights were trained for.

    Attributes:
        config: the agent config (networks, flow, losses, optimiser) the weights were trained with.
        dataset: dataset file stem, e.g. ``'cube-single-play-v0'``.
        env_id: ogbench singletask name the rewards were relabelled for (names the task).
        obs_dim, action_dim: sizes of one observation and one action (not a chunk).
        step: gradient steps taken when it was saved.
        versions: rql, torch and ogbench versions that wrote it.
        success_timing: ogbench's 'pre' or 'post' success semantics (None if unknown).
        lineage: for a fine-tuned checkpoint, where it came from and how (``rql finetune``): the
            source REF, what it resolved to, its step, the method and its settings; None otherwise.
        env_spec: for a Minari or gymnasium env (``env_id`` 'minari:...' / 'gym:...'), its gymnasium
            ``EnvSpec`` as JSON, so the env can be rebuilt without the dataset; None for OGBench.
        seed: the seed of the run that trained it (with the config and the data, what made the
            weights); None when unknown.
    """

    config: RQLConfig
    dataset: str
    env_id: str
    obs_dim: int
    action_dim: int
    step: int
    versions: dict[str, str] = field(default_factory=dict)
    success_timing: str | None = None
    lineage: dict[str, Any] | None = None
    env_spec: str | None = None
    seed: int | None = None

    @property
    def task_name(self) -> ParsedName:
        """``env_id`` parsed (family, dataset type, task): the env this checkpoint acts in.

        For a Minari or gymnasium env it carries the recorded ``env_spec``, so the env can be built
        where the dataset is not on disk.
        """
        parsed = parse_task_name(self.env_id)
        if isinstance(parsed, ExternalName) and self.env_spec:
            return dataclasses.replace(parsed, env_spec=self.env_spec)
        return parsed

    def to_json(self) -> str:
        """The config.json text (always the current ``FORMAT_VERSION``)."""
        return json.dumps(
            dict(
                format_version=FORMAT_VERSION,
                dataset=self.dataset,
                env_id=self.env_id,
                obs_dim=self.obs_dim,
                action_dim=self.action_dim,
                horizon=self.config.horizon,
                step=self.step,
                seed=self.seed,
                versions=self.versions,
                success_timing=self.success_timing,
                lineage=self.lineage,
                **({"env_spec": self.env_spec} if self.env_spec else {}),
                config=self.config.to_dict(),
            ),
            indent=2,
        )


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


def _migrate(payload: dict[str, Any]) -> dict[str, Any]:
    """Bring an older config.json up to FORMAT_VERSION.

    Format 1 -> 2 changed no field of config.json (only metrics.json's layout, which
    ``metrics.read_metrics`` migrates). Format 2 -> 3: the run's seed comes up from ``config``; the
    other run fields there are dropped when the agent config is read.
    """
    if payload["format_version"] < 3 and isinstance(payload.get("config"), dict):
        payload = {**payload, "seed": payload["config"].get("seed")}
    return {**payload, "format_version": FORMAT_VERSION}


def _read_config_payload(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder as a dict, after checking the folder's files and format."""
    if not directory.is_dir():
        raise CheckpointError(f"Checkpoint folder {directory} does not exist.")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"Checkpoint {directory} is missing {', '.join(missing)}; a checkpoint folder needs "
            f"{', '.join(REQUIRED_FILES)}."
        )
    path = directory / CONFIG_FILE
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}.") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(payload).__name__}.")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} has no integer format_version.")
    if version > FORMAT_VERSION:
        versions = payload.get("versions")
        writer = versions.get("rql", "a newer release") if isinstance(versions, dict) else "a newer release"
        raise CheckpointError(
            f"Checkpoint {directory} has format_version {version}, written by rql {writer}; this "
            f"rql reads up to format_version {FORMAT_VERSION}. Upgrade rql to load it."
        )
    return _migrate(payload)


def read_meta(directory: Path) -> tuple[CheckpointMeta, list[str]]:
    """Parse a checkpoint's config.json; returns the meta and the config fields this rql does not know.

    Raises CheckpointError naming the file for a missing file, invalid JSON, a newer format, a
    missing field or a value of the wrong type. Unknown config fields only warn.
    """
    directory = Path(directory)
    payload = _read_config_payload(directory)
    path = directory / CONFIG_FILE
    try:
        config, unknown = RQLConfig.from_dict(payload["config"], strict=False)
        versions = payload.get("versions") or {}
        meta = CheckpointMeta(
            config=config,
            dataset=_text(payload["dataset"], "dataset"),
            env_id=_text(payload["env_id"], "env_id"),
            obs_dim=_count(payload["obs_dim"], "obs_dim"),
            action_dim=_count(payload["action_dim"], "action_dim"),
            step=_count(payload["step"], "step", minimum=0),
            versions={str(k): str(v) for k, v in dict(versions).items()},
            success_timing=payload.get("success_timing"),
            lineage=_optional_object(payload.get("lineage"), "lineage"),
            env_spec=_text(payload["env_spec"], "env_spec") if payload.get("env_spec") else None,
            seed=None if payload.get("seed") is None else _count(payload["seed"], "seed", minimum=0),
        )
    except KeyError as error:
        raise CheckpointError(f"{path} lacks the field {error}.") from None
    except (RQLError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid checkpoint config: {error}") from None
    if unknown:
        warnings.warn(
            f"Checkpoint {directory} has config fields this rql does not know and ignores: "
            f"{', '.join(unknown)}.",
            stacklevel=2,
        )
    return meta, unknown


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string, got {json.dumps(value)}.")
    return value


def _optional_object(value: Any, name: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"'{name}' must be a JSON object or null, got {json.dumps(value)}.")
    return value


def _count(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {json.dumps(value)}.")
    return value


def check_checkpoint_dims(
    checkpoint: str, meta: CheckpointMeta, obs_dim: int, action_dim: int, what: str, name: str | None = None
) -> None:
    """Refuse a checkpoint whose observation or action size differs from ``what`` it is used with.

    The one check of its kind, for data and environments alike: the message names both shapes and
    which is which.

    Args:
        checkpoint: the checkpoint as the message names it (its folder, or the reference given).
        meta: its config.json; ``obs_dim`` and ``action_dim`` are what its networks take and produce.
        obs_dim, action_dim: the sizes ``what`` gives (an env's spaces: their last dimension).
        what: the other side, as a sentence names it: ``'the environment'``, ``"the run's data"``.
        name: the other side's own name (an env id), shown instead of ``what`` in the first clause.

    Raises:
        CheckpointError: the sizes differ.
    """
    if (meta.obs_dim, meta.action_dim) != (int(obs_dim), int(action_dim)):
        raise CheckpointError(
            f"The checkpoint {checkpoint} does not fit {name or what}: the checkpoint expects observations "
            f"of size {meta.obs_dim} and actions of size {meta.action_dim}; {what} gives observations of "
            f"size {obs_dim} and actions of size {action_dim}."
        )


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
