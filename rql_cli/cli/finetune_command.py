"""`rql finetune`: registered so `rql --help` lists it; the fine-tuning loop is the next release."""

from __future__ import annotations

import typer

from rql_cli.cli.display import err_console


def finetune(ctx: typer.Context) -> None:
    """Offline-to-online fine-tuning from a checkpoint (not available yet)."""
    err_console.print(
        "[bold yellow]`rql finetune` is not available in this release yet.[/] "
        "Track it in the project's issues; every other command works today."
    )
    raise typer.Exit(1)
