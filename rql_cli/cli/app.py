"""The `rql` command line: parses arguments, calls one function of the layers below, prints.

Heavy modules (torch, mujoco, ogbench) are imported inside commands so `rql --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from rql_cli.cli.common import handles_errors, state
from rql_cli.cli.display import console, err_console
from rql_cli.cli.hub_commands import pull, push
from rql_cli.cli.rollout_command import rollout

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
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(
    help="Make and inspect OGBench datasets. Example: rql data generate cube-single-play-v0 --out data",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

DEFAULT_DATA_DIR = "~/.ogbench/data"


@app.callback()
def main_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-paragraph error messages."
    ),
) -> None:
    state["debug"] = debug or os.environ.get("RQL_DEBUG") == "1"


# ------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------


def _config_fields_epilog() -> str:
    """Every config field, its default and its docstring: the one source of --set's help."""
    from dataclasses import fields

    from rql_cli.config import FIELD_HELP, RQLConfig

    defaults = RQLConfig()
    lines = [f"[bold]{f.name}[/] = {json.dumps(getattr(defaults, f.name))}: {FIELD_HELP.get(f.name, '')}" for f in fields(RQLConfig)]
    return "Config fields for --set (defaults before the task preset):\n\n" + "\n\n".join(lines)


@app.command(epilog=_config_fields_epilog())
@handles_errors
def train(
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="OGBench dataset or singletask name, e.g. cube-single-play-v0."
    ),
    dataset_dir: Optional[Path] = typer.Option(
        None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz.", show_default=DEFAULT_DATA_DIR
    ),
    dataset_path: Optional[Path] = typer.Option(
        None, "--dataset-path", help="The training .npz itself (its -val.npz must sit beside it)."
    ),
    task: Optional[int] = typer.Option(
        None, "--task", help="Singletask reward task 1-5.", show_default="the name's, else the env's default"
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Hyperparameter preset of another task family (see `rql list`)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field, value as JSON: --set alpha=3 --set value_hidden_dims=[256,256]."
    ),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total gradient steps.", show_default="1,000,000"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate and checkpoint every N steps."),
    eval_episodes: Optional[int] = typer.Option(None, "--eval-episodes", help="Episodes per evaluation (0: none)."),
    eval_envs: Optional[int] = typer.Option(None, "--eval-envs", help="Parallel environments for evaluation."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of init, sampling, noise and evaluation."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N.", show_default="auto"),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run folder.", show_default="runs/DATASET-seedS-TIMESTAMP"
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the run in this folder from its latest checkpoint."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
) -> None:
    """Train an RQL agent offline, with the paper's preset for the dataset's task.

    Example: rql train --dataset cube-double-play-v0 --dataset-dir data --steps 100000 --device cuda
    """
    from rql_cli.config import RQLConfig, make_config, parse_set_option
    from rql_cli.errors import RQLError

    overrides = dict(parse_set_option(item) for item in set_)
    flags = dict(
        steps=steps, eval_interval=eval_every, eval_episodes=eval_episodes, eval_envs=eval_envs,
        seed=seed, device=device,
    )
    overrides.update({k: v for k, v in flags.items() if v is not None})

    if resume is not None:
        from rql_cli.io.run_files import read_run_record
        from rql_cli.train import DataSpec

        if dataset or dataset_dir or dataset_path or preset:
            raise RQLError("--resume continues a run as it was set up; drop --dataset, --dataset-dir, --dataset-path and --preset.")
        record = read_run_record(resume)
        config, _ = RQLConfig.from_dict(record["config"], strict=False)
        config = config.replace(**overrides)
        spec = DataSpec(name=record["dataset"], **record["data"])
        run_dir = resume
    else:
        from rql_cli.names import parse_task_name
        from rql_cli.io.run_files import is_run_dir
        from rql_cli.train import DataSpec

        if not dataset:
            raise RQLError("Name a dataset with --dataset (e.g. cube-single-play-v0), or continue a run with --resume RUN_DIR.")
        parse_task_name(dataset)  # unknown names fail here, with suggestions
        config = make_config(dataset, preset, overrides)
        run_dir = out or Path("runs") / f"{dataset}-seed{config.seed}-{datetime.now():%Y%m%d-%H%M%S}"
        if is_run_dir(run_dir):
            raise RQLError(
                f"{run_dir} already holds a run. Continue it with `rql train --resume {run_dir}`, "
                "or choose another --out."
            )
        spec = DataSpec(
            name=dataset,
            dataset_dir=str(dataset_dir or DEFAULT_DATA_DIR) if dataset_path is None else None,
            dataset_path=str(dataset_path) if dataset_path else None,
            task=task,
        )
    _run_training(config, spec, Path(run_dir), resume=resume is not None, quiet=quiet)


