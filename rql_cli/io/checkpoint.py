"""Checkpoint folders: safetensors weights + JSON, written atomically, read with clear errors.

A checkpoint folder holds::

    config.json              format_version, the typed config, dataset, env id, dims, step, versions
    velocity.safetensors     velocity field ("velocity.*") and its EMA target ("velocity_target.*")
    value.safetensors        value ensemble ("value.*") and its Polyak target ("value_target.*")
    train_state.safetensors  Adam moments, step, RNG states (for --resume; optional when shared)
    metrics.json             the latest evaluation (optional)

Nothing is pickled, so loading a stranger's checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rql_cli.config import RQLConfig
from rql_cli.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHT_FILES = ("velocity.safetensors", "value.safetensors")
TRAIN_STATE_FILE = "train_state.safetensors"
REQUIRED_FILES = ("config.json", *WEIGHT_FILES)


@dataclass
class CheckpointMeta:
    """What config.json says about a checkpoint besides the config itself."""

    config: RQLConfig
    dataset: str
    env_id: str
    obs_dim: int
    action_dim: int
    step: int
    versions: dict[str, str] = field(default_factory=dict)
    success_timing: str | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            dict(
                format_version=self.format_version,
                dataset=self.dataset,
                env_id=self.env_id,
                obs_dim=self.obs_dim,
                action_dim=self.action_dim,
                horizon=self.config.horizon,
                step=self.step,
                versions=self.versions,
                success_timing=self.success_timing,
                config=self.config.to_dict(),
            ),
            indent=2,
        )


def software_versions() -> dict[str, str]:
    """Versions of rql, torch and ogbench (when installed) for the record."""
    from importlib import metadata

    import rql_cli

    versions = {"rql": rql_cli.__version__, "torch": torch.__version__}
    try:
        versions["ogbench"] = metadata.version("ogbench")
    except metadata.PackageNotFoundError:
        pass
    return versions


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_bytes(tmp, (json.dumps(payload, indent=2) + "\n").encode())
    os.replace(tmp, path)


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def weight_tensors(agent: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The two weight files' contents, keyed by file name."""
    def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}

    return {
        "velocity.safetensors": {
            **prefixed("velocity", agent.velocity),
            **prefixed("velocity_target", agent.velocity_target),
        },
        "value.safetensors": {
            **prefixed("value", agent.value),
            **prefixed("value_target", agent.value_target),
        },
    }


