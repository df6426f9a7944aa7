"""The command that made a checkpoint: `rql train` with its preset and ``--set`` for what differs, or
for a fine-tuned checkpoint the `rql finetune` of its source; and an old command kept exact after a
preset changed. The model card and the bundled agents' evidence show these commands.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from rql_cli.config import RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_meta import CheckpointMeta
from rql_cli.names import parse_task_name
from rql_cli.presets import make_config


def reproduce_command(meta: CheckpointMeta, run: RunConfig | None = None) -> str:
    """The command that trains this checkpoint: `rql train` with the preset plus --set for what
    differs, or for a fine-tuned checkpoint the `rql finetune` of its source (``finetune_command``).

    The agent's fields come from the checkpoint; the run's from ``run`` (its run folder's record)
    when known, else the checkpoint's step and seed, which with the agent config make the weights.
    """
    if meta.lineage:
        return finetune_command(meta, run)
    parts = ["rql", "train", "--dataset", meta.dataset]
    try:
        task = meta.task_name.resolve_task()
        if task != parse_task_name(meta.dataset).resolve_task():  # the task `--dataset` alone gives
            parts += ["--task", str(task)]
    except RQLError:
        pass  # a name this rql does not know: the dataset name alone is the best we can say
    parts += _set_options_off_preset(_trained_values(meta, run), preset_values(meta))
    return " ".join(shlex.quote(part) for part in parts)


def finetune_command(meta: CheckpointMeta, run: RunConfig | None = None) -> str:
    """The `rql finetune` command that made a fine-tuned checkpoint from its source (``meta.lineage``).

    The run's settings that differ from the defaults come as --set when the run is known; the agent
    is the source's (a fine-tune's agent overrides, if any, are not recorded apart from it).
    """
    lineage = meta.lineage or {}
    source = lineage.get("repo_id") or lineage.get("ref", "SOURCE")
    if lineage.get("repo_id") and lineage.get("commit"):
        source = f"{source}@{lineage['commit']}"
    parts = ["rql", "finetune", "--checkpoint", str(source)]
    if lineage.get("method") == "online":
        parts += ["--online-steps", str(lineage.get("online_steps", meta.step))]
        parts += ["--utd", str(lineage["utd"])] if lineage.get("utd", 1) != 1 else []
        parts += ["--balanced"] if lineage.get("balanced") else []
        parts += [] if lineage.get("offline_data", True) else ["--no-offline-data"]
    else:
        parts += ["--dataset", meta.dataset, "--steps", str(lineage.get("steps") or meta.step)]
    if run is not None:
        defaults = RunConfig().flat()
        skip = frozenset({"steps", "device"})
        parts += _set_options_off_preset({k: v for k, v in run.flat().items() if k not in meta.config.to_dict()},
                                         defaults, skip)
    return " ".join(shlex.quote(part) for part in parts)


def _trained_values(meta: CheckpointMeta, run: RunConfig | None) -> dict[str, Any]:
    """Every field that made these weights, by name: the agent's, then the run's (as far as known)."""
    if run is not None:
        return {**run.flat(), **meta.config.to_dict()}
    known = {"steps": meta.step, **({"seed": meta.seed} if meta.seed is not None else {})}
    return {**meta.config.to_dict(), **known}


def _set_options_off_preset(
    values: dict[str, Any], preset: dict[str, Any], skip: frozenset[str] = frozenset()
) -> list[str]:
    """``--set NAME=VALUE`` tokens for each field of ``values`` (but those in ``skip``) that is not ``preset``'s."""
    parts: list[str] = []
    for name, value in values.items():
        if name != "device" and name not in skip and preset.get(name) != value:  # the device is the machine's
            parts += ["--set", f"{name}={json.dumps(value, separators=(',', ':'))}"]
    return parts


def _set_fields(command: str) -> set[str]:
    """Names of the config fields a `rql train` command sets with --set NAME=VALUE."""
    tokens = shlex.split(command)
    return {tokens[i + 1].split("=", 1)[0] for i, token in enumerate(tokens[:-1]) if token == "--set"}


def restate_preset_values(command: str, sibling_command: str, meta: CheckpointMeta) -> str:
    """Keep an old `rql train` command exact after a preset changed, given a sibling run's command of
    the same day and that sibling's config (``meta``).

    Both commands left to the preset every field they do not --set, so a field neither sets held the
    then preset's value, which is the sibling's value in ``meta``. Where today's preset differs from it,
    the field is added to ``command`` as --set NAME=VALUE. (A near-BC control's command, say, beside
    its agent's: the bundle keeps the agent's config, not the control's.)"""
    preset = preset_values(meta)
    if not preset:  # a name this rql does not know: no preset to have changed
        return command
    stated = frozenset(_set_fields(command) | _set_fields(sibling_command))
    agent = meta.config.to_dict()  # the run fields of an old command are its own: they stay as written
    return " ".join([command, *(shlex.quote(part) for part in _set_options_off_preset(agent, preset, stated))])


def preset_values(meta: CheckpointMeta) -> dict[str, Any]:
    """Every field's value under today's preset for the checkpoint's dataset ({} for a name we do not know)."""
    try:
        return make_config(meta.dataset).flat()
    except RQLError:
        return {}
