"""`rql finetune`: improve a checkpoint online in its environment, or by more offline training.

The training, data and device modules (torch) are imported inside the functions, so `rql --help`
stays instant.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import typer

from rql_cli.cli.common import (
    CHECKPOINT_HELP,
    DEFAULT_DATA_DIR,
    check_options,
    config_option,
    handles_errors,
    overrides_of,
    ranged,
)
from rql_cli.cli.display import FinetuneDisplay, TrainDisplay, print_outcome, stopped_before_training
from rql_cli.config import RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.group_record import is_group_dir, read_group_record, seed_dir
from rql_cli.io.resolve import LoadedCheckpoint, load_checkpoint
from rql_cli.io.run_layout import CHECKPOINTS, RUN_FILE, check_new_run_folder, is_run_dir
from rql_cli.io.run_record import read_run_record, recorded_data_location
from rql_cli.names import parse_task_name
from rql_cli.training.signals import StopNow

if TYPE_CHECKING:
    import torch

    from rql_cli.data.sources import DataSpec
    from rql_cli.training.online import FinetuneSettings


DEFAULT_OUT = "runs/finetune-NAME-TIMESTAMP"


@handles_errors
def finetune(
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    online_steps: int = typer.Option(
        0, "--online-steps", help="Environment steps to fine-tune online (one env step, then --utd gradient steps)."
    ),
    utd: int = typer.Option(1, "--utd", help=ranged("--utd", "Gradient steps per environment step.")),
    balanced: bool = typer.Option(
        False, "--balanced", help="Half of each batch from the offline data, half from online transitions.",
        show_default="uniform over the whole buffer",
    ),
    no_offline_data: bool = typer.Option(
        False, "--no-offline-data", help="Start the replay buffer empty instead of with the checkpoint's dataset."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d",
        help="Continue offline on this dataset (same env as the checkpoint's), for --steps gradient steps.",
    ),
    dataset_dir: Path | None = typer.Option(
        None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz.",
        show_default=f"a run folder's own data, else {DEFAULT_DATA_DIR}",
    ),
    dataset_path: Path | None = typer.Option(None, "--dataset-path", help="The training .npz itself."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a field of the checkpoint's config, e.g. --set lr=1e-4."
    ),
    steps: int | None = config_option("steps"),
    eval_interval: int | None = config_option("eval_interval", "--eval-interval", "--eval-every"),
    eval_episodes: int | None = config_option("eval_episodes"),
    seed: int | None = config_option("seed"),
    device: str | None = config_option("device"),
    log_to: str | None = config_option("log_to", "--log"),
    out: Path | None = typer.Option(None, "--out", "-o", help="New run folder.", show_default=DEFAULT_OUT),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the fine-tuning run in this folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
) -> None:
    """Fine-tune a checkpoint: online in its own environment, or by more offline training.

    Online: each environment step (online velocity field, fresh noise, chunks open loop) goes into
    a replay buffer that starts with the checkpoint's offline dataset; --eval-every counts
    environment steps. Offline: --dataset and --steps continue training from its weights (a seed
    group's folder: every seed from its own, into a new group). The source is never written to: a
    new run folder records where it came from. Ctrl-C saves a checkpoint with the online buffer;
    --resume drops the episode that was running and starts a new one.

    Example: rql finetune --checkpoint cube-single-task2-rql-cpu --online-steps 20000 --dataset-dir data
    """
    from rql_cli.training.online import FinetuneSettings

    check_options({"--utd": utd, "--online-steps": online_steps if online_steps > 0 else None})
    settings = FinetuneSettings(online_steps=online_steps, utd=utd, balanced=balanced, offline_data=not no_offline_data)
    flags = dict(steps=steps, eval_interval=eval_interval, eval_episodes=eval_episodes, seed=seed, device=device,
                 log_to=log_to)
    overrides = overrides_of(set_, flags)
    if resume is not None:
        _refuse_options_on_resume(checkpoint, dataset, dataset_dir, dataset_path, online_steps)
        args = _resumed(resume, overrides)
    else:
        args = _new(checkpoint, settings, dataset, dataset_dir, dataset_path, overrides, out)
    _run(*args, resume=resume is not None, quiet=quiet)


class _Setup(NamedTuple):
    """What a fine-tuning run starts from: its source (None when resumed: the run's own checkpoint
    restores it), its config and settings, the data and the run folder."""

    loaded: LoadedCheckpoint | None
    config: RunConfig
    settings: FinetuneSettings
    data: DataSpec
    run_dir: Path
    seeds: list[int] | None = None
    """A seed group's seeds (``rql train --seeds``): each seed is fine-tuned from its own checkpoint."""
    group: dict[int, LoadedCheckpoint] | None = None
    """Each seed's checkpoint, for a new group (None when resumed)."""


def _refuse_options_on_resume(*given: object) -> None:
    if any(given):
        raise RQLError(
            "--resume continues a fine-tuning run as it was set up; drop --checkpoint, --dataset, "
            "--dataset-dir, --dataset-path and --online-steps."
        )


def _resumed(run_dir: Path, overrides: dict[str, Any]) -> _Setup:
    """The set-up of a fine-tuning run to continue."""
    from rql_cli.data.sources import DataSpec
    from rql_cli.training.online import FinetuneSettings

    seeds = read_group_record(run_dir).seeds if is_group_dir(run_dir) else None
    record_dir = run_dir if seeds is None else seed_dir(run_dir, seeds[0])
    if not is_run_dir(record_dir):
        raise RQLError(f"{run_dir} is not a run folder (it needs {RUN_FILE} and {CHECKPOINTS}/).")
    if seeds is not None and "seed" in overrides:
        raise RQLError("A seed group's seeds are fixed; drop --seed from --resume.")
    record = read_run_record(record_dir)
    if record.finetune is None:
        raise RQLError(
            f"{run_dir} is not a fine-tuning run (it was made by `rql train`). Continue it with "
            f"`rql train --resume {run_dir}`."
        )
    settings = FinetuneSettings.from_dict(record.finetune)
    data = DataSpec(name=record.dataset, **record.data)
    return _Setup(None, record.config.replace(**overrides), settings, data, run_dir, seeds)


def _new(
    checkpoint: str | None, settings: FinetuneSettings, dataset: str | None, dataset_dir: Path | None,
    dataset_path: Path | None, overrides: dict[str, Any], out: Path | None,
) -> _Setup:
    """The set-up of a new fine-tuning run; checks the inputs first."""
    from rql_cli.data.sources import DataSpec
    from rql_cli.device import resolve_device

    if not checkpoint:
        raise RQLError(
            "Name the checkpoint to fine-tune with --checkpoint "
            "(a run folder, checkpoint folder, bundled name or Hub id)."
        )
    if settings.online_steps < 0 or (settings.online_steps == 0 and not dataset):
        raise RQLError(
            f"--online-steps must be a positive number of environment steps (got {settings.online_steps}), "
            "or continue offline with --dataset NAME --steps N."
        )
    if settings.online_steps > 0 and dataset:
        raise RQLError("Give --online-steps (online, on the checkpoint's own data) or --dataset (offline), not both.")
    if dataset and "steps" not in overrides:  # the source's run length is not this run's business
        raise RQLError("Continued offline training needs its length: add --steps N (gradient steps).")
    device = resolve_device(overrides.get("device", "auto"))
    is_group = is_group_dir(Path(checkpoint))
    group = _group_checkpoints(Path(checkpoint), settings, overrides, device) if is_group else None
    loaded = next(iter(group.values())) if group else load_checkpoint(checkpoint, device)
    # The checkpoint defines the agent; how this run uses the machine starts from the defaults.
    config = RunConfig(agent=loaded.meta.config).replace(**overrides)
    name = dataset or loaded.meta.env_id
    if not dataset and dataset_dir is None and dataset_path is None:
        # Online fine-tuning of a local run replays the files that run trained on.
        dataset_dir, dataset_path = recorded_data_location(loaded.folder, loaded.meta.dataset)
    run_dir = out or Path("runs") / f"finetune-{parse_task_name(name).dataset_name}-{datetime.now():%Y%m%d-%H%M%S}"
    check_new_run_folder(Path(run_dir))
    # Another dataset keeps the checkpoint's task unless its name gives one.
    task = None if not dataset or parse_task_name(dataset).task is not None else loaded.meta.task_name.resolve_task()
    data = DataSpec(
        name=name,
        dataset_dir=str(dataset_dir or DEFAULT_DATA_DIR) if dataset_path is None else None,
        dataset_path=str(dataset_path) if dataset_path else None,
        task=task,
    )
    return _Setup(loaded, config, settings, data, Path(run_dir), list(group) if group else None, group)


def _group_checkpoints(
    folder: Path, settings: FinetuneSettings, overrides: dict[str, Any], device: torch.device
) -> dict[int, LoadedCheckpoint]:
    """Each seed's latest checkpoint of the group in ``folder``, for continued offline training."""
    if settings.online_steps > 0:
        raise RQLError(f"{folder} is a seed group; online fine-tuning takes one agent: name one seed's run folder "
                       f"(e.g. {seed_dir(folder, read_group_record(folder).seeds[0])}), or continue the whole group "
                       "offline with --dataset NAME --steps N.")
    if "seed" in overrides:
        raise RQLError("Each seed of a group is fine-tuned with its own seed; drop --seed.")
    return {s: load_checkpoint(str(seed_dir(folder, s)), device) for s in read_group_record(folder).seeds}


def _run(
    loaded: LoadedCheckpoint | None, config: RunConfig, settings: FinetuneSettings, data: DataSpec, run_dir: Path,
    seeds: list[int] | None, group: dict[int, LoadedCheckpoint] | None, *, resume: bool, quiet: bool,
) -> None:
    from rql_cli.training.online import finetune as finetune_loop
    from rql_cli.training.online import finetune_group

    display = FinetuneDisplay(quiet) if settings.online_steps > 0 else TrainDisplay(quiet)
    try:
        with display:
            if seeds is None:
                outcome = finetune_loop(loaded, config, settings, data, run_dir, resume=resume, observer=display)
            else:
                outcome = finetune_group(group, config, settings, data, run_dir, seeds, resume=resume,
                                         observer=display)
    except StopNow:
        stopped_before_training(run_dir, resume)
    print_outcome(outcome, run_dir, "environment steps" if settings.online_steps > 0 else "gradient steps")
