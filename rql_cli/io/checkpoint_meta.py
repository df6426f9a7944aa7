"""A checkpoint's config.json: its schema (``CheckpointMeta``), its reader (``read_meta``) with the
migration of older formats, and the dims check every use of a checkpoint makes. Plain JSON work, no
torch: listing, resolving and describing checkpoints (``rql list``, model cards, refusals) need none;
the tensors and the writer live in ``checkpoint.py``.

Formats of config.json (``FORMAT_VERSION`` is the one written):

    format 1   training wrote metrics.json as one result dict (``metrics.read_metrics`` migrates it)
    format 2   metrics.json always holds ``{..., tasks: [...]}``; config.json fields unchanged
    format 3   config.json's ``config`` holds the agent config alone (``RQLConfig``); how the run used
               the machine (steps, device, threads, ...) stays in the run's train_config.json. The
               run's ``seed`` moves to the top level. Older formats' run fields are read and dropped.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.config import RQLConfig
from rql_cli.errors import CheckpointError, RQLError
from rql_cli.io.checkpoint_files import CONFIG_FILE, REQUIRED_FILES
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