def _run_training(config: Any, spec: Any, run_dir: Path, *, resume: bool, quiet: bool) -> None:
    from rql_cli.cli.display import TrainDisplay, success_text
    from rql_cli.train import train as train_loop

    with TrainDisplay(quiet) as display:
        outcome = train_loop(config, spec, run_dir, resume=resume, observer=display)
    if outcome.interrupted:
        console.print(
            f"[yellow]Interrupted at step {outcome.step:,}[/]; checkpoint saved to "
            f"{outcome.last_checkpoint}.\nResume with: [bold]{outcome.resume_command}[/]"
        )
        raise typer.Exit(130)
    console.print(f"Done: {outcome.step:,} steps; last checkpoint {outcome.last_checkpoint}.")
    if outcome.last_eval:
        console.print(f"Last evaluation: success {success_text(outcome.last_eval)}.")
    console.print(f"Evaluate it with: rql eval --checkpoint {run_dir}")


# ------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------


@app.command("eval")
@handles_errors
def eval_command(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Run folder or checkpoint folder."),
    episodes: int = typer.Option(50, "--episodes", "-n", min=1, help="Episodes per task."),
    task: Optional[str] = typer.Option(
        None, "--task", help="Task 1-5, or 'all' for a per-task table.", show_default="the checkpoint's task"
    ),
    seed: int = typer.Option(0, "--seed", help="Episode i starts from env seed SEED+i; flow noise is seeded too."),
    envs: Optional[int] = typer.Option(None, "--envs", help="Parallel environments.", show_default="one per core"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    save: bool = typer.Option(False, "--save", help="Write the report into the checkpoint's metrics.json."),
    best: bool = typer.Option(False, "--best", help="For a run folder: its best-evaluated checkpoint, not the latest."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result table."),
) -> None:
    """Measure success rate and return of a checkpoint's EMA policy, with 95% intervals.

    Example: rql eval --checkpoint runs/demo --episodes 50 --task all --json results.json
    """
    from rql_cli.cli.display import eval_table, make_progress, pct
    from rql_cli.errors import RQLError
    from rql_cli.evaluation import evaluate_checkpoint, save_metrics_into

    if task is None:
        tasks: list[Optional[int]] = [None]
    elif task == "all":
        tasks = [1, 2, 3, 4, 5]
    elif task.isdigit():
        tasks = [int(task)]
    else:
        raise RQLError(f"--task expects a number 1-5 or 'all', got '{task}'.")

    if save and not Path(checkpoint).expanduser().exists():
        from rql_cli.io.hub import parse_hub_ref

        if parse_hub_ref(checkpoint) is not None:
            raise RQLError(
                "--save writes metrics.json into the checkpoint folder, and a Hub checkpoint lives "
                f"in the shared download cache. Pull a copy first: `rql pull {checkpoint} --dir DIR`, "
                "then `rql eval --checkpoint DIR --save`."
            )
    with make_progress(quiet) as progress:
        bar = progress.add_task("eval", total=episodes, rate="", info="")

        def on_task_start(current: Optional[int]) -> None:
            progress.update(bar, completed=0, description=f"eval task {current or 'default'}")

        def on_episode(done: int, total: int, rate: float) -> None:
            progress.update(bar, completed=done, info=f"success {pct(rate)}")

        report = evaluate_checkpoint(
            checkpoint, tasks=tasks, episodes=episodes, seed=seed, num_envs=envs, device=device, best=best,
            on_task_start=on_task_start, on_episode=on_episode,
        )
    result = report.to_dict()
    console.print(eval_table(result))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"Report written to {json_path}")
    if save:
        path = save_metrics_into(Path(report.checkpoint), report)
        console.print(f"Saved into {path}")


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


@data_app.command("generate")
@handles_errors
def data_generate(
    name: str = typer.Argument(..., help="Dataset to make, e.g. cube-single-play-v0 (see `rql list`)."),
    out: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--out", "-o", help="Folder for NAME.npz and NAME-val.npz."),
    episodes: Optional[int] = typer.Option(None, "--episodes", help="Train episodes.", show_default="the official count"),
    val_episodes: Optional[int] = typer.Option(None, "--val-episodes", help="Validation episodes.", show_default="a tenth"),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes, whatever --workers is."),
    workers: int = typer.Option(max(1, os.cpu_count() or 1), "--workers", "-j", help="Processes collecting episodes."),
    episode_length: int = typer.Option(1001, "--episode-length", help="Steps per episode (1001 is the official length)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Make an OGBench manipulation dataset here with ogbench's scripted oracles.

    Interrupted runs resume: finished episodes are kept until both files are written.

    Example: rql data generate cube-double-play-v0 --episodes 100 --out data --workers 2
    """
    from rql_cli.cli.display import make_progress
    from rql_cli.data.generate import generate_dataset

    out = out.expanduser()
    with make_progress(quiet) as progress:
        bar = progress.add_task(f"generate {name}", total=None, rate="", info="")

        def on_episode(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, info="episodes")

        paths = generate_dataset(
            name, out, num_episodes=episodes, num_val_episodes=val_episodes, seed=seed,
            workers=workers, force=force, on_episode=on_episode, episode_length=episode_length,
        )
    for path in paths:
        console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    console.print(f"Train on it with: rql train --dataset {name} --dataset-dir {out}")


@data_app.command("info")
@handles_errors
def data_info(
    name: str = typer.Argument(..., help="Dataset or singletask name, e.g. cube-single-play-v0."),
    dataset_dir: Optional[Path] = typer.Option(None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz.", show_default=DEFAULT_DATA_DIR),
    dataset_path: Optional[Path] = typer.Option(None, "--dataset-path"),
    task: Optional[int] = typer.Option(None, "--task", help="Reward task 1-5 for the statistics."),
    sparse: bool = typer.Option(False, "--sparse", help="Show statistics of sparse rewards."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Sizes, episode counts and reward statistics of a dataset, and where its file is.

    Example: rql data info cube-single-play-v0 --dataset-dir data
    """
    from rich.table import Table

    from rql_cli.data.sources import load_ogbench
    from rql_cli.names import parse_task_name

    parse_task_name(name)
    loaded = load_ogbench(
        name, task=task, dataset_dir=dataset_dir or Path(DEFAULT_DATA_DIR),
        dataset_path=dataset_path, sparse_rewards=sparse,
    )
    info = {
        "train_file": str(loaded.train_path),
        "env_id": loaded.env_id,
        "train": loaded.train.statistics(),
        "val": loaded.val.statistics() if loaded.val else None,
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"{loaded.env_id} ({loaded.train_path})")
    table.add_column("")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    for key, value in info["train"].items():
        other = info["val"][key] if info["val"] else ""
        table.add_row(key, _fmt(value), _fmt(other))
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------


@app.command("list")
@handles_errors
def list_command() -> None:
    """Bundled checkpoints with their measured scores, datasets we can generate, and task presets.

    Example: rql list
    """
    from rich.table import Table

    from rql_cli.config import PRESET_NOTES, PRESETS
    from rql_cli.data.generate import GENERATABLE
    from rql_cli.io.bundled import bundled_checkpoints

    bundled = bundled_checkpoints()
    table = Table(title="Bundled checkpoints")
    for column in ("name", "dataset", "steps", "success rate", "episodes"):
        table.add_column(column)
    for entry in bundled:
        table.add_row(*(str(entry[k]) for k in ("name", "dataset", "step", "success", "episodes")))
    console.print(table if bundled else "No bundled checkpoints are installed.")

    presets = Table(title="Task presets (official hyperparameters.sh; chosen from the dataset name)")
    presets.add_column("family", no_wrap=True)
    for column in ("alpha", "expectile", "rho", "h", "gamma", "sparse"):
        presets.add_column(column, justify="right")
    for family, values in PRESETS.items():
        marker = "*" if family in PRESET_NOTES else ""
        presets.add_row(
            family + marker,
            *(str(values.get(k, "")) for k in ("alpha", "expectile", "rho", "horizon", "discount")),
            "yes" if values.get("sparse_rewards") else "",
        )
    console.print(presets)
    for family, note in PRESET_NOTES.items():
        console.print(f"* {family}: {note}")
    console.print("Datasets `rql data generate` can make: " + ", ".join(sorted(GENERATABLE)))


@app.command()
@handles_errors
def demo(
    out: Path = typer.Option(Path("rql-demo"), "--out", "-o", help="Folder for the dataset and the run."),
    episodes: int = typer.Option(30, "--episodes", help="cube-single episodes to generate (1000 steps each)."),
    steps: int = typer.Option(2000, "--steps", help="Gradient steps of the demo run."),
    eval_episodes: int = typer.Option(20, "--eval-episodes", help="Episodes of the final evaluation."),
    workers: int = typer.Option(max(1, os.cpu_count() or 1), "--workers", "-j", help="Processes for generation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """The whole path on a laptop CPU in minutes: make data, train, evaluate, then score the bundled agent.

    Generates a small cube-single-play dataset here (no download), trains RQL with the cube preset and CPU-sized networks, evaluates the run, and evaluates each bundled checkpoint for cube-single.

    Example: rql demo --out rql-demo
    """
    from rql_cli.cli.display import eval_table
    from rql_cli.config import CPU_NETWORKS, make_config
    from rql_cli.evaluation import evaluate_checkpoint
    from rql_cli.io.bundled import bundled_checkpoints
    from rql_cli.train import DataSpec

    name = "cube-single-play-v0"
    data_dir = out / "data"
    if (data_dir / f"{name}.npz").is_file():
        console.print(f"1/3 Using the dataset already in {data_dir}.")
    else:
        console.print(f"1/3 Generating {episodes} episodes of {name} into {data_dir} ...")
        data_generate(name, out=data_dir, episodes=episodes, val_episodes=max(1, episodes // 10),
                      seed=0, workers=workers, episode_length=1001, force=False, quiet=False)
    run_dir = out / f"run-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"2/3 Training {steps} steps into {run_dir} ...")
    config = make_config(name, overrides=dict(
        **CPU_NETWORKS, steps=steps, eval_interval=steps, eval_episodes=eval_episodes,
        eval_envs=workers, device=device,
    ))
    _run_training(config, DataSpec(name=name, dataset_dir=str(data_dir)), run_dir, resume=False, quiet=False)
    console.print("3/3 Bundled checkpoints for cube-single:")
    bundled = [b for b in bundled_checkpoints() if b["dataset"].startswith("cube-single")]
    if not bundled:
        console.print("  none installed.")
    for entry in bundled:
        report = evaluate_checkpoint(entry["path"], tasks=[None], episodes=eval_episodes,
                                     num_envs=workers, device=device)
        console.print(eval_table(report.to_dict()))
    console.print(
        f"Next: rql eval --checkpoint {run_dir} --episodes 50, or train longer with "
        f"rql train --resume {run_dir} --steps {10 * steps}."
    )


# ------------------------------------------------------------------------------------------
# Commands that later releases fill in
# ------------------------------------------------------------------------------------------


def _not_yet(what: str) -> None:
    err_console.print(
        f"[bold yellow]{what} is not available in this release yet.[/] "
        "Track it in the project's issues; every other command works today."
    )
    raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def finetune(ctx: typer.Context) -> None:
    """Offline-to-online fine-tuning from a checkpoint (not available yet)."""
    _not_yet("`rql finetune`")


def _quiet_library_warnings() -> None:
    """Silence import-time chatter that says nothing to our users (it still shows with --debug)."""
    import warnings

    if state["debug"] or "--debug" in sys.argv:
        return
    warnings.filterwarnings("ignore", module="glfw")  # no display: glfw is never used headless
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # ogbench spaces


app.command()(rollout)
app.command()(push)
app.command()(pull)


def main() -> None:
    _quiet_library_warnings()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
