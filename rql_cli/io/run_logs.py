"""A run's CSV logs: ``metrics.csv`` (losses every log_interval steps) and ``eval.csv`` (evaluations)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rql_cli.results import EvalResult

EVAL_COLUMNS = [
    "step", "success_rate", "success_low", "success_high", "mean_return", "episodes", "wall_time",
]
"""eval.csv: one row per periodic evaluation (``step`` is the run's own step count)."""


def eval_row(step: int, result: EvalResult, wall_time: float) -> dict[str, Any]:
    """The eval.csv row of one evaluation at ``step``, ``wall_time`` seconds into the run."""
    low, high = result.success_ci95 or (None, None)
    return dict(
        step=step, success_rate=result.success_rate, success_low=low, success_high=high,
        mean_return=result.mean_return, episodes=result.episodes, wall_time=wall_time,
    )


class CsvLog:
    """Append-only CSV with a fixed header; rows past a resume point can be dropped."""

    def __init__(self, path: Path, columns: list[str]):
        """Open (or create, with its header) the CSV at ``path`` with these ``columns``."""
        self.path = Path(path)
        self.columns = columns
        if not self.path.exists():
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row; missing columns stay empty, floats keep 6 significant digits."""
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(c, "")) for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they are about to be trained again after a resume)."""
        rows = self.read()
        with open(self.path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for row in rows:
                if int(float(row["step"])) <= step:
                    writer.writerow([row.get(c, "") for c in self.columns])

    def read(self) -> list[dict[str, str]]:
        """Every row as a dict of strings, oldest first."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


def logged_wall_time(logs: list[CsvLog]) -> float:
    """The largest ``wall_time`` (s) in the last rows of these logs: a resumed run's clock goes on from it.

    0.0 when none has a row with a ``wall_time``; so a resumed run's ``wall_time`` keeps counting
    training seconds from where its checkpoint left off (the time it spent stopped is not counted).
    """
    times = []
    for log in logs:
        rows = log.read()
        if rows and rows[-1].get("wall_time"):
            times.append(float(rows[-1]["wall_time"]))
    return max(times, default=0.0)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
