"""`rql eval`: success rate and return of a checkpoint's EMA policy, with 95% intervals.

The evaluator and the device (torch) are imported when the command runs, so `rql --help` stays instant.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from rql_cli.cli.common import CHECKPOINT_HELP, check_options, check_output_path, handles_errors, ranged, seed_option
from rql_cli.cli.display import UNKNOWN_INTERVAL, console, eval_table, make_progress, pct
from rql_cli.errors import RQLError
from rql_cli.io.group_record import is_group_dir
from rql_cli.io.metrics import METRICS_FILE, write_metrics
from rql_cli.io.resolve import load_checkpoint, reference_source
from rql_cli.names import TASKS

if TYPE_CHECKING:
    from rql_cli.evaluation import GroupEvaluation


def parse_tasks(text: str | None) -> list[int | None]:
    """``--task``: None -> [None] (the checkpoint's task); 'all' -> every task; 'N' -> [N]."""
    if text is None:
        return [None]
    if text == "all":
        return list(TASKS)
    if text.isdigit() and int(text) in TASKS:
        return [int(text)]
    raise RQLError(f"--task expects a number {TASKS[0]}-{TASKS[-1]} or 'all', got '{text}'.")


@handles_errors
def eval_command(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help=f"{CHECKPOINT_HELP} Or an exported FILE.onnx/.pt2."),
    episodes: int = typer.Option(50, "--episodes", "-n", help=ranged("--episodes", "Episodes per task.")),
    task: str | None = typer.Option(
        None, "--task", help="Task 1-5, or 'all' for a per-task table.", show_default="the checkpoint's task"
    ),
    seed: int = seed_option("Episode i starts from env seed SEED+i; flow noise is seeded too."),
    envs: int | None = typer.Option(
        None, "--envs", help=ranged("--envs", "Parallel environments."),
        show_default="one per core from 32 episodes on, else 1",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    save: bool = typer.Option(False, "--save", help="Write the report into the checkpoint's metrics.json."),
    best: bool = typer.Option(False, "--best", help="For a run folder: its best-evaluated checkpoint, not the latest."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result table."),
) -> None:
    """Measure success rate and return of a checkpoint's EMA policy, with 95% intervals.

    Example: rql eval --checkpoint runs/demo --episodes 50 --task all --json results.json
    """
    from rql_cli.export.evaluate import evaluate_exported, exported_policy_file

    check_options({"--episodes": episodes, "--envs": envs})
    tasks = parse_tasks(task)
    if json_path is not None:
        check_output_path(json_path, "--json", example="report.json")
    if is_group_dir(Path(checkpoint)):
        return _eval_group(Path(checkpoint), device, save=save, best=best, json_path=json_path,
                           quiet=quiet, tasks=tasks, episodes=episodes, seed=seed, num_envs=envs)
    exported = exported_policy_file(checkpoint, save=save, best=best, json_path=json_path)  # None: not an export
    if save and exported is None and reference_source(checkpoint) == "hub":
        raise RQLError(
            f"--save writes {METRICS_FILE} into the checkpoint folder, and a Hub checkpoint lives "
            f"in the shared download cache. Pull a copy first: `rql pull {checkpoint} --dir DIR`, "
            "then `rql eval --checkpoint DIR --save`."
        )
    from rql_cli.device import resolve_device  # torch only now: every refusal above is instant
    from rql_cli.evaluation import evaluate_checkpoint

    if exported is None:
        loaded = load_checkpoint(checkpoint, resolve_device(device), best=best)
    evaluate = (functools.partial(evaluate_checkpoint, loaded) if exported is None
                else functools.partial(evaluate_exported, exported, device=resolve_device(device)))
    with make_progress(quiet) as progress:
        bar = progress.add_task("eval", total=episodes, rate="", info="")
        report = evaluate(
            tasks=tasks, episodes=episodes, seed=seed, num_envs=envs,
            on_task_start=lambda number: progress.update(bar, completed=0, description=f"eval task {number}"),
            on_episode=lambda shown: progress.update(
                bar, completed=shown.done, info=f"success {pct(shown.success_rate)}"
            ),
        )
    console.print(eval_table(report, lineage=None if exported else loaded.meta.lineage))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        console.print(f"Report written to {json_path}")
    if save:
        console.print(f"Saved into {write_metrics(loaded.folder, report)}")


def _eval_group(folder: Path, device: str, *, save: bool, best: bool, json_path: Path | None, quiet: bool,
                **options: Any) -> None:
    """``rql eval`` of a seed group: every seed at once, then a table of seeds and their mean."""
    from rql_cli.device import resolve_device
    from rql_cli.evaluation import evaluate_group
    from rql_cli.io.group_record import read_group_record

    if save:
        raise RQLError("--save writes one checkpoint's metrics.json; evaluate a seed's folder (OUT/seed_S) to save "
                       "its result.")
    seeds = len(read_group_record(folder).seeds)
    with make_progress(quiet) as progress:
        bar = progress.add_task("eval", total=options["episodes"] * seeds, rate="", info="")
        evaluation = evaluate_group(
            folder, resolve_device(device), best=best,
            on_task_start=lambda number: progress.update(bar, completed=0, description=f"eval task {number}"),
            on_episode=lambda shown: progress.update(bar, completed=shown.done,
                                                     info=f"success {pct(shown.success_rate)}"),
            **options,
        )
    console.print(group_eval_table(evaluation))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        console.print(f"Report written to {json_path}")


def group_eval_table(evaluation: GroupEvaluation) -> Table:
    """One row per seed and task of a group's evaluation, then the mean over seeds with its interval."""
    table = Table(title=f"{evaluation.folder.name}: {len(evaluation.reports)} seeds", box=box.SIMPLE_HEAD,
                  caption="seed rows: Wilson 95% interval over episodes; mean: Student t 95% interval over seeds")
    for column in ("seed", "task", "step", "success", "95% CI", "mean return", "episodes"):
        table.add_column(column, justify="right", no_wrap="CI" in column)
    for seed, report in evaluation.reports.items():
        note = " (stopped)" if seed in evaluation.stopped else ""
        for result in report.tasks:
            low, high = result.success_ci95 or UNKNOWN_INTERVAL
            table.add_row(f"{seed}{note}", str(result.task), f"{report.step:,}", pct(result.success_rate),
                          f"[{pct(low)}, {pct(high)}]", f"{result.mean_return:.1f}", str(result.episodes))
    for row in evaluation.across_seeds():
        low, high = row["ci95"] or UNKNOWN_INTERVAL
        table.add_row(f"mean of {row['seeds']}", str(row["task"]), "", pct(row["mean_success_rate"]),
                      f"[{pct(low)}, {pct(high)}]" if row["ci95"] else "-", "", "", style="bold")
    return table
