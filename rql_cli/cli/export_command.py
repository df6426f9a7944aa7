"""`rql export`: a checkpoint's policy as one ONNX file or torch.export archive, validated, with FILE.json.

Registered by the app; torch and the exporters are imported when it runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rql_cli.cli.common import CHECKPOINT_HELP, check_output_path, handles_errors
from rql_cli.cli.display import console
from rql_cli.export.policy import FORMATS, TOLERANCE

if TYPE_CHECKING:
    from rql_cli.export.writer import ExportReport


@handles_errors
def export_command(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    out: str = typer.Option(
        ..., "--out", "-o", help="The file to write, ending in .onnx or .pt2; FILE.json is written beside it."
    ),
    export_format: str | None = typer.Option(
        None, "--format", "-f", help=f"{' or '.join(FORMATS)}.", show_default="the one --out's suffix names"
    ),
    tolerance: float = typer.Option(
        TOLERANCE, "--tolerance",
        help="Largest difference from the checkpoint's own actions (in [-1, 1]) that validation accepts; "
             "above it the file is not kept.",
    ),
    best: bool = typer.Option(False, "--best", help="For a run folder: its best-evaluated checkpoint, not the latest."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the file written."),
) -> None:
    """Export a checkpoint's policy (the EMA velocity field with its Euler steps unrolled) as one ONNX
    file or torch.export archive that runs without rql: inputs observation (batch, obs_dim) and noise
    (batch, h*A) ~ N(0, I), output the action chunk (batch, h, A) in [-1, 1].

    The file is checked against the checkpoint's own actions on the same observations and noise before
    it is kept; FILE.json beside it records the dims, observation layout, action bounds, source and the
    difference measured. `rql eval --checkpoint FILE` evaluates it in its env. ONNX needs
    onnx, onnxscript and onnxruntime (rql-cli's extra 'export'); docs/export.md shows how to run the file
    from plain numpy.

    Example: rql export --checkpoint cube-single-task1-rql-cpu --out policy.onnx && rql eval --checkpoint policy.onnx
    """
    from rql_cli.errors import RQLError
    from rql_cli.export.policy import export_format_for, require_export_packages
    from rql_cli.export.writer import export_checkpoint
    from rql_cli.io.resolve import load_checkpoint

    out_path = Path(out).expanduser()
    chosen = export_format_for(out_path, export_format)
    if not 0 <= tolerance < 1:
        raise RQLError(f"--tolerance must lie in [0, 1), got {tolerance:g}.")
    check_output_path(out_path, "--out", example=f"policy{FORMATS[chosen]}")
    require_export_packages(chosen)
    loaded = load_checkpoint(checkpoint, "cpu", best=best)
    working = console.status(f"Exporting {checkpoint} to {chosen}, then validating it")
    with working if not quiet else contextlib.nullcontext():
        report = export_checkpoint(loaded, chosen, out_path, tolerance=tolerance)
    if quiet:
        console.print(str(report.path), highlight=False, markup=False)
    else:
        _print_report(report, checkpoint, loaded.meta.step)


def _print_report(report: ExportReport, checkpoint: str, step: int) -> None:
    """What was written, the file's interface in two lines, and the validation figure."""
    from rich.markup import escape

    info = report.interface
    console.print(
        f"Exported {checkpoint} (step {step:,}) to [bold]{escape(str(report.path))}[/] "
        f"({report.size_bytes / 1e6:.1f} MB, {report.export_format}, {report.seconds:.1f} s)", highlight=False,
    )
    console.print(
        f"  inputs   observation (batch, {info['obs_dim']}) float32; noise "
        f"(batch, {info['horizon'] * info['action_dim']}) float32 ~ N(0, 1), fresh each call", highlight=False,
    )
    console.print(
        f"  output   action_chunk (batch, {info['horizon']}, {info['action_dim']}) float32 in [-1, 1], after "
        f"{info['flow_steps']} Euler steps", highlight=False,
    )
    console.print(
        f"  checked  max |exported - checkpoint| = {report.max_abs_diff:.2g} at batches "
        f"{' and '.join(map(str, info['validation']['batches']))} (tolerance {report.tolerance:g})", highlight=False,
    )
    if info.get("env_unavailable"):
        console.print(f"  [yellow]env not built, layout unknown:[/] {escape(info['env_unavailable'])}", highlight=False)
    console.print(f"  layout   {report.sidecar}", highlight=False, markup=False)
    console.print(f"Evaluate it: rql eval --checkpoint {report.path}", highlight=False, markup=False)

