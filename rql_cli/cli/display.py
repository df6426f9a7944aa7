"""Everything the CLI draws: progress for training, evaluation and generation, result tables.

Rich progress bars on a terminal; plain lines when stdout is not one (CI, pipes, log files).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rql_cli.results import Episode, EpisodeProgress, EvalResult
from rql_cli.training.observer import TrainObserver, TrainOutcome

if TYPE_CHECKING:
    from rql_cli.io.metrics import EvaluationReport

def make_console(stderr: bool = False, **options: Any) -> Console:
    """On a terminal, lines wrap at words to its width; off one (logs, pipes) they stay whole, so a path
    or a command a user will copy is never broken."""
    terminal = Console(stderr=stderr, **options).is_terminal
    return Console(stderr=stderr, soft_wrap=not terminal, **options)


console = make_console()
err_console = make_console(stderr=True)


class _Progress(Progress):
    """rich Progress that, when stdout is not a terminal, prints a plain line every few seconds."""

    plain_interval_s = 10.0

    def __init__(self, *columns: Any, plain: bool, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.plain = plain
        self._last_line = 0.0

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        """Update the task; off a terminal also print a line every ``plain_interval_s`` and at the end."""
        super().update(task_id, **kwargs)
        if not self.plain:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        if now - self._last_line >= self.plain_interval_s or (task.total and task.completed >= task.total):
            self._last_line = now
            total = f"/{task.total:.0f}" if task.total else ""
            fields = " ".join(str(task.fields.get(k, "")) for k in ("rate", "info")).strip()
            print(f"{task.description}: {task.completed:.0f}{total} {fields}".rstrip(), flush=True)


def make_progress(quiet: bool = False) -> Progress:
    """A progress display with rate, ETA and an info column; plain lines off a terminal, nothing if quiet.

    Tasks need the fields ``rate`` and ``info`` (``add_task(..., rate="", info="")``).
    """
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=False,
        plain=not quiet and not console.is_terminal,
    )


UNKNOWN_INTERVAL = (float("nan"), float("nan"))
"""Shown (as nan) for an interval an older or hand-written metrics.json did not record."""


def pct(value: float) -> str:
    """A fraction in [0, 1] as a percentage with one decimal: 0.125 -> '12.5%'."""
    return f"{100 * value:.1f}%"


def success_text(result: EvalResult) -> str:
    """'25.0% [10.0%, 50.0%] over 8 episodes' from one evaluation."""
    if not result.success_reported:  # e.g. locomotion: the env has no notion of success
        score = result.normalized_score
        if score is not None and result.normalized_score_ci95 is not None:
            low, high = result.normalized_score_ci95
            return f"n/a (normalised score {score:.1f} [{low:.1f}, {high:.1f}] over {result.episodes} episodes)"
        return f"n/a (mean return {result.mean_return:.1f} over {result.episodes} episodes)"
    low, high = result.success_ci95 or UNKNOWN_INTERVAL
    text = f"{pct(result.success_rate)} [{pct(low)}, {pct(high)}] over {result.episodes} episodes"
    if result.normalized_score is not None:
        text += f", normalised score {result.normalized_score:.1f}"
    return text


def runtime_text(runtime: dict[str, Any] | None) -> str:
    """One line on how the update runs: threads (and whether they adapt) and eager or compiled."""
    if not runtime:
        return ""
    threads, compiled = runtime["threads"], runtime["compile"]
    each = ", stepping the seeds side by side" if threads.get("per_seed") else ""
    adapt = ", fewer while other processes are busy" if threads["adaptive"] else ""
    text = f"[dim]{threads['threads']} CPU thread(s) of {threads['usable_cores']} usable{each}{adapt}; update "
    if compiled["mode"]:
        text += f"compiled ({compiled['mode']}) in {compiled['seconds']:.1f} s"
    else:
        text += "eager" + (f" ({compiled['fallback']})" if compiled.get("fallback") else "")
    if (matmul := runtime.get("matmul")) and matmul["how"] != "cuda":
        text += f"; matmuls: {matmul_text(matmul)}"
    return text + " (--set compile=... threads=... matmul_precision=...)[/]"


def matmul_text(matmul: dict[str, Any]) -> str:
    """'oneDNN, 1.18x the default at the same fp32 accuracy (measured)' from a recorded matmul route."""
    if matmul["how"] == "asked":  # route 'bf16': matmul_precision=medium on a CPU with bf16 instructions
        bf16 = ": bf16 products between hidden layers" if matmul["route"] == "bf16" else ""
        return f"precision {matmul['precision']}, as asked{bf16}"
    if matmul["how"].startswith("set by"):
        return f"{matmul['route']} route, {matmul['how']}"
    if matmul["route"] == "oneDNN":
        speedup = matmul["gflops"]["oneDNN"] / matmul["gflops"]["default"]
        return f"oneDNN, {speedup:.2f}x the default at the same fp32 accuracy ({matmul['how']})"
    return f"the default route ({matmul['how']})"


def lineage_text(lineage: dict[str, Any]) -> str:
    """'alice/agent@1a2b3c4d5e (step 40,000), online 20,000 env steps, UTD 1' from a lineage record."""
    where = lineage.get("repo_id") or lineage.get("ref", "?")
    where += f"@{str(lineage['commit'])[:10]}" if lineage.get("commit") else ""
    how = (f"online {lineage.get('online_steps', 0):,} env steps, UTD {lineage.get('utd', 1)}"
           + (", balanced" if lineage.get("balanced") else "")
           if lineage.get("method") == "online" else f"offline {lineage.get('steps') or 0:,} steps")
    return f"{where} (step {lineage.get('step', 0):,}), {how}"


class TrainDisplay(TrainObserver):
    """Every hook of a ``TrainObserver``: a progress bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = make_progress(quiet)
        self.task: TaskID | None = None
        self.eval_task: TaskID | None = None
        self.last_success = "-"

    @property
    def bar(self) -> TaskID:
        """The run's progress bar, which ``on_start`` adds."""
        if self.task is None:
            raise RuntimeError("on_start adds the progress bar; no hook may come before it.")
        return self.task

    def __enter__(self) -> TrainDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, info: dict[str, Any]) -> None:
        """Print what is trained where, and add the progress bar."""
        data = info["dataset"]
        if not self.quiet:
            where = (
                f"{data['transitions']:,} transitions in {data['episodes']} episodes"
                if "shards" not in data else
                f"{data['shards']} shards in turn, {data['shard_swap_every']:,} steps each "
                f"({data['transitions']:,} transitions in the one resident now; the next read "
                f"{'in the background' if data['shard_prefetch'] else 'at each swap'})"
            )
            console.print(
                f"Training on [bold]{info['env_id']}[/]: {where}; {info['parameters']:,} parameters; device "
                f"{info['device']}; run folder {info['run_dir']}"
            )
            console.print(runtime_text(info.get("runtime")))
            if info.get("seeds"):
                seeds = info["seeds"]
                console.print(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) in one process, "
                              f"{info['group_update']} update; parameters and it/s are per seed.")
            if info["start_step"]:
                console.print(f"Resuming at step {info['start_step']:,}.")
        self.task = self.progress.add_task(
            "train", total=info["steps"], completed=info["start_step"], rate="", info=""
        )

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Move the bar and show the latest losses and success."""
        info = (
            f"V {metrics['value']:.3g} bc {metrics['bc']:.3g} pi {metrics['policy']:.3g} "
            f"success {self.last_success}"
        )
        self.progress.update(self.bar, completed=step, rate=f"{metrics['steps_per_second']:.1f} it/s", info=info)

    def on_eval_start(self, step: int, episodes: int) -> None:
        """Add a bar for the evaluation's episodes."""
        self.eval_task = self.progress.add_task("eval", total=episodes, rate="", info="")

    def on_eval_episode(self, progress: EpisodeProgress) -> None:
        """Move the evaluation bar; show the running success rate."""
        if self.eval_task is not None:
            self.progress.update(self.eval_task, completed=progress.done, info=f"success {pct(progress.success_rate)}")

    def on_eval(self, step: int, result: EvalResult) -> None:
        """Drop the evaluation bar and print its result."""
        self._end_eval(result)
        if not self.quiet:
            self.progress.console.print(
                f"step {step:,}: success {success_text(result)}, mean return {result.mean_return:.1f}"
            )

    def _end_eval(self, result: EvalResult) -> None:
        """Drop the evaluation bar; keep the result's success for the progress line."""
        if self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None
        self.last_success = pct(result.success_rate) if result.success_reported else (
            f"score {result.normalized_score:.1f}" if result.normalized_score is not None
            else f"return {result.mean_return:.0f}")

    def on_seed_eval(self, seed: int, step: int, result: EvalResult) -> None:
        """One seed's evaluation in a group: as ``on_eval``, naming the seed."""
        self._end_eval(result)
        if not self.quiet:
            self.progress.console.print(
                f"seed {seed}, step {step:,}: success {success_text(result)}, mean return {result.mean_return:.1f}"
            )

    def on_seed_stopped(self, seed: int, message: str) -> None:
        """Say which seed stopped and why; the others go on."""
        self.progress.console.print(f"[yellow]Seed {seed} stopped:[/] {escape(message)} The other seeds go on.")

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Print where the checkpoint went."""
        if not self.quiet:
            self.progress.console.print(f"[dim]checkpoint saved: {path}[/]")


class FinetuneDisplay(TrainDisplay):
    """TrainDisplay for online fine-tuning: the bar counts environment steps and shows gradient
    steps, episodes, the running success of online episodes and the latest losses."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Print the source and where the run goes, and add the progress bar (env steps)."""
        if not self.quiet:
            lineage = info.get("lineage") or {}
            console.print(
                f"Fine-tuning [bold]{lineage.get('ref', '?')}[/] (step {lineage.get('step', '?'):,}) online in "
                f"{info['env_id']}: {info['steps']:,} environment steps, replay buffer starts with "
                f"{info['offline_rows']:,} offline transitions; optimiser {lineage.get('optimizer', '?')}; "
                f"device {info['device']}; run folder {info['run_dir']}"
            )
            console.print(runtime_text(info.get("runtime")))
            if info["start_step"]:
                console.print(f"Resuming at environment step {info['start_step']:,} (episode {info['episodes'] + 1}).")
        self.task = self.progress.add_task(
            "finetune", total=info["steps"], completed=info["start_step"], rate="", info=""
        )

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Move the bar (env steps) and show gradient steps, episodes, online success and losses."""
        online = metrics.get("online_success", float("nan"))
        info = (
            f"grad {int(metrics['grad_step']):,} episodes {int(metrics['episodes'])} online "
            f"{'-' if online != online else pct(online)} V {metrics['value']:.3g} bc {metrics['bc']:.3g} "
            f"eval {self.last_success}"
        )
        self.progress.update(self.bar, completed=step, rate=f"{metrics['steps_per_second']:.1f} it/s", info=info)

    def on_episode(self, step: int, episode: Episode, running_success: float) -> None:
        """Nothing between log rows: the next row shows the episode count and running success."""


def eval_table(report: EvaluationReport, lineage: dict[str, Any] | None = None) -> Table:
    """One row per task of an evaluation report (and a mean row for several tasks).

    ``lineage``: the checkpoint's fine-tuning origin, named in the title when given.
    """
    name = Path(report.checkpoint).name
    origin = f", fine-tuned from {lineage_text(lineage)}" if lineage else ""
    # Light rules and unbroken intervals: the table fits 80 columns without splitting a number.
    table = Table(title=f"{name}: {report.dataset} @ step {report.step:,}{origin}", box=box.SIMPLE_HEAD)
    scored = any(result.normalized_score is not None for result in report.tasks)
    columns = ["task", "success", "95% CI", "mean return", "return 95% CI", "episodes"]
    if scored:  # Minari datasets with D4RL reference returns: 0 random, 100 expert
        columns[5:5] = ["normalised score", "score 95% CI"]
    for column in columns:
        table.add_column(column, justify="right", no_wrap="CI" in column)
    for result in report.tasks:
        low, high = result.success_ci95 or UNKNOWN_INTERVAL
        rlow, rhigh = result.return_ci95 or UNKNOWN_INTERVAL
        reported = result.success_reported
        row = [
            str(result.task),
            pct(result.success_rate) if reported else "n/a",
            f"[{pct(low)}, {pct(high)}]" if reported else "-",
            f"{result.mean_return:.1f}",
            f"[{rlow:.0f}, {rhigh:.0f}]",
            str(result.episodes),
        ]
        if scored:
            score, interval = result.normalized_score, result.normalized_score_ci95 or ("", "")
            row[5:5] = ["" if score is None else f"{score:.1f}",
                        "" if score is None else f"[{interval[0]:.1f}, {interval[1]:.1f}]"]
        table.add_row(*row)
    if len(report.tasks) > 1:
        table.add_row("mean", pct(report.mean_success_rate), *[""] * (len(columns) - 2))
    return table


def stopped_before_training(run_dir: Path, resume: bool) -> NoReturn:
    """Ctrl-C or SIGTERM while the data loaded: say that nothing changed, exit 130."""
    state = f"the run in {run_dir} is as it was" if resume else "nothing was written"
    console.print(f"[yellow]Stopped before the first step[/]; {state}.")
    raise typer.Exit(130)


def print_outcome(outcome: TrainOutcome, run_dir: Path, unit: str) -> None:
    """How a training or fine-tuning run ended: where its checkpoint is, how to resume or evaluate it.

    Raises ``typer.Exit(130)`` after printing the resume command when the run was interrupted.
    """
    if outcome.interrupted:
        console.print(
            f"[yellow]Interrupted at {outcome.step:,} {unit}[/]; checkpoint saved to "
            f"{outcome.last_checkpoint}.\nResume with: [bold]{outcome.resume_command}[/]"
        )
        raise typer.Exit(130)
    console.print(f"Done: {outcome.step:,} {unit}; last checkpoint {outcome.last_checkpoint}.")
    if outcome.last_eval:
        console.print(f"Last evaluation: success {success_text(outcome.last_eval)}.")
    console.print(f"Evaluate it with: rql eval --checkpoint {run_dir}")
