"""Loggers a run writes besides its CSV logs and curves.png (``log_to``): TensorBoard and Weights & Biases.

Each takes what metrics.csv and eval.csv get, row by row, and the run's record once at its start.
Both are optional extras, imported when a run asks for them; a missing one is refused before the
first step with the command that installs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from rql_cli.errors import RQLError
from rql_cli.results import EvalResult

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
VIDEO_TAG = "rollout/video"


class RunLogger(Protocol):
    """Where a run's rows go besides its CSVs."""

    def log_record(self, record: dict[str, Any]) -> None: ...
    def log_metrics(self, step: int, row: dict[str, float]) -> None: ...
    def log_eval(self, step: int, result: EvalResult) -> None: ...
    def log_video(self, step: int, video: Path, fps: float) -> None: ...
    def close(self) -> None: ...


def eval_scalars(result: EvalResult) -> dict[str, float]:
    """The numbers of one evaluation a logger plots."""
    scalars = {"eval/success_rate": result.success_rate}
    if result.mean_return is not None:
        scalars["eval/mean_return"] = result.mean_return
    if result.success_ci95:
        scalars.update({"eval/success_low": result.success_ci95[0], "eval/success_high": result.success_ci95[1]})
    if result.normalized_score is not None:
        scalars["eval/normalized_score"] = result.normalized_score
    return scalars


def metric_scalars(row: dict[str, float]) -> dict[str, float]:
    """A metrics.csv row as logger scalars: losses under 'loss/', the rest under 'train/'."""
    losses = {"value", "bc", "policy", "total"}
    return {(f"loss/{k}" if k in losses else f"train/{k}"): float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float))}


class TensorBoardLogger:
    """Event files under ``RUN/tensorboard/`` (torch's SummaryWriter); a resume adds a file beside them."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RQLError('log_to=tensorboard needs TensorBoard: pip install "rql-cli[tensorboard]".') from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def log_record(self, record: dict[str, Any]) -> None:
        self.writer.add_text("run/train_config", f"```\n{json.dumps(record, indent=2)}\n```", 0)

    def log_metrics(self, step: int, row: dict[str, float]) -> None:
        for tag, value in metric_scalars(row).items():
            self.writer.add_scalar(tag, value, step)

    def log_eval(self, step: int, result: EvalResult) -> None:
        for tag, value in eval_scalars(result).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_video(self, step: int, video: Path, fps: float) -> None:
        """A rendered rollout as an animated GIF under ``rollout/video`` (the Images tab plays it)."""
        import imageio.v3 as iio
        import torch

        if importlib.util.find_spec("moviepy") is None:  # add_video only prints when moviepy is missing
            raise RQLError('TensorBoard videos need moviepy 1.x: pip install "rql-cli[tensorboard]".')
        frames = torch.from_numpy(iio.imread(video))  # (T, H, W, 3) uint8
        self.writer.add_video(VIDEO_TAG, frames.permute(0, 3, 1, 2).unsqueeze(0), step, fps=fps)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run in ``RUN/wandb/``, offline unless ``WANDB_MODE`` says otherwise (``wandb sync``
    uploads it later); a resume continues the same W&B run (its id is the run folder's name and a hash).
    The seeds of a group (``rql train --seeds``) and the runs of a sweep share a W&B group named after
    their folder (``logger_group``; a ``WANDB_RUN_GROUP`` the user set stands)."""

    def __init__(self, run_dir: Path, name: str):
        try:
            import wandb
        except ImportError:
            raise RQLError('log_to=wandb needs Weights & Biases: pip install "rql-cli[wandb]".') from None
        (Path(run_dir) / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
        run_id = f"{Path(run_dir).name}-{digest}"
        # create_new: each seed of a group is its own W&B run, open beside the others in one process
        # (wandb's default hands the first run back to every later init).
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rql"), name=name, id=run_id,
                              resume="allow", dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                              reinit="create_new")

    def log_record(self, record: dict[str, Any]) -> None:
        self.run.config.update(record, allow_val_change=True)

    def log_metrics(self, step: int, row: dict[str, float]) -> None:
        self.run.log(metric_scalars(row), step=step)

    def log_eval(self, step: int, result: EvalResult) -> None:
        self.run.log(eval_scalars(result), step=step)

    def log_video(self, step: int, video: Path, fps: float) -> None:
        import wandb

        self.run.log({VIDEO_TAG: wandb.Video(str(video), fps=fps, format=Path(video).suffix.lstrip("."))}, step=step)

    def close(self) -> None:
        self.run.finish()


@contextmanager
def logger_group(name: str) -> Iterator[None]:
    """Loggers opened inside share the group ``name`` (W&B's ``WANDB_RUN_GROUP``, which wandb.init reads);
    one the user set stands. The variable is restored on leaving."""
    before = os.environ.get("WANDB_RUN_GROUP")
    os.environ["WANDB_RUN_GROUP"] = before or name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_RUN_GROUP", None)


def open_loggers(names: list[str], run_dir: Path) -> list[RunLogger]:
    """The loggers ``names`` asks for, writing into ``run_dir``."""
    loggers: list[RunLogger] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir))
        else:
            loggers.append(WandbLogger(run_dir, Path(run_dir).name))
    return loggers


def log_rollout_video(run_dir: Path, step: int, video: Path, fps: float) -> list[str]:
    """Give a rollout video of the checkpoint at ``step`` to the loggers its run logs to (the run's
    ``log_to``); the names of those that took it (none: [])."""
    from rql_cli.io.run_record import read_run_record

    names = read_run_record(run_dir).config.loggers
    for logger in open_loggers(names, run_dir):
        try:
            logger.log_video(step, video, fps)
        finally:
            logger.close()
    return names
