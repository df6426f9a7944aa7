"""What every command shares: the --debug switch and turning RQLError into a clean exit."""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer

from rql_cli.cli.display import err_console

state = {"debug": False}


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RQLError into a one-paragraph message and exit code 1 (a traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rql_cli.errors import RQLError

        try:
            return command(*args, **kwargs)
        except RQLError as error:
            if state["debug"]:
                raise
            err_console.print(f"[bold red]Error:[/] {error}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper
