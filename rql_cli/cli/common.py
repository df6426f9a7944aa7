"""What every command shares: --debug, turning RQLError into a clean exit, options made from the config,
--seed, and the check that an output path can be written.

The --debug switch lives in the root click context of the running command (``ctx.obj``), not in a
module global, so two invocations in one process (tests) never see each other's setting.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.markup import escape

from rql_cli.cli.display import err_console
from rql_cli.config import FIELD_HELP, RANGES, field_default, parse_set_option
from rql_cli.errors import RQLError

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
        try:
            return command(*args, **kwargs)
        except RQLError as error:
            exit_with(error)

    return wrapper


def exit_with(error: RQLError) -> NoReturn:
    """Print ``error`` as one paragraph and exit with code 1; with --debug, raise it for its traceback."""
    if debug_enabled():
        raise error
    # the message is text, not markup: "USER/NAME[@REVISION]" must print as written
    err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False)
    raise typer.Exit(1) from None


def overrides_of(set_: list[str], flags: dict[str, Any]) -> dict[str, Any]:
    """Config overrides from ``--set KEY=VALUE`` items, then the config flags given (None: not given)."""
    overrides = dict(parse_set_option(item) for item in set_)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def config_option(name: str, *flags: str) -> Any:
    """A typer option for config field ``name`` whose help and shown default come from the config.

    The option's value is None when not given, so the task preset (or a resumed run's value)
    stands. ``flags`` default to ``--field-name``; extra flags are aliases.
    """
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
    for flag, value in values.items():
        _check_range(flag, value, *OPTION_RANGES[flag])


def _check_range(flag: str, value: int | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise RQLError(f"{flag} must lie in [{low:,}, {high:,}], got {value:,}.")


def seed_option(text: str) -> Any:
    """The ``--seed`` option (default 0) of a command that does not put it into a config.

    It is held to the config's seed range (``config.RANGES['seed']``, shown in the help) while the
    arguments are parsed, so an out-of-range seed is refused with exit code 1 before any work;
    commands that pass ``--seed`` into a config get the same check from ``RunConfig.validate``.
    """
    low, high = RANGES["seed"]

    def check(value: int) -> int:
        try:
            _check_range("--seed", value, low, high)
        except RQLError as error:
            exit_with(error)
        return value

    return typer.Option(0, "--seed", help=f"{text} Range: {low:,} to {high:,}.", callback=check)


def check_output_path(path: Path, flag: str, *, folder: bool = False, example: str = "out") -> None:
    """Refuse, before any work, an output file (or, with ``folder``, an output folder) that cannot be written.

    A file output may not be an existing folder, nor a folder output an existing file. Writability is
    tested with a temporary file in the output's folder, or in its nearest existing ancestor when the
    writer will make the missing folders; it is never created here, so a refused command leaves
    nothing behind. ``example`` names a file in a folder given where a file was wanted.
    """
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise RQLError(f"{flag} {path} is a file; it needs a folder. Choose another {flag}.")
    if not folder and path.is_dir():
        raise RQLError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}.")
    home = path.absolute() if folder else path.absolute().parent
    ancestor = next(p for p in (home, *home.parents) if p.exists())
    if not ancestor.is_dir():
        raise RQLError(f"{flag} {path} cannot be written: {ancestor} is a file, not a folder. Choose another {flag}.")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise RQLError(
            f"{flag} {path} cannot be written: a test file in {ancestor} failed ({error.strerror or error}). "
            f"Choose another {flag}."
        ) from None
    if path.is_file() and not os.access(path, os.W_OK):
        raise RQLError(f"{flag} {path} exists and is read-only. Choose another {flag}.")

