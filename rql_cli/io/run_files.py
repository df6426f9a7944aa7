"""The files of a run folder besides checkpoints: the run record, CSV logs and the curve picture.

    RUN_DIR/
      config.json          the run: dataset and where it lives, env id, dims, the typed config
      metrics.csv          training losses every log_interval steps
      eval.csv             one row per evaluation
      curves.png           learning curves, redrawn after each evaluation
      checkpoints/step_00010000/   checkpoint folders (see checkpoint.py)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rql_cli.errors import RQLError
from rql_cli.io.checkpoint import write_json_atomic

RUN_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are skipped)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and (p / "config.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def is_run_dir(path: Path) -> bool:
    return (Path(path) / RUN_FILE).is_file() and (Path(path) / CHECKPOINTS).is_dir()


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(run_dir) / RUN_FILE, record)


def read_run_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RQLError(f"{run_dir} is not a run folder: it has no {RUN_FILE}.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RQLError(f"{path} is not valid JSON: {error}.") from error


class CsvLog:
    """Append-only CSV with a fixed header; rows past a resume point can be dropped."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        if not self.path.exists():
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
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
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def plot_curves(run_dir: Path, metrics_rows: list[dict[str, str]], eval_rows: list[dict[str, str]]) -> Path:
    """Draw success rate (with its 95% interval) and the losses against gradient steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if eval_rows:
        steps = [int(r["step"]) for r in eval_rows]
        rate = [100 * float(r["success_rate"]) for r in eval_rows]
        low = [100 * float(r["success_low"]) for r in eval_rows]
        high = [100 * float(r["success_high"]) for r in eval_rows]
        axes[0].plot(steps, rate, marker="o")
        axes[0].fill_between(steps, low, high, alpha=0.25)
    axes[0].set(title="success rate (%), 95% CI", xlabel="gradient step", ylim=(-2, 102))
    if metrics_rows:
        steps = [int(r["step"]) for r in metrics_rows]
        axes[1].plot(steps, [float(r["value"]) for r in metrics_rows], label="value")
        axes[1].plot(steps, [float(r["bc"]) for r in metrics_rows], label="bc")
        axes[1].set_yscale("log")
        axes[1].legend()
        axes[2].plot(steps, [float(r["value_mean"]) for r in metrics_rows], label="mean V")
        axes[2].plot(steps, [float(r["target_mean"]) for r in metrics_rows], label="mean target")
        axes[2].legend()
    axes[1].set(title="losses", xlabel="gradient step")
    axes[2].set(title="values", xlabel="gradient step")
    fig.tight_layout()
    path = Path(run_dir) / "curves.png"
    tmp = path.with_name(".curves.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
