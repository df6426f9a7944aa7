"""`rql doctor`: the checks of ``rql_cli.doctor``, one line each (and its fix when it fails), or JSON."""

from __future__ import annotations

import json

import typer
from rich.text import Text

from rql_cli.cli.common import handles_errors
from rql_cli.cli.display import console
from rql_cli.cli.version_option import version_lines


@handles_errors
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (versions, checks) for a bug report."),
) -> None:
    """Check what this machine gives rql: GPU, headless rendering, ffmpeg, threads, the Hub (endpoint,
    token presence, cache, offline mode), data folders, free disk and memory.

    Each check prints one verdict and, when it fails, the fix. Exits 1 when a check that the default
    commands (data generate, train, eval) need fails. The Hub token is never printed.

    Example: rql doctor --json > doctor.json
    """
    from rql_cli.doctor import default_commands_fail, run_checks  # torch, huggingface_hub: not for --help

    checks = run_checks()
    versions = version_lines(verbose=True)
    if as_json:
        payload = dict(versions=versions, checks=[check.to_dict() for check in checks])
        typer.echo(json.dumps(payload, indent=2))
    else:
        console.print(Text("; ".join(versions), style="dim"))
        for check in checks:
            mark = Text("ok  ", style="green") if check.ok else Text("FAIL", style="bold red")
            console.print(Text.assemble(mark, f" {check.name}: {check.verdict}"))
            if not check.ok:
                console.print(Text(f"      fix: {check.fix}", style="yellow"))
    if default_commands_fail(checks):
        raise typer.Exit(1)
