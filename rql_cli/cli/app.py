"""The `rql` command line: one Typer app that registers each command module's commands.

Every command parses arguments, calls one function of the layers below and prints. Heavy modules
(torch, mujoco, ogbench) are imported inside commands so `rql --help` is instant.
"""

from __future__ import annotations

import gc
import inspect
import os
import sys
import warnings

import typer

from rql_cli.cli.data_commands import data_app
from rql_cli.cli.demo_command import demo
from rql_cli.cli.display import err_console
from rql_cli.cli.doctor_command import doctor
from rql_cli.cli.eval_command import eval_command
from rql_cli.cli.export_command import export_command
from rql_cli.cli.finetune_command import finetune
from rql_cli.cli.hub_commands import pull, push
from rql_cli.cli.list_command import list_command
from rql_cli.cli.report_command import report
from rql_cli.cli.rollout_command import rollout
from rql_cli.cli.sweep_command import sweep
from rql_cli.cli.train_command import config_fields_epilog, train
from rql_cli.cli.version_option import version_lines

app = typer.Typer(
    name="rql",
    help=(
        "Train, evaluate, fine-tune, render and share Reversal Q-Learning (RQL) agents: flow-matching "
        "policies trained by offline RL (Oberai, Park and Levine, 2026).\n\n"
        "Example: rql data generate cube-single-play-v0 --episodes 100 --out data && "
        "rql train --dataset cube-single-play-v0 --dataset-dir data --steps 20000 --out runs/demo && "
        "rql eval --checkpoint runs/demo"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-paragraph error messages."
    ),
    version: bool = typer.Option(False, "--version", "-V", help="Print rql's version and exit."),
    verbose: bool = typer.Option(
        False, "--verbose", help="With --version: also Python, torch (and its CUDA build) and the libraries "
        "that shape results, for a bug report."
    ),
) -> None:
    """Keep --debug in this invocation's root context (``rql_cli.cli.common.debug_enabled`` reads it)."""
    ctx.obj = {"debug": debug}
    if version:
        for line in version_lines(verbose):
            typer.echo(line)
        raise typer.Exit()
    if verbose:
        raise typer.BadParameter("it only adds to --version: `rql --version --verbose`.", param_hint="--verbose")
    if ctx.invoked_subcommand is None:  # `rql --debug` alone, say: what a bare `rql` shows
        typer.echo(ctx.get_help())


app.command(epilog=config_fields_epilog())(train)
app.command("eval")(eval_command)
app.command()(finetune)
app.command()(rollout)
app.command()(push)
app.command()(pull)
app.add_typer(data_app, name="data")
app.command("list")(list_command)
app.command()(demo)
app.command("export")(export_command)
app.command()(doctor)
app.command()(sweep)
app.command()(report)


def _prose_unwrapped(text: str) -> str:
    """A docstring for the help screen: lines of a prose paragraph joined (Typer keeps each source line
    break, so a paragraph wrapped at 100 columns broke again at 80); paragraphs with indented lines
    (example blocks) are left as written."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        part if any(line[:1].isspace() for line in part.splitlines()[1:]) else " ".join(part.split("\n"))
        for part in paragraphs
    )


for _info in [*app.registered_commands, *data_app.registered_commands]:
    if _info.help is None and _info.callback is not None and _info.callback.__doc__:
        _info.help = _prose_unwrapped(_info.callback.__doc__)


def _quiet_library_warnings() -> None:
    """Silence import-time chatter that says nothing to our users, and print rql's own warnings as one
    clean line each (``Warning: ...``) instead of Python's file:line format (both as-is with --debug)."""
    if "--debug" in sys.argv or os.environ.get("RQL_DEBUG") == "1":
        return
    warnings.filterwarnings("ignore", module="glfw")  # no display: glfw is never used headless
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # ogbench spaces
    # Inductor's hint on CUDA: fp32 matmuls are deliberate (the reference tests check fp32); README's
    # GPU section says how to opt into TF32 and what it gave.
    warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication")
    python_format = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if "rql_cli" in str(filename) or str(message).startswith("Checkpoint "):
            err_console.print(f"[yellow]Warning:[/] {message}", highlight=False)
        else:
            python_format(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main() -> None:
    """The console script: run the app; Ctrl-C outside a command's own handling exits with 130."""
    _quiet_library_warnings()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    finally:
        # The command is over and its files are written and closed. The interpreter's last garbage
        # collections would walk torch's whole heap once more (about 0.7 s of CPU after importing it);
        # frozen objects are skipped, and the process's memory goes back to the system either way.
        gc.freeze()
