"""`rql list`: bundled checkpoints with their measured scores, the task presets, generatable datasets."""

from __future__ import annotations

from rql_cli.cli.common import handles_errors
from rql_cli.cli.display import console


@handles_errors
def list_command() -> None:
    """Bundled checkpoints with their measured scores, datasets we can generate, and task presets.

    Example: rql list
    """
    from rich.table import Table

    from rql_cli.cli.display import lineage_text
    from rql_cli.config import PRESET_NOTES, PRESETS
    from rql_cli.data.generate import GENERATABLE
    from rql_cli.io.bundled import bundled_checkpoints

    bundled = bundled_checkpoints()
    table = Table(title="Bundled checkpoints")
    for column in ("name", "dataset", "steps", "success rate", "episodes", "fine-tuned from"):
        table.add_column(column)
    for entry in bundled:
        origin = lineage_text(entry.lineage) if entry.lineage else "-"
        table.add_row(entry.name, entry.dataset, f"{entry.step:,}", entry.success, str(entry.episodes or "-"), origin)
    console.print(table if bundled else "No bundled checkpoints are installed.")

    presets = Table(title="Task presets (official hyperparameters.sh; chosen from the dataset name)")
    presets.add_column("family", no_wrap=True)
    for column in ("alpha", "expectile", "rho", "h", "gamma", "sparse"):
        presets.add_column(column, justify="right")
    for family, values in PRESETS.items():
        presets.add_row(
            family + ("*" if family in PRESET_NOTES else ""),
            *(str(values.get(k, "")) for k in ("alpha", "expectile", "rho", "horizon", "discount")),
            "yes" if values.get("sparse_rewards") else "",
        )
    console.print(presets)
    for family, note in PRESET_NOTES.items():
        console.print(f"* {family}: {note}")
    console.print("Datasets `rql data generate` can make: " + ", ".join(sorted(GENERATABLE)))
