"""`rql list`: bundled agents with their measured scores, the task presets, generatable datasets."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from rql_cli.cli.common import handles_errors
from rql_cli.cli.display import console, lineage_text
from rql_cli.data.recipes import GENERATABLE
from rql_cli.io.bundled import BundledCheckpoint, bundled_checkpoints
from rql_cli.presets import PAPER_PRESET_SOURCE, PRESET_SOURCES, PRESETS


@handles_errors
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (agents, presets, datasets) instead."),
) -> None:
    """Bundled agents (env, task, success with its 95% interval, steps, size, video), the task presets
    with their source, and the datasets `rql data generate` can make.

    Any NAME in the first column works as --checkpoint NAME for eval, rollout, finetune and push.

    Example: rql list --json | jq '.bundled[].success_rate'
    """
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


def _bundled_table(bundled: list[BundledCheckpoint]) -> Table:
    """One row per agent; the env under the name, so the table fits 80 columns."""
    counts = {entry.episodes for entry in bundled}
    same_count = len(counts) == 1 and None not in counts
    title = "Bundled agents (rql eval --checkpoint NAME)"
    if same_count:
        title += f"; success over {counts.pop()} episodes"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("name / env", no_wrap=True)  # the name is what the user types: never cut
    table.add_column("task", justify="right")
    table.add_column("success [95% CI]", justify="right", no_wrap=True)
    if not same_count:
        table.add_column("episodes", justify="right")
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("video", min_width=5)
    lineage = any(entry.lineage for entry in bundled)
    if lineage:
        table.add_column("fine-tuned from")
    for entry in bundled:
        success = entry.success
        if entry.success_ci95:
            low, high = entry.success_ci95
            success = f"{success} [{100 * low:.0f}, {100 * high:.0f}]"
        env = entry.env_id.split("-singletask")[0] or entry.dataset
        name_and_env = Text.assemble(entry.name, "\n", (env, "dim"))  # Text: no markup in names
        row: list[Text | str] = [name_and_env, str(entry.task or "-"), success]
        if not same_count:
            row.append(str(entry.episodes or "-"))
        row += [f"{entry.step:,}", f"{entry.size_bytes / 2**20:.1f} MB", "yes" if entry.video else "-"]
        if lineage:
            row.append(lineage_text(entry.lineage) if entry.lineage else "-")
        table.add_row(*row)
    return table


def _presets_table(presets: dict[str, dict[str, Any]], sources: dict[str, str]) -> Group:
    """The presets with a short source column; sources other than the paper's table are numbered
    notes printed under it (a long sentence in a cell is unreadable at 80 columns)."""
    table = Table(title="Task presets (chosen from the dataset name; override with --set)")
    table.add_column("family", no_wrap=True)
    for column in ("alpha", "expectile", "rho", "h", "gamma", "sparse"):
        table.add_column(column, justify="right")
    table.add_column("source", no_wrap=True)
    notes: list[str] = []
    for family, values in presets.items():
        source = sources[family]
        if source == PAPER_PRESET_SOURCE:
            label = "paper"
        else:
            notes.append(f"[{len(notes) + 1}] {family}: {source}")
            label = f"see [{len(notes)}]"
        table.add_row(
            family, *(str(values.get(k, "")) for k in ("alpha", "expectile", "rho", "horizon", "discount")),
            "yes" if values.get("sparse_rewards") else "", label,
        )
    return Group(table, Text(f"paper = {PAPER_PRESET_SOURCE}"), *(Text(note) for note in notes))