def train_state_tensors(agent: Any, generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Adam moments per parameter index, the step counter and RNG states."""
    tensors: dict[str, torch.Tensor] = {"step": torch.tensor(agent.step, dtype=torch.int64)}
    for index, state in agent.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    return tensors


def save_checkpoint(
    directory: Path,
    agent: Any,
    meta: CheckpointMeta,
    *,
    generators: dict[str, torch.Generator] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically: into a temporary sibling, fsync, then rename.

    A crash at any point leaves either the previous folder or the new one, whole.
    With ``generators`` the train state (optimizer, step, RNG) is written too.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for file_name, tensors in weight_tensors(agent).items():
        save_file(_cpu_contiguous(tensors), str(tmp / file_name), metadata={"format": "pt"})
    if generators is not None:
        save_file(
            _cpu_contiguous(train_state_tensors(agent, generators)),
            str(tmp / TRAIN_STATE_FILE),
            metadata={"step": str(agent.step)},
        )
    _write_bytes(tmp / "config.json", (meta.to_json() + "\n").encode())
    if metrics is not None:
        _write_bytes(tmp / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    for path in tmp.iterdir():  # safetensors writes without fsync
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _migrate(payload: dict[str, Any]) -> dict[str, Any]:
    """Bring an older config.json up to FORMAT_VERSION (version 1 is the first; nothing to do)."""
    return payload


def read_meta(directory: Path) -> tuple[CheckpointMeta, list[str]]:
    """Parse config.json; returns the meta and the config fields this rql does not know."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"Checkpoint folder {directory} does not exist.")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"Checkpoint {directory} is missing {', '.join(missing)}; a checkpoint folder needs "
            f"{', '.join(REQUIRED_FILES)}."
        )
    try:
        payload = json.loads((directory / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory / 'config.json'} is not valid JSON: {error}.") from error
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{directory / 'config.json'} has no integer format_version.")
    if version > FORMAT_VERSION:
        writer = payload.get("versions", {}).get("rql", "a newer release")
        raise CheckpointError(
            f"Checkpoint {directory} has format_version {version}, written by rql {writer}; this "
            f"rql reads up to format_version {FORMAT_VERSION}. Upgrade rql to load it."
        )
    payload = _migrate(payload)
    try:
        config, unknown = RQLConfig.from_dict(payload["config"], strict=False)
        meta = CheckpointMeta(
            config=config,
            dataset=payload["dataset"],
            env_id=payload["env_id"],
            obs_dim=int(payload["obs_dim"]),
            action_dim=int(payload["action_dim"]),
            step=int(payload["step"]),
            versions=dict(payload.get("versions", {})),
            success_timing=payload.get("success_timing"),
            format_version=FORMAT_VERSION,
        )
    except KeyError as error:
        raise CheckpointError(f"{directory / 'config.json'} lacks the field {error}.") from error
    if unknown:
        warnings.warn(
            f"Checkpoint {directory} has config fields this rql does not know and ignores: "
            f"{', '.join(unknown)}.",
            stacklevel=2,
        )
    return meta, unknown


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt. "
            "Re-download or re-save the checkpoint."
        ) from error


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def load_weights_into(agent: Any, directory: Path) -> None:
    """Load both weight files into ``agent``; shape mismatches name the tensor and both shapes."""
    directory = Path(directory)
    parts = {
        "velocity.safetensors": ("velocity", "velocity_target"),
        "value.safetensors": ("value", "value_target"),
    }
    for file_name, prefixes in parts.items():
        tensors = _load_tensors(directory / file_name)
        for prefix in prefixes:
            module: torch.nn.Module = getattr(agent, prefix)
            expected = module.state_dict()
            found = _split(tensors, prefix)
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            if missing or extra:
                raise CheckpointError(
                    f"{directory / file_name} does not match the network in config.json: "
                    f"missing {missing[:3]}, unexpected {extra[:3]}."
                )
            for key, value in found.items():
                if value.shape != expected[key].shape:
                    raise CheckpointError(
                        f"{directory / file_name}: tensor '{prefix}.{key}' has shape "
                        f"{tuple(value.shape)} but config.json describes {tuple(expected[key].shape)}."
                    )
            module.load_state_dict(found)


def load_train_state_into(
    agent: Any, directory: Path, generators: dict[str, torch.Generator]
) -> None:
    """Restore Adam moments, the step counter and RNG states saved by ``save_checkpoint``."""
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: this checkpoint was saved without its training state "
            "(published checkpoints usually are), so it cannot be resumed exactly. "
            "Use `rql finetune` to continue from its weights instead."
        )
    tensors = _load_tensors(path)
    agent.step = int(tensors["step"].item())
    optimizer_state = agent.optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer_state["state"] = state
    agent.optimizer.load_state_dict(optimizer_state)
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.{name}"])


def load_agent(directory: Path, device: torch.device | str = "cpu") -> tuple[Any, CheckpointMeta]:
    """Build an RQLAgent from a checkpoint folder and load its weights."""
    from rql_cli.core.rql import RQLAgent

    meta, _ = read_meta(directory)
    agent = RQLAgent(meta.config, meta.obs_dim, meta.action_dim, torch.device(device))
    load_weights_into(agent, directory)
    agent.step = meta.step
    return agent, meta


def task_results(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-task results of a metrics.json, whichever layout wrote it.

    ``rql eval --save`` writes ``{checkpoint, dataset, step, ..., tasks: [result, ...]}``; a checkpoint
    saved during training holds one result dict ``{success_rate, success_ci95, episodes, task, ...}``.
    """
    if not metrics:
        return []
    if isinstance(metrics.get("tasks"), list):
        return [t for t in metrics["tasks"] if isinstance(t, dict) and "success_rate" in t]
    return [metrics] if "success_rate" in metrics else []


def read_metrics(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
