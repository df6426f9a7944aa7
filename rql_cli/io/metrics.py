"""A checkpoint's ``metrics.json``: its one schema, its one reader and its one writer.

    {
      "format_version": 2,
      "checkpoint": "runs/cube/checkpoints/step_00040000",   where it was measured
      "dataset": "cube-single-play-v0",
      "step": 40000,
      "device": "cpu",
      "mean_success_rate": 0.14,                             mean over the tasks below
      "tasks": [ {one EvalResult per task (its to_dict): success_rate, success_ci95, episodes, seeds, ...} ]
    }

Training writes it after each periodic evaluation (one task) and ``rql eval --save`` after a
measurement (one or more tasks). Format 1 training checkpoints held a single result dict instead;
``read_metrics`` migrates that layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.errors import CheckpointError
from rql_cli.io.atomic import write_json_atomic
from rql_cli.results import EvalResult

METRICS_FILE = "metrics.json"
METRICS_FORMAT = 2


@dataclass
class EvaluationReport:
    """Per-task evaluation results of one checkpoint.

    Attributes:
        checkpoint: the folder that was measured (as a string).
        dataset: its dataset file stem, e.g. ``'cube-single-play-v0'``.
        step: its training step (gradient steps).
        device: the torch device the policy ran on.
        tasks: one EvalResult per task (read from a file: with at least ``success_rate`` in [0, 1]).
    """

    checkpoint: str
    dataset: str
    step: int
    device: str
    tasks: list[EvalResult] = field(default_factory=list)

    @property
    def mean_success_rate(self) -> float:
        """Mean success rate over the tasks, in [0, 1] (0 when there are none)."""
        return sum(t.success_rate for t in self.tasks) / max(len(self.tasks), 1)

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json payload (``format_version`` included)."""
        return dict(
            format_version=METRICS_FORMAT,
            checkpoint=self.checkpoint,
            dataset=self.dataset,
            step=self.step,
            device=self.device,
            mean_success_rate=self.mean_success_rate,
            tasks=[t.to_dict() for t in self.tasks],
        )

    @classmethod
    def from_dict(cls, payload: Any, source: str = METRICS_FILE) -> EvaluationReport:
        """Parse a metrics.json payload of either layout; CheckpointError names ``source`` if broken."""
        if not isinstance(payload, dict):
            raise CheckpointError(f"{source} does not hold an evaluation result (a JSON object).")
        if "tasks" not in payload and "success_rate" in payload:  # format 1: one training result
            payload = dict(
                checkpoint="", dataset=payload.get("dataset_name", ""), step=-1, device="",
                tasks=[payload],
            )
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("success_rate"), (int, float)) for t in tasks
        ):
            raise CheckpointError(
                f"{source} has no list of task results with a numeric success_rate each."
            )
        try:
            results = [EvalResult.from_dict(t) for t in tasks]
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"{source} has a task result whose interval is not a pair of numbers ({error})."
            ) from None
        return cls(
            checkpoint=str(payload.get("checkpoint", "")),
            dataset=str(payload.get("dataset", "")),
            step=int(payload.get("step", -1)),
            device=str(payload.get("device", "")),
            tasks=results,
        )


def read_metrics(folder: Path) -> EvaluationReport | None:
    """The evaluation saved in ``folder/metrics.json``; None when the folder has none.

    A file that is not valid JSON or not an evaluation raises CheckpointError naming the file and
    how to measure the checkpoint again.
    """
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}). Measure the checkpoint again with "
            f"`rql eval --checkpoint {folder} --save`, or delete the file."
        ) from None
    return EvaluationReport.from_dict(payload, source=str(path))


def write_metrics(folder: Path, report: EvaluationReport) -> Path:
    """Write ``report`` as ``folder/metrics.json`` atomically; returns the file's path."""
    path = Path(folder) / METRICS_FILE
    write_json_atomic(path, report.to_dict())
    return path
