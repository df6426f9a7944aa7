"""`rql push` and `rql pull`: share checkpoints through the Hugging Face Hub.

Plain command functions that app.py registers. Heavy imports (torch, huggingface_hub) happen
inside the commands.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import typer
from rich.status import Status
from rich.table import Table

from rql_cli.cli.common import CHECKPOINT_HELP, debug_enabled, handles_errors
from rql_cli.cli.display import console, pct
from rql_cli.io.checkpoint_files import CONFIG_FILE
from rql_cli.io.hub_ref import require_hub_ref
from rql_cli.io.metrics import METRICS_FILE, read_metrics
from rql_cli.io.resolve import LoadedCheckpoint, load_checkpoint
from rql_cli.results import EvalResult


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _status(message: str) -> Status | contextlib.nullcontext[None]:
    """A spinner on a terminal; a plain line otherwise (CI logs, pipes)."""
    if console.is_terminal:
        return console.status(message)
    console.print(message)
    return contextlib.nullcontext()


def _video_for_push(loaded: LoadedCheckpoint, workdir: Path) -> Path | None:
    """rollout.mp4 of the checkpoint when there is one, else one rendered now; None when neither works."""
    from rql_cli.rollout import render_video_for_push

    for name in ("rollout.mp4", "rollout.gif"):
        if (loaded.folder / name).is_file():
            return loaded.folder / name
    try:
        with _status("Rendering one episode for the model card ..."):
            return render_video_for_push(loaded, workdir / "rollout.mp4")
    except Exception as error:  # rendering is a nicety: GL or ffmpeg trouble must not block a push
        if debug_enabled():
            raise
        console.print(
            f"[yellow]Note:[/] could not render a video ({type(error).__name__}: {error}); pushing without one."
        )
        return None


@handles_errors
def push(
    run_or_checkpoint: str = typer.Argument(..., help=CHECKPOINT_HELP),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repo to publish to, USER/NAME (made if missing)."),
    private: bool = typer.Option(False, "--private", help="Make the repo private when it is created."),
    token: str | None = typer.Option(
        None, "--token", help="Hugging Face token with write access.",
        show_default="HF_TOKEN, else the `hf auth login` one",
    ),
    revision: str | None = typer.Option(
        None, "--revision", help="Branch to commit to, made if missing.", show_default="main"
    ),
    commit_message: str | None = typer.Option(
        None, "--commit-message", "-m", help="Commit message.", show_default="dataset, step and success rate"
    ),
    with_train_state: bool = typer.Option(
        False, "--with-train-state",
        help="Also publish train_state.safetensors (optimiser and RNG state for exact --resume).",
    ),
    best: bool = typer.Option(False, "--best", help="For a run folder: its best-evaluated checkpoint, not the latest."),
    video: bool = typer.Option(
        True, "--video/--no-video", help="Publish rollout.mp4 from the checkpoint folder, or render one episode for it."
    ),
) -> None:
    """Publish a checkpoint to the Hugging Face Hub as one commit, with a model card of its measured results.

    Uploads config.json, the safetensors weights, metrics.json (from `rql eval --checkpoint FOLDER --save`),
    a rollout video and a README.md model card; the token comes from --token, HF_TOKEN or `hf auth login`
    and is never printed.

    Example: rql push runs/demo --repo-id alice/rql-cube-single
    """
    from rql_cli.io.hub import check_can_push, push_checkpoint

    # Before loading, rendering or any network call: a push that will be refused does nothing.
    token, _ = check_can_push(repo_id, revision, token)
    loaded = load_checkpoint(run_or_checkpoint, "cpu", best=best)  # never publish what would not load
    folder = loaded.folder
    with tempfile.TemporaryDirectory(prefix="rql-video-") as workdir:
        video_path = _video_for_push(loaded, Path(workdir)) if video else None
        with _status(f"Pushing {folder} to {repo_id} ..."):
            result = push_checkpoint(
                folder, loaded.meta, repo_id, token=token, private=private, revision=revision,
                commit_message=commit_message, with_train_state=with_train_state, video_path=video_path,
            )
    ref = result.repo_id if result.revision == "main" else f"{result.repo_id}@{result.revision}"
    console.print(
        f"Pushed {folder} to [bold]{ref}[/] in {result.seconds:.1f} s: {len(result.files)} files, "
        f"{_mb(result.size_bytes)}, one commit {result.commit_oid[:10]}."
    )
    console.print(f"  files: {', '.join(result.files)}")
    if result.deleted:
        console.print(f"  removed from the repo (not part of this checkpoint): {', '.join(result.deleted)}")
    console.print(f"  {result.commit_url}")
    if not result.evaluated:
        console.print(
            f"[yellow]Note:[/] the checkpoint has no {METRICS_FILE}, so its card says 'not evaluated yet'. "
            f"Measure it with `rql eval --checkpoint {folder} --save` and push again."
        )
    console.print(f"Load it with: rql eval --checkpoint {ref}  (or: rql pull {ref})")


@handles_errors
def pull(
    repo_id: str = typer.Argument(..., help="Hub model repo, USER/NAME or USER/NAME@REVISION."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit id.", show_default="main"),
    dir: Path | None = typer.Option(
        None, "--dir", help="Download into this folder instead of the Hub cache (HF_HOME)."
    ),
) -> None:
    """Download a checkpoint from the Hugging Face Hub, check that its weights load, and show its measured results.

    With HF_HUB_OFFLINE=1 it uses the cache only and fails at once when the repo is not there.

    Example: rql pull alice/rql-cube-single --revision main
    """
    import huggingface_hub  # noqa: F401  (imported before the clock starts: time the download, not imports)

    from rql_cli.io.hub import pull_checkpoint, verify_checkpoint

    ref = require_hub_ref(repo_id, revision)
    started = time.perf_counter()
    with _status(f"Pulling {ref} ..."):
        folder = pull_checkpoint(ref.repo_id, revision=ref.revision, local_dir=dir, verify=False)
    seconds = time.perf_counter() - started
    commit = f" (commit {folder.name[:10]})" if folder.parent.name == "snapshots" else ""
    console.print(f"Pulled [bold]{ref}[/]{commit} in {seconds:.1f} s: {_mb(_folder_size(folder))} in {folder}")
    started = time.perf_counter()
    meta = verify_checkpoint(folder, source=str(ref))
    console.print(
        f"Verified in {time.perf_counter() - started:.1f} s: both weight files load and fit {CONFIG_FILE} "
        f"({meta.dataset}, step {meta.step:,}, observations {meta.obs_dim}, actions {meta.action_dim}, "
        f"chunks of {meta.config.horizon})."
    )
    report = read_metrics(folder)
    if report is None or not report.tasks:
        console.print(f"[yellow]Not evaluated yet[/]: the repo has no {METRICS_FILE}. "
                      f"Measure it with: rql eval --checkpoint {ref}")
    else:
        console.print(_results_table(f"Model card results of {ref}", report.tasks, meta.env_id))
    console.print(f"Evaluate it with: rql eval --checkpoint {folder if dir else ref}")


def _results_table(title: str, results: list[EvalResult], env_id: str) -> Table:
    """A rich table of per-task results as a model card states them."""
    table = Table(title=title)
    for column in ("task", "environment", "success rate", "95% CI", "episodes"):
        table.add_column(column, justify="right")
    for result in results:
        low, high = result.success_ci95 or (float("nan"), float("nan"))
        table.add_row("" if result.task is None else str(result.task), result.env_id or env_id,
                      pct(result.success_rate), f"[{pct(low)}, {pct(high)}]",
                      "?" if result.episodes is None else str(result.episodes))
    return table
