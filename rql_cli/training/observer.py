"""What a training run reports while it runs (``TrainObserver``) and how it ended (``TrainOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rql_cli.results import Episode, EpisodeProgress, EvalResult


class TrainObserver:
    """Hooks a run calls; the defaults do nothing. Override what you want to see.

    ``step`` is the run's own step count: gradient steps offline, environment steps online.
    """

    def on_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: run_dir, device, start_step, steps, env_id, parameters, runtime,
        lineage, and the source's own facts (offline: ``dataset`` statistics; online: ``offline_rows``,
        ``grad_step``, ``episodes``)."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Every log_interval steps: mean losses of the window, steps_per_second, wall_time (s)."""

    def on_eval_start(self, step: int, episodes: int) -> None:
        """Before a periodic evaluation of ``episodes`` episodes."""

    def on_eval_episode(self, progress: EpisodeProgress) -> None:
        """After each evaluation episode (an ``EpisodeCallback``)."""

    def on_eval(self, step: int, result: EvalResult) -> None:
        """After a periodic evaluation."""

    def on_seed_eval(self, seed: int, step: int, result: EvalResult) -> None:
        """After the periodic evaluation of one seed of a group (``--seeds``); by default ``on_eval``."""
        self.on_eval(step, result)

    def on_seed_stopped(self, seed: int, message: str) -> None:
        """A seed of a group stopped on a non-finite loss (``message`` names its last good checkpoint);
        the other seeds go on."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint folder was written."""

    def on_episode(self, step: int, episode: Episode, running_success: float) -> None:
        """Online runs, after each collected episode: env step, the episode, recent success rate."""


@dataclass
class TrainOutcome:
    """How a run ended.

    Attributes:
        run_dir: the run folder.
        step: the run's steps done (gradient steps offline, environment steps online).
        last_checkpoint: the newest checkpoint folder written (or resumed from), None if none.
        interrupted: stopped by Ctrl-C / SIGTERM (a checkpoint of this step was saved).
        last_eval: the last periodic evaluation, None if none ran.
        resume_command: the command that continues the run, when interrupted.
    """

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    interrupted: bool = False
    last_eval: EvalResult | None = None
    resume_command: str | None = None
