"""`rql sweep`: datasets x tasks x `--set` grids x seeds as ordinary run folders, on Ray or one after another.

Ray, torch and the training modules are imported when the command runs, so `rql --help` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.live import Live
from rich.table import Table

from rql_cli.cli.common import DEFAULT_DATA_DIR, handles_errors
from rql_cli.cli.display import console, pct
from rql_cli.config import parse_seeds
from rql_cli.errors import RQLError

if TYPE_CHECKING:
    from rql_cli.sweep.execute import RunState
    from rql_cli.sweep.plan import SweepSpec


@handles_errors
def sweep(
    dataset: list[str] = typer.Option([], "--dataset", "-d", help="Dataset (repeat for several)."),
    task: str | None = typer.Option(None, "--task", help="Tasks: 1-5, 1,3 or 2.", show_default="each dataset's"),
    seeds: str = typer.Option("0", "--seeds", help="Seeds of every grid point: 0-3 or 0,5."),
    seeds_together: bool = typer.Option(False, "--seeds-together", help="Each grid point's seeds as one group (rql "
                                        "train --seeds: stacked on GPU, threaded on CPU), in POINT/seed_S."),
    set_: list[str] = typer.Option([], "--set", help="A config field, one value or a grid: --set alpha=3,10."),
    steps: int | None = typer.Option(None, "--steps", help="Gradient steps of every run."),
    eval_interval: int | None = typer.Option(None, "--eval-interval", "--eval-every", help="Evaluate every N steps."),
    eval_episodes: int | None = typer.Option(None, "--eval-episodes", help="Episodes per periodic evaluation."),
    device: str | None = typer.Option(None, "--device", help="Device of every run."),
    dataset_dir: Path | None = typer.Option(None, "--dataset-dir", help="Where the datasets are.",
                                            show_default=DEFAULT_DATA_DIR),
    file: Path | None = typer.Option(None, "--file", help="A TOML sweep file instead of the flags above."),
    out: Path | None = typer.Option(None, "--out", "-o", help="The sweep folder (sweep.json and one folder per run)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the sweep in this folder (its sweep.json)."),
    executor: str = typer.Option("auto", "--executor", help="ray, local (one run after another here), or auto "
                                 "(ray when installed)."),
    address: str | None = typer.Option(None, "--address", help="A Ray cluster to use (else RAY_ADDRESS, else a "
                                       "local Ray on this machine's cores)."),
    threads: int = typer.Option(1, "--threads-per-run", min=1, help="CPU threads (and Ray CPUs) of each run."),
    gpus: float = typer.Option(0.0, "--gpus-per-run", min=0.0, help="Fraction of a GPU per run on Ray (0.25: four "
                               "runs per GPU)."),
    scheduler: str = typer.Option("none", "--scheduler", help="asha: stop runs whose periodic evaluations trail at "
                                  "each rung (a hyperparameter search on Ray Tune); none: train every run to its end."),
    asha_metric: str = typer.Option("success_rate", "--asha-metric", help="What ASHA ranks runs by: success_rate or "
                                    "mean_return of their periodic evaluations."),
    grace_steps: int = typer.Option(0, "--grace-steps", min=0, help="ASHA's first rung in gradient steps; later "
                                    "rungs multiply it by --reduction-factor.", show_default="two --eval-interval"),
    reduction_factor: float = typer.Option(3.0, "--reduction-factor", help="ASHA keeps the best 1/factor of the runs "
                                           "at each rung."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Write sweep.json and list the runs; train nothing."),
) -> None:
    """Train every dataset x task x grid point x seed, each an ordinary run folder named by its coordinates.
    The same command again continues: finished runs are skipped, interrupted ones resumed.

    Example: rql sweep --dataset cube-single-play-v0 --task 1-5 --seeds 0-3 --set alpha=3,10 --steps 200000
    --out sweeps/cube-single; then rql report sweeps/cube-single

    A search that stops weak runs early (ASHA on Ray Tune): rql sweep --dataset cube-single-play-v0 --task 2
    --set alpha=1,3,10,30 --set expectile=0.7,0.9 --steps 100000 --scheduler asha --out sweeps/search

    On a GPU, seeds as one group per point: rql sweep ... --seeds 0-7 --seeds-together --gpus-per-run 0.3
    """
    from rql_cli.sweep.plan import load_spec_file, read_plan

    if resume is not None:
        out, (spec, runs) = resume, read_plan(resume)
    elif out is None:
        raise RQLError("Name the sweep folder with --out (or continue one with --resume SWEEP_DIR).")
    else:
        spec = load_spec_file(file) if file else _spec_of_flags(dataset, task, seeds, set_, dataset_dir)
        spec.seeds_together = spec.seeds_together or seeds_together
        fixed = dict(steps=steps, eval_interval=eval_interval, eval_episodes=eval_episodes, device=device)
        runs = _new_plan(out, spec, fixed, executor, (scheduler, asha_metric, grace_steps, reduction_factor))
    console.print(f"{len(runs)} runs in {out} (plan: {out / 'sweep.json'}).")
    if plan_only:
        console.print(runs_table([], [r.name for r in runs]))
        return
    _execute(runs, out, spec, executor=_executor_for(executor, spec), address=address, threads=threads, gpus=gpus)


def _new_plan(out: Path, spec: SweepSpec, fixed: dict[str, Any], executor: str,
              scheduler: tuple[str, str, int, float]) -> list[Any]:
    """The runs of a new sweep (``fixed``: the flags given, over the spec's own), its scheduler (--scheduler,
    --asha-metric, --grace-steps, --reduction-factor) and executor checked before ``out/sweep.json`` is written."""
    from rql_cli.sweep.plan import expand, write_plan

    spec.fixed = {**spec.fixed, **{k: v for k, v in fixed.items() if v is not None}}
    runs = expand(spec)
    spec.scheduler = _scheduler_of(*scheduler, runs, spec.seeds_together)
    _executor_for(executor, spec)  # refused before the plan is written
    write_plan(out, spec, runs)
    return runs


def _scheduler_of(name: str, metric: str, grace_steps: int, reduction_factor: float,
                  runs: list[Any], seeds_together: bool) -> dict[str, Any] | None:
    """The plan's scheduler from the flags, checked against the runs' evaluation interval (None: none)."""
    if name == "none":
        return None
    if name != "asha":
        raise RQLError(f"--scheduler takes asha or none, got '{name}'.")
    if seeds_together:
        raise RQLError("--scheduler asha stops runs one by one, and --seeds-together trains a grid point's seeds "
                       "as one: drop one of them.")
    from rql_cli.sweep.asha import AshaSettings

    interval = min(r.config().eval_interval for r in runs)
    return AshaSettings(metric, grace_steps, reduction_factor).check(interval).to_dict()


def _spec_of_flags(datasets: list[str], task: str | None, seeds: str, set_: list[str],
                   dataset_dir: Path | None) -> SweepSpec:
    from rql_cli.sweep.plan import SweepSpec, parse_grid_option, parse_tasks

    if not datasets:
        raise RQLError("Name at least one --dataset (or give a sweep file with --file).")
    grid, fixed = {}, {}
    for item in set_:
        name, values = parse_grid_option(item)
        if len(values) > 1:
            grid[name] = values
        else:
            fixed[name] = values[0]
    return SweepSpec(datasets=datasets, seeds=parse_seeds(seeds), tasks=parse_tasks(task), grid=grid, fixed=fixed,
                     dataset_dir=str(dataset_dir or DEFAULT_DATA_DIR))


def _execute(runs: list[Any], out: Path, spec: SweepSpec, *, executor: str, address: str | None, threads: int,
             gpus: float) -> None:
    import signal

    from rql_cli.sweep.execute import run_local, run_on_ray

    # Ctrl-C (SIGINT) stops the sweep even where it started ignored (a shell's background job), as it
    # stops `rql train`, whose runs install their own handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    with Live(runs_table([], [r.name for r in runs]), console=console, refresh_per_second=2) as live:
        def show(states: list[RunState]) -> None:
            live.update(runs_table(states, []))

        try:
            if spec.scheduler:
                from rql_cli.sweep.asha import AshaSettings, run_with_asha

                settings = AshaSettings(**{k: v for k, v in spec.scheduler.items() if k != "name"})
                states = run_with_asha(runs, out, spec.dataset_dir, settings=settings, threads=threads, gpus=gpus,
                                       address=address, on_progress=show)
            elif executor == "ray":
                states = run_on_ray(runs, out, spec.dataset_dir, threads=threads, gpus=gpus, address=address,
                                    on_progress=show)
            else:
                states = run_local(runs, out, spec.dataset_dir, threads, on_progress=show)
        except KeyboardInterrupt:
            console.print(f"[yellow]Interrupted.[/] Finished runs are kept, stopped ones resume from their latest "
                          f"checkpoint: continue with `rql sweep --resume {out}` (or the same command again).")
            raise typer.Exit(130) from None
        show(states)
    console.print()
    done, stopped = sum(s.state == "done" for s in states), sum(s.state == "stopped" for s in states)
    console.print(f"{done} of {len(states)} runs done" + (f", {stopped} stopped early by ASHA" if stopped else "")
                  + f" in {time.perf_counter() - started:,.0f} s ({'ray tune' if spec.scheduler else executor}). "
                  f"Tabulate them with: rql report {out}")
    if done + stopped < len(states):
        raise typer.Exit(1 if any(s.state == "failed" for s in states) else 130)


def _executor_for(executor: str, spec: SweepSpec) -> str:
    """ray or local, from --executor (auto: ray when installed, or when a scheduler needs Tune)."""
    if executor not in ("auto", "ray", "local"):
        raise RQLError(f"--executor takes ray, local or auto, got '{executor}'.")
    if executor == "auto":
        executor = "ray" if _ray_installed() or spec.scheduler else "local"
    if spec.scheduler and executor == "local":
        raise RQLError("--scheduler asha runs on Ray Tune: drop --executor local.")
    return executor


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def runs_table(states: list[RunState], planned: list[str]) -> Table:
    """One row per run: its state, step, last success and time left at its last logged speed."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("run", "state", "step", "success", "ETA"):
        table.add_column(column, justify="left" if column in ("run", "state") else "right", overflow="fold")
    for state in states:
        left = (state.total - state.step) / state.steps_per_second if state.steps_per_second else None
        eta = "" if state.state == "done" or left is None else f"{left / 60:,.0f} min"
        table.add_row(state.name, state.state + (f": {state.message}" if state.message else ""),
                      f"{state.step:,}/{state.total:,}", "-" if state.success is None else pct(state.success), eta)
    for name in planned:
        table.add_row(name, "planned", "", "", "")
    return table
