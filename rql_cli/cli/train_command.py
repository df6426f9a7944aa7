"""`rql train`: offline training with the paper's preset for the dataset's task.

The data and training modules (torch) are imported when the command runs, so `rql --help` stays instant.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

import rql_cli.minari_store as minari_store
from rql_cli.cli.common import DEFAULT_DATA_DIR, config_option, handles_errors, overrides_of
from rql_cli.cli.display import TrainDisplay, print_outcome, stopped_before_training
from rql_cli.config import FIELD_HELP, OFFICIAL_NAMES, RunConfig, parse_seeds
from rql_cli.errors import RQLError
from rql_cli.io.group_record import is_group_dir, read_group_record, seed_dir
from rql_cli.io.run_layout import check_new_run_folder, check_resumable, is_run_dir
from rql_cli.io.run_record import read_run_record
from rql_cli.names import MINARI_PREFIX, parse_task_name
from rql_cli.presets import make_config
from rql_cli.training.signals import StopNow

if TYPE_CHECKING:
    from rql_cli.data.sources import DataSpec

SEEDS_HELP = (
    "Train one agent per seed in one process, e.g. 0-7 or 0,3,5: OUT/seed_S is each seed's ordinary run folder "
    "(as --seed S alone would make it), OUT/group.json the group's record. --resume OUT continues the group."
)
DEFAULT_OUT = "runs/DATASET-seedS-TIMESTAMP"
RUN_FLAGS = ("steps", "eval_interval", "eval_episodes", "eval_envs", "seed", "device")
"""Config fields that have a flag of their own besides --set."""


def config_fields_epilog() -> str:
    """Every config field, its default and its help: the one source of --set's help."""
    defaults = RunConfig().flat()
    official = {ours: theirs for theirs, ours in OFFICIAL_NAMES.items()}
    lines = [
        f"[bold]{name}[/] = {json.dumps(value)}: {FIELD_HELP[name]}"
        + (f" (official name: {official[name]})" if name in official else "")
        for name, value in defaults.items()
    ]
    return ("Config fields for --set (defaults before the task preset; the agent's first, then the run's):\n\n"
            + "\n\n".join(lines))


