"""`rql list`: bundled agents with their measured scores, the task presets, generatable datasets."""

from __future__ import annotations

import json

import typer

from rql_cli.cli.common import handles_errors
from rql_cli.cli.display import console


@handles_errors
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (agents, presets, datasets) instead."),
) -> None:
    """Bundled agents (env, task, success with its 95% interval, steps, size, video), the task presets
    with their source, and the datasets `rql data generate` can make.

    Any NAME in the first column works as --checkpoint NAME for eval, rollout, finetune and push.

    Example: rql list --json | jq '.bundled[].success_rate'
    """
    from rql_cli.config import PRESET_SOURCES, PRESETS
    from rql_cli.data.generate import GENERATABLE
    from rql_cli.io.bundled import bundled_checkpoints

    bundled = bundled_checkpoints()
    if as_json:
        payload = dict(
            bundled=[entry.to_dict() for entry in bundled],
            presets={family: dict(values, source=PRESET_SOURCES[family]) for family, values in PRESETS.items()},
            generatable=sorted(GENERATABLE),
        )
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(_bundled_table(bundled) if bundled else "No bundled checkpoints are installed.")
    console.print(_presets_table(PRESETS, PRESET_SOURCES))
    console.print("Datasets `rql data generate` can make: " + ", ".join(sorted(GENERATABLE)))


def _bundled_table(bundled):
    from rich.table import Table

    from rql_cli.cli.display import lineage_text

    table = Table(title="Bundled agents (rql eval --checkpoint NAME)")
    for column in ("name", "environment", "task", "success [95% CI]", "episodes", "steps", "size", "video",
                   "fine-tuned from"):
        table.add_column(column, justify="right" if column in ("steps", "size", "episodes") else "left")
    for entry in bundled:
        success = entry.success
        if entry.success_ci95:
            low, high = entry.success_ci95
            success = f"{success} [{100 * low:.0f}, {100 * high:.0f}]"
        table.add_row(
            entry.name, entry.env_id.split("-singletask")[0] or entry.dataset, str(entry.task or "-"), success,
            str(entry.episodes or "-"), f"{entry.step:,}", f"{entry.size_bytes / 2**20:.1f} MB",
            entry.video or "-", lineage_text(entry.lineage) if entry.lineage else "-",
        )
    return table


def _presets_table(presets, sources):
    from rich.table import Table

    table = Table(title="Task presets (chosen from the dataset name; override with --set)")
    table.add_column("family", no_wrap=True)
    for column in ("alpha", "expectile", "rho", "h", "gamma", "sparse"):
        table.add_column(column, justify="right")
    table.add_column("source")
    for family, values in presets.items():
        table.add_row(
            family, *(str(values.get(k, "")) for k in ("alpha", "expectile", "rho", "horizon", "discount")),
            "yes" if values.get("sparse_rewards") else "", sources[family],
        )
    return table
