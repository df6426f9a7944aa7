"""What every command shares: --debug, turning RQLError into a clean exit, options made from the config.

The --debug switch lives in the root click context of the running command (``ctx.obj``), not in a
module global, so two invocations in one process (tests) never see each other's setting.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import click
import typer

from rql_cli.cli.display import err_console

DEFAULT_DATA_DIR = "~/.ogbench/data"
CHECKPOINT_HELP = (
    "Run folder (its latest checkpoint), checkpoint folder, bundled name (`rql list`), or Hub id "
    "USER/NAME[@REVISION]."
)


def debug_enabled() -> bool:
    """Whether --debug (or RQL_DEBUG=1) is on for the command running now."""
    if os.environ.get("RQL_DEBUG") == "1":
        return True
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RQLError into a one-paragraph message and exit code 1 (a traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rql_cli.errors import RQLError

        try:
            return command(*args, **kwargs)
        except RQLError as error:
            if debug_enabled():
                raise
            err_console.print(f"[bold red]Error:[/] {error}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def config_option(name: str, *flags: str) -> Any:
    """A typer option for config field ``name`` whose help and shown default come from the config.

    The option's value is None when not given, so the task preset (or a resumed run's value)
    stands. ``flags`` default to ``--field-name``; extra flags are aliases.
    """
    from rql_cli.config import FIELD_HELP, field_default

    flags = flags or (f"--{name.replace('_', '-')}",)
    default = field_default(name)
    if isinstance(default, int) and not isinstance(default, bool):
        shown = f"{default:,}"
    else:
        shown = default if isinstance(default, str) else json.dumps(default)
    return typer.Option(None, *flags, help=f"{FIELD_HELP[name]} (config field {name})", show_default=shown)


OPTION_RANGES: dict[str, tuple[int, int]] = {
    "--episodes": (1, 1_000_000),
    "--envs": (1, 1024),
    "--utd": (1, 1000),
    "--online-steps": (0, 10**9),
    "--fps": (1, 240),
    "--task": (1, 5),
    "--max-steps": (1, 10**7),
    "--workers": (1, 1024),
    "--shard-size": (1, 1_000_000),
}
"""Closed range of every numeric option that is not a config field (those have ``config.RANGES``)."""


def ranged(flag: str, text: str) -> str:
    """Help text with the option's range appended."""
    low, high = OPTION_RANGES[flag]
    return f"{text} Range: {low:,} to {high:,}."


def check_options(values: dict[str, int | None]) -> None:
    """Refuse a numeric option outside its range (exit 1 with the range), before any work."""
    from rql_cli.errors import RQLError

    for flag, value in values.items():
        low, high = OPTION_RANGES[flag]
        if value is not None and not low <= value <= high:
            raise RQLError(f"{flag} must lie in [{low:,}, {high:,}], got {value:,}.")