@handles_errors
def train(
    dataset: str | None = typer.Option(
        None, "--dataset", "-d",
        help="OGBench dataset or singletask name (cube-single-play-v0), or a Minari id as minari:ID "
        "(minari:D4RL/pen/human-v2, read from MINARI_DATASETS_PATH).",
    ),
    dataset_dir: Path | None = typer.Option(
        None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz, or a folder of shards (100M sets).",
        show_default=DEFAULT_DATA_DIR,
    ),
    dataset_path: Path | None = typer.Option(
        None, "--dataset-path",
        help="The training .npz itself (its -val.npz must sit beside it), or a folder of .npz shards.",
    ),
    env: str | None = typer.Option(
        None, "--env", help="Gymnasium env id that evaluates a plain .npz given with --dataset-path (e.g. Hopper-v5)."
    ),
    download: bool = typer.Option(
        False, "--download", help="Fetch a Minari dataset that is not on disk (honours HF_ENDPOINT, HF_HUB_OFFLINE)."
    ),
    task: int | None = typer.Option(
        None, "--task", help="Singletask reward task 1-5.", show_default="the name's, else the env's default"
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Hyperparameter preset of another task family (see `rql list`)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field, value as JSON: --set alpha=3 --set 'value_hidden_dims=[256,256]'."
    ),
    steps: int | None = config_option("steps"),
    eval_interval: int | None = config_option("eval_interval", "--eval-interval", "--eval-every"),
    eval_episodes: int | None = config_option("eval_episodes"),
    eval_envs: int | None = config_option("eval_envs"),
    seed: int | None = config_option("seed"),
    seeds: str | None = typer.Option(None, "--seeds", help=SEEDS_HELP),
    device: str | None = config_option("device"),
    shard_swap_every: int | None = config_option("shard_swap_every"),
    log_to: str | None = config_option("log_to", "--log"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder.", show_default=DEFAULT_OUT),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run (or seed group) in this folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
) -> None:
    """Train an RQL agent offline, with the paper's preset for the dataset's task.

    Example: rql train --dataset cube-double-play-v0 --dataset-dir data --steps 100000 --device cuda
    (four seeds in one process: --seeds 0-3)
    """
    flags = dict(zip(RUN_FLAGS, (steps, eval_interval, eval_episodes, eval_envs, seed, device), strict=True))
    overrides = overrides_of(set_, {**flags, "shard_swap_every": shard_swap_every, "log_to": log_to})
    group = _group_seeds(seeds, seed, resume)
    if resume is not None:
        _refuse_setup_on_resume(dataset, dataset_dir, dataset_path, preset, env, task is not None)
        config, spec, run_dir, group = _resumed_run(resume, overrides)
    else:
        dataset = _dataset_name(dataset, dataset_path, env, download)
        config, spec, run_dir = _new_run(dataset, dataset_dir, dataset_path, task, preset, overrides, out, group)
    run_training(config, spec, run_dir, resume=resume is not None, quiet=quiet, seeds=group)


def _group_seeds(seeds: str | None, seed: int | None, resume: Path | None) -> list[int] | None:
    """The seeds of ``--seeds`` (None without it); refused beside --seed or --resume."""
    if seeds is None:
        return None
    if seed is not None or resume is not None:
        raise RQLError("--seeds starts a group of runs: drop --seed (each seed of the list is one run) and "
                       "--resume (which continues a group by its folder alone).")
    return parse_seeds(seeds)


def _refuse_setup_on_resume(*given: object) -> None:
    """Refuse what sets up a new run (the data, the env, the task, the preset) alongside --resume."""
    if any(given):
        raise RQLError(
            "--resume continues a run as it was set up; drop --dataset, --dataset-dir, "
            "--dataset-path, --env, --task and --preset."
        )


def _resumed_run(run_dir: Path, overrides: dict[str, Any]) -> tuple[RunConfig, DataSpec, Path, list[int] | None]:
    """(config, data spec, run folder, the group's seeds or None) of a run or seed group to continue,
    with ``overrides`` applied.

    The training layer refuses overrides the saved state cannot take (``session.check_resume``).
    """
    from rql_cli.data.sources import DataSpec

    seeds = None
    record_dir = run_dir
    if is_group_dir(run_dir):
        if "seed" in overrides:
            raise RQLError("A seed group's seeds are fixed; drop --seed from --resume.")
        seeds = read_group_record(run_dir).seeds
        record_dir = seed_dir(run_dir, seeds[0])
    check_resumable(record_dir)
    record = read_run_record(record_dir)
    spec = DataSpec(name=record.dataset, **record.data)
    return record.config.replace(**overrides), spec, run_dir, seeds


def _dataset_name(dataset: str | None, dataset_path: Path | None, env: str | None, download: bool) -> str | None:
    """The dataset name a new run records: as given, or ``gym:ENV`` for a plain file with --env.

    With --download a Minari dataset missing from disk is fetched first.
    """
    if env is not None:
        if dataset is not None or dataset_path is None:
            raise RQLError("--env names the environment of a plain .npz: use it with --dataset-path FILE.npz "
                           "and without --dataset.")
        return f"gym:{env}"
    if download:
        if not dataset or not dataset.startswith(MINARI_PREFIX):
            raise RQLError("--download fetches Minari datasets: use it with --dataset minari:ID.")
        ident = dataset[len(MINARI_PREFIX):]
        if not minari_store.is_local(ident):
            minari_store.download(ident)
    return dataset


def _new_run(
    dataset: str | None, dataset_dir: Path | None, dataset_path: Path | None, task: int | None,
    preset: str | None, overrides: dict[str, Any], out: Path | None, seeds: list[int] | None = None,
) -> tuple[RunConfig, DataSpec, Path]:
    """(config, data spec, run folder) of a new run or seed group; refuses a folder that already holds one."""
    from rql_cli.data.sources import DataSpec

    if not dataset:
        raise RQLError(
            "Name a dataset with --dataset (e.g. cube-single-play-v0), or continue a run with --resume RUN_DIR."
        )
    if seeds is not None:
        overrides = {**overrides, "seed": seeds[0]}
    task_name = parse_task_name(dataset)  # unknown names fail here, with suggestions
    if task is not None:
        task_name.resolve_task(task)
    config = make_config(task_name, preset, overrides)
    stem = dataset.replace(":", "-").replace("/", "-")
    which = f"seed{config.seed}" if seeds is None else f"seeds{seeds[0]}-{seeds[-1]}"
    run_dir = out or Path("runs") / f"{stem}-{which}-{datetime.now():%Y%m%d-%H%M%S}"
    if is_run_dir(run_dir) or is_group_dir(run_dir):
        raise RQLError(
            f"{run_dir} already holds a run. Continue it with `rql train --resume {run_dir}`, "
            "or choose another --out."
        )
    check_new_run_folder(Path(run_dir))
    spec = DataSpec(
        name=dataset,
        dataset_dir=str(dataset_dir or DEFAULT_DATA_DIR) if dataset_path is None else None,
        dataset_path=str(dataset_path) if dataset_path else None,
        task=task,
    )
    return config, spec, Path(run_dir)


def run_training(
    config: RunConfig, spec: DataSpec, run_dir: Path, *, resume: bool, quiet: bool, seeds: list[int] | None = None,
) -> None:
    """Run the training loop (of one run, or of a seed group) under a progress display; print how it ended."""
    from rql_cli.training.group import train_group
    from rql_cli.training.offline import train as train_loop

    try:
        with TrainDisplay(quiet) as display:
            if seeds is None:
                outcome = train_loop(config, spec, run_dir, resume=resume, observer=display)
            else:
                outcome = train_group(config, spec, run_dir, seeds, resume=resume, observer=display)
    except StopNow:
        stopped_before_training(run_dir, resume)
    print_outcome(outcome, run_dir, "steps")
