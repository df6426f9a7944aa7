"""`rql data generate`, `info`, `download` and `verify`: make, inspect and fetch datasets.

The data layer (numpy, torch, ogbench) is imported inside each command, so `rql --help` stays instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

import rql_cli.minari_store as minari_store
from rql_cli.cli.common import DEFAULT_DATA_DIR, check_options, check_output_path, handles_errors, ranged, seed_option
from rql_cli.cli.display import console, make_progress
from rql_cli.errors import RQLError
from rql_cli.names import MINARI_PREFIX

if TYPE_CHECKING:
    from rql_cli.data.verify import Check, Verification

data_app = typer.Typer(
    help="Make and inspect OGBench datasets. Example: rql data generate cube-single-play-v0 --out data",
    no_args_is_help=True,
)


def default_workers() -> int:
    """One worker process per CPU core."""
    return max(1, os.cpu_count() or 1)


@data_app.command("generate")
@handles_errors
def data_generate(
    name: str = typer.Argument(..., help="Dataset to make, e.g. cube-single-play-v0 (see `rql list`)."),
    out: Path = typer.Option(Path(DEFAULT_DATA_DIR), "--out", "-o", help="Folder for NAME.npz and NAME-val.npz."),
    episodes: int | None = typer.Option(None, "--episodes", help="Train episodes.", show_default="the official count"),
    val_episodes: int | None = typer.Option(
        None, "--val-episodes", help="Validation episodes.", show_default="a tenth"
    ),
    seed: int = seed_option("Same seed, same bytes, whatever --workers is."),
    workers: int = typer.Option(
        default_workers(), "--workers", "-j", help=ranged("--workers", "Processes collecting episodes.")
    ),
    episode_length: int = typer.Option(
        1001, "--episode-length", help="Steps per episode (1001 is the official length)."
    ),
    shard_size: int | None = typer.Option(
        None, "--shard-size",
        help="Write a folder of shards of this many train episodes each (the official 100M sets: 1000), "
        "each with its own -val file (--val-episodes then counts per shard).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Make an OGBench manipulation dataset here with ogbench's scripted oracles.

    Interrupted runs resume: finished episodes (and finished shards) are kept until everything is written.

    Examples:
      rql data generate cube-double-play-v0 --episodes 100 --out data --workers 2
      rql data generate cube-single-play-v0 --episodes 40 --shard-size 10 --out data   (4 shards)
    """
    check_options({"--workers": workers, "--shard-size": shard_size})
    check_output_path(out, "--out", folder=True)
    paths = generate_with_progress(
        name, out.expanduser(), episodes=episodes, val_episodes=val_episodes, seed=seed, workers=workers,
        episode_length=episode_length, force=force, quiet=quiet, shard_size=shard_size,
    )
    if shard_size is not None:
        folder = paths[0].parent
        size = sum(p.stat().st_size for p in folder.glob("*.npz"))
        console.print(f"wrote {len(paths)} shards (and their -val files) in {folder} ({size / 2**20:.1f} MiB)")
        console.print(f"Train on it with: rql train --dataset {name} --dataset-path {folder}")
        return
    for path in paths:
        console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    console.print(f"Train on it with: rql train --dataset {name} --dataset-dir {out}")


def generate_with_progress(
    name: str, out: Path, *, quiet: bool, shard_size: int | None = None, **options: Any
) -> list[Path]:
    """``generate_dataset`` (or ``generate_shards``) under a progress bar of finished episodes.

    Returns the two files, or the training shards.
    """
    from rql_cli.data.generate import Generation, generate_dataset, generate_shards

    episodes, val_episodes = options.pop("episodes"), options.pop("val_episodes")
    with make_progress(quiet) as progress:
        bar = progress.add_task(f"generate {name}", total=None, rate="", info="")

        def on_episode(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, info="episodes")

        request = Generation(name, out, num_episodes=episodes, num_val_episodes=val_episodes,
                             on_episode=on_episode, **options)
        return generate_dataset(request) if shard_size is None else generate_shards(request, shard_size)


