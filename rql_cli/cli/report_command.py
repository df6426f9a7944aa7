"""`rql report`: a results table (and its figure) from run folders, seed groups or sweeps.

numpy, scipy and matplotlib are imported when the command runs, so `rql --help` stays instant.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from rql_cli.cli.common import check_output_path, handles_errors
from rql_cli.cli.display import console, pct
from rql_cli.errors import RQLError

if TYPE_CHECKING:
    from rql_cli.report.summary import Report

FIGURE_NAME = "report.png"


@handles_errors
def report(
    paths: list[Path] = typer.Argument(..., help="Run folders, seed groups (rql train --seeds) or sweep folders; "
                                       "every run folder under them counts."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the whole report as JSON here."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write one row per task and group statistic here."),
    markdown_path: Path | None = typer.Option(None, "--markdown", help="Write the tables as markdown here."),
    figure: Path | None = typer.Option(
        None, "--figure", help="Where to draw the IQM curves and performance profiles.",
        show_default=f"FIRST_PATH/{FIGURE_NAME} when it is a folder",
    ),
    no_figure: bool = typer.Option(False, "--no-figure", help="Draw no figure."),
    reps: int = typer.Option(5000, "--reps", min=100, max=1_000_000, help="Bootstrap replicates."),
    seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draws (same seed, same intervals)."),
) -> None:
    """Tabulate what runs reached: per task, mean success over seeds (Student t 95% interval); per group
    (environment family and each config field that differs), IQM and mean over runs and tasks with
    stratified bootstrap 95% intervals; and the probability of improvement between groups.

    Example: rql report sweeps/cube-single --markdown results.md
    """
    from rql_cli.report.collect import collect
    from rql_cli.report.figures import plot_report
    from rql_cli.report.summary import build_report

    outputs = {"--json": json_path, "--csv": csv_path, "--markdown": markdown_path, "--figure": figure}
    for flag, path in outputs.items():
        if path is not None:
            check_output_path(path, flag, example=f"report.{flag.lstrip('-').replace('figure', 'png')}")
    runs, unevaluated = collect(paths)
    if not runs:
        raise RQLError(f"None of the {len(unevaluated)} run folder(s) under {', '.join(map(str, paths))} has been "
                       "evaluated yet (eval.csv is empty): train with --eval-episodes > 0, or wait for the first "
                       "evaluation.")
    result = build_report(runs, reps=reps, seed=seed)
    result.unevaluated = [str(p) for p in unevaluated]
    print_report(result)
    _write_outputs(result, json_path, csv_path, markdown_path)
    if figure is None and not no_figure and paths[0].is_dir():
        figure = paths[0] / FIGURE_NAME
    if figure is not None and not no_figure:
        console.print(f"Figure written to {plot_report(runs, figure)}")


def _write_outputs(result: Report, json_path: Path | None, csv_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"Report written to {json_path}")
    if csv_path:
        rows = result.csv_rows()
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        console.print(f"Table written to {csv_path}")
    if markdown_path:
        markdown_path.write_text(result.to_markdown())
        console.print(f"Markdown written to {markdown_path}")


def print_report(result: Report) -> None:
    """The task table, the group table and the improvements, with what each interval is."""
    def interval(bounds: tuple[float, float] | None) -> str:
        return f"[{pct(bounds[0])}, {pct(bounds[1])}]" if bounds else "-"

    tasks = Table(title="Per task: final success over seeds", box=box.SIMPLE_HEAD, caption=result.intervals["task"])
    for column in ("group", "task", "seeds", "step", "success", "95% CI"):
        tasks.add_column(column, justify="left" if column in ("group", "task") else "right", no_wrap="CI" in column,
                         overflow="fold")
    for row in result.tasks:
        tasks.add_row(row.group, row.env_id, str(len(row.seeds)), f"{row.step:,}", pct(row.mean), interval(row.ci95))
    console.print(tasks)
    groups = Table(title="Per group: over every run of every task", box=box.SIMPLE_HEAD,
                   caption=result.intervals["group"])
    for column in ("group", "tasks", "runs", "IQM", "IQM 95% CI", "mean", "mean 95% CI"):
        groups.add_column(column, justify="left" if column == "group" else "right", no_wrap="CI" in column)
    for g in result.groups:
        groups.add_row(g.group, str(g.tasks), str(g.runs), pct(g.iqm), interval(g.iqm_ci95), pct(g.mean),
                       interval(g.mean_ci95))
    console.print(groups)
    for i in result.improvements:
        console.print(f"P({i.x} > {i.y}) = {i.probability:.2f} [{i.ci95[0]:.2f}, {i.ci95[1]:.2f}] over {i.tasks} "
                      "task(s)")
    if result.unevaluated:
        console.print(f"[yellow]Left out, never evaluated:[/] {', '.join(result.unevaluated)}")
