"""An exported file read back: its ``FILE.json`` checked against it, and the file evaluated in its
checkpoint's env on the same episodes and noise as the checkpoint (``rql eval --checkpoint FILE``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.errors import RQLError
from rql_cli.export.policy import FORMATS, ExportedFn, act_noise, open_exported
from rql_cli.export.writer import SIDECAR_FORMAT, sha256_of, sidecar_path

if TYPE_CHECKING:
    import numpy as np
    import torch

    from rql_cli.envs.chunks import PolicyFn
    from rql_cli.io.checkpoint_meta import CheckpointMeta
    from rql_cli.io.metrics import EvaluationReport
    from rql_cli.results import EpisodeCallback


def exported_chunk_policy(run: ExportedFn, chunk_dim: int, generator: torch.Generator) -> PolicyFn:
    """An exported file as the evaluators' numpy policy, drawing its noise from ``generator`` as
    ``envs.policy.chunk_policy`` does: the same generator seed gives the checkpoint's noise."""
    import numpy as np

    def policy(obs: np.ndarray) -> np.ndarray:
        observation = np.asarray(obs, dtype=np.float32)
        noise = act_noise(observation.shape[0], chunk_dim, generator).cpu().numpy()
        return run(observation, noise)

    return policy



def exported_policy_file(
    ref: str, *, save: bool = False, best: bool = False, json_path: Path | None = None
) -> Path | None:
    """``ref`` as an exported file's path when it ends in .onnx or .pt2 (existing or not), else None.

    Refuses (RQLError) what ``rql eval`` cannot do with such a file: ``save`` and ``best`` need a
    checkpoint, and a ``json_path`` naming its FILE.json would overwrite what the export wrote.
    """
    path = Path(ref).expanduser()
    if path.suffix not in FORMATS.values():
        return None
    if save or best:
        raise RQLError(f"{path} is an exported policy, not a checkpoint: --save and --best need a checkpoint.")
    if json_path is not None and Path(json_path).absolute() == sidecar_path(path).absolute():
        raise RQLError(f"--json {json_path} would overwrite what rql export wrote beside {path.name}; rename it.")
    return path


def read_sidecar(path: Path) -> dict[str, Any]:
    """An exported file's FILE.json, checked against the file (RQLError naming what is wrong)."""
    if not path.is_file():
        raise RQLError(
            f"No exported policy {path}: no such file. `rql export --checkpoint REF --out {path.name}` makes one."
        )
    side = sidecar_path(path)
    try:
        info = json.loads(side.read_text())
    except FileNotFoundError:
        raise RQLError(
            f"{path} has no {side.name} beside it; it says which env and dims the file is for. Export it again "
            "with `rql export` (which writes both), or put the two files side by side."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RQLError(f"{side} is not readable JSON ({error}). Export the policy again with `rql export`.") from None
    if not isinstance(info, dict) or not isinstance(info.get("format_version"), int):
        raise RQLError(f"{side} is not an rql export description (no format_version).")
    if info["format_version"] > SIDECAR_FORMAT:
        raise RQLError(
            f"{side} has format_version {info['format_version']}; this rql reads up to {SIDECAR_FORMAT}. Upgrade rql."
        )
    if info.get("sha256") != sha256_of(path):
        raise RQLError(
            f"{path} is not the file {side.name} describes (its sha256 differs): it was changed or replaced after "
            "export. Export it again with `rql export`."
        )
    return info


def sidecar_meta(info: dict[str, Any], side: Path) -> CheckpointMeta:
    """The source checkpoint's config.json as recorded in an exported file's FILE.json."""
    from rql_cli.config import RQLConfig
    from rql_cli.io.checkpoint_meta import CheckpointMeta

    try:
        recorded = info["source"]["checkpoint"]
        config, _ = RQLConfig.from_dict(recorded["config"], strict=False)
        return CheckpointMeta(
            config=config, dataset=str(recorded["dataset"]), env_id=str(recorded["env_id"]),
            obs_dim=int(recorded["obs_dim"]), action_dim=int(recorded["action_dim"]), step=int(recorded["step"]),
            versions=dict(recorded.get("versions") or {}), success_timing=recorded.get("success_timing"),
            lineage=recorded.get("lineage"), env_spec=recorded.get("env_spec"), seed=recorded.get("seed"),
        )
    except (KeyError, TypeError, ValueError, RQLError) as error:
        raise RQLError(
            f"{side} does not record its source checkpoint's config ({error}). Export the policy again."
        ) from None


def evaluate_exported(
    path: Path,
    *,
    tasks: list[int | None],
    episodes: int = 50,
    seed: int = 0,
    num_envs: int | None = None,
    device: torch.device | None = None,
    on_task_start: Callable[[int], None] | None = None,
    on_episode: EpisodeCallback | None = None,
) -> EvaluationReport:
    """``evaluation.evaluate_checkpoint`` for an exported file: the same episodes and, drawn from a
    generator on ``device`` (default CPU) seeded as there, the same flow noise as its checkpoint
    evaluated with that device. The file runs in onnxruntime (CPU) or ``torch.export.load``.
    """
    import torch

    from rql_cli.device import make_generator
    from rql_cli.envs.evaluate import evaluate
    from rql_cli.io.checkpoint_meta import check_checkpoint_dims
    from rql_cli.io.metrics import EvaluationReport

    info = read_sidecar(path)
    meta = sidecar_meta(info, sidecar_path(path))
    export_format = str(info.get("format"))
    run = open_exported(path, export_format)
    noise_device = device or torch.device("cpu")
    chunk_dim = meta.config.horizon * meta.action_dim
    runtime = "onnxruntime CPU" if export_format == "onnx" else "torch.export CPU"
    report = EvaluationReport(checkpoint=str(path), dataset=meta.dataset, step=meta.step, device=runtime)
    for index, task in enumerate(tasks):
        task_number = meta.task_name.resolve_task(task)
        if on_task_start:
            on_task_start(task_number)
        started = time.perf_counter()
        result = evaluate(
            exported_chunk_policy(run, chunk_dim, make_generator(noise_device, seed * 1000 + index)),
            meta.task_name, task, episodes=episodes, num_envs=num_envs, seed=seed, on_episode=on_episode,
            check_fit=lambda obs_dim, action_dim, env: check_checkpoint_dims(
                str(path), meta, obs_dim, action_dim, "the environment", env),
        )
        result.wall_seconds = time.perf_counter() - started
        report.tasks.append(result)
    return report