@data_app.command("info")
@handles_errors
def data_info(
    name: str = typer.Argument(
        ..., help="Dataset or singletask name (cube-single-play-v0), minari:ID, or gym:ENV with --dataset-path."
    ),
    dataset_dir: Path | None = typer.Option(
        None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz, or a shard folder.",
        show_default=DEFAULT_DATA_DIR,
    ),
    dataset_path: Path | None = typer.Option(None, "--dataset-path", help="The training .npz itself."),
    task: int | None = typer.Option(None, "--task", help="Reward task 1-5 for the statistics."),
    sparse: bool = typer.Option(False, "--sparse", help="Show statistics of sparse rewards."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Sizes, episode counts and reward statistics of a dataset, and where its file is.

    Example: rql data info cube-single-play-v0 --dataset-dir data
    """
    from rql_cli.data.shards import folder_summary
    from rql_cli.data.sources import DataSpec

    spec = DataSpec(name=name, dataset_dir=str(dataset_dir or DEFAULT_DATA_DIR),
                    dataset_path=str(dataset_path) if dataset_path else None, task=task)
    loaded = spec.load(sparse_rewards=sparse)
    info: dict[str, Any] = {
        "train_file": str(loaded.train_path),
        "env_id": loaded.env_id,
        "train": loaded.train.statistics(),
        "val": loaded.val.statistics() if loaded.val else None,
    }
    if spec.sharded:  # a shard folder: the statistics are its first shard's; the totals cover all
        folder = spec.training_file()
        info["shard_folder"] = {"folder": str(folder), **folder_summary(folder)}
    if as_json:
        print(json.dumps(info, indent=2))
        return
    if "shard_folder" in info:
        whole = info["shard_folder"]
        console.print(f"Shard folder {whole['folder']}: {whole['shards']} shards, {whole['transitions']:,} "
                      f"transitions in {whole['episodes']:,} episodes. The table shows the first shard.")
    table = Table(title=f"{loaded.env_id} ({loaded.train_path})")
    table.add_column("", justify="left")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    for key, value in info["train"].items():
        other = info["val"][key] if info["val"] else ""
        table.add_row(key, _fmt(value), _fmt(other))
    console.print(table)


@data_app.command("download")
@handles_errors
def data_download(
    name: str = typer.Argument(..., help="A Minari dataset as minari:ID, e.g. minari:D4RL/pen/human-v2."),
    force: bool = typer.Option(False, "--force", help="Download again over a copy on disk."),
) -> None:
    """Fetch a Minari dataset through minari's own remote into MINARI_DATASETS_PATH.

    The remote is a Hugging Face Hub namespace (MINARI_REMOTE, default hf://farama-minari), so
    HF_ENDPOINT and HF_TOKEN apply; with HF_HUB_OFFLINE=1 it stops at once. OGBench files are not
    downloaded (their host is often unreachable): make them with `rql data generate`.

    Example: rql data download minari:D4RL/pen/human-v2
    """
    if not name.startswith(MINARI_PREFIX):
        raise RQLError(f"`rql data download` fetches Minari datasets (minari:ID); for OGBench's '{name}' use "
                       f"`rql data generate {name}`, or put the official files in a folder for --dataset-dir.")
    ident = name[len(MINARI_PREFIX):]
    if minari_store.is_local(ident) and not force:
        console.print(f"{ident} is already at {minari_store.dataset_folder(ident)} (--force downloads it again).")
        return
    with console.status(f"downloading {ident}"):
        folder = minari_store.download(ident, force=force)
    console.print(f"downloaded {ident} to {folder}")
    console.print(f"Train on it with: rql train --dataset {name}")


@data_app.command("verify")
@handles_errors
def data_verify(
    name: str = typer.Argument(..., help="Dataset or singletask name, e.g. cube-single-play-v0."),
    dataset_dir: Path | None = typer.Option(
        None, "--dataset-dir", help="Folder with NAME.npz and NAME-val.npz, or a folder of shards.",
        show_default=DEFAULT_DATA_DIR,
    ),
    dataset_path: Path | None = typer.Option(
        None, "--dataset-path", help="The training .npz itself, or a shard folder."
    ),
    all_shards: bool = typer.Option(False, "--all-shards", help="Read every shard's values, not only the first's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Check a dataset file (or shard folder) against what the official OGBench sets look like.

    Keys, dtypes and shapes (from the env), finite values, actions in [-1, 1], whole episodes of equal
    length, episode counts, observation statistics and how often each task's goal is reached. Exits 1
    when something would break training; differences that only make it unlike the official files
    (fewer or shorter episodes) are notes.

    Example: rql data verify cube-single-play-v0 --dataset-dir data
    """
    from rql_cli.data.sources import resolve_dataset_path
    from rql_cli.data.verify import verify_dataset

    path = resolve_dataset_path(name, dataset_dir or Path(DEFAULT_DATA_DIR), dataset_path)
    report = verify_dataset(name, path, all_shards=all_shards)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_verification(report)
    if report.failed:
        raise typer.Exit(1)


def _print_verification(report: Verification) -> None:
    """What ``rql data verify`` found: failures and notes, passed checks one row each, solve rates."""
    table = Table(title=f"{report.name}: {report.path}")
    for column in ("file", "check", "status", "found", "expected"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "note": "yellow", "fail": "bold red"}
    for check in [c for c in report.checks if c.status != "ok"]:
        status = f"[{style[check.status]}]{check.status}[/]"
        table.add_row(check.file, check.field, status, check.found, check.expected)
    passed: dict[str, list[Check]] = {}
    for check in report.checks:  # passed checks: one row per check, however many files had it
        if check.status == "ok":
            passed.setdefault(check.field, []).append(check)
    for field_name, checks in passed.items():
        files = checks[0].file if len(checks) == 1 else f"{len(checks)} files"
        found = checks[0].found if len({c.found for c in checks}) == 1 else "(varies by file)"
        table.add_row(files, field_name, "[green]ok[/]", found, checks[0].expected)
    console.print(table)
    if report.solve_rates:
        rates = Table(title="How often each task is solved in the training data (first file)")
        for column in ("task", "rows solving the task", "sub-goals solved (mean)"):
            rates.add_column(column, justify="right")
        for task, rate in report.solve_rates.items():
            rates.add_row(
                str(task), f"{100 * rate['solved_fraction']:.2f}%", f"{100 * rate['subgoals_solved']:.1f}%"
            )
        console.print(rates)
    notes = sum(c.status == "note" for c in report.checks)
    if report.failed:
        console.print(f"[bold red]{len(report.failed)} check(s) failed[/]: "
                      + "; ".join(f"{c.file} {c.field}: {c.found}" for c in report.failed))
    else:
        console.print(f"[green]All checks passed[/] ({notes} note(s) where it differs from the official files).")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
