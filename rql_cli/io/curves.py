"""A run's ``curves.png``: success with its interval, losses and values against steps (matplotlib, Agg).

matplotlib is imported when a figure is drawn (``_pyplot``), not with the training loop.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from rql_cli.io.run_layout import CURVES_FILE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Figure, run_dir: Path) -> Path:
    path = Path(run_dir) / CURVES_FILE
    tmp = path.with_name(".curves.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    _pyplot().close(fig)
    tmp.replace(path)
    return path


def _plot_evaluations(axis: Axes, eval_rows: list[dict[str, str]], label: str | None = None) -> None:
    """Success (%) per evaluation with its Wilson 95% interval as error bars (visible for one point too)."""
    if not eval_rows:
        return
    steps = [int(r["step"]) for r in eval_rows]
    rates = [100 * float(r["success_rate"]) for r in eval_rows]
    below = [rate - 100 * float(r["success_low"]) for rate, r in zip(rates, eval_rows, strict=True)]
    above = [100 * float(r["success_high"]) - rate for rate, r in zip(rates, eval_rows, strict=True)]
    axis.errorbar(steps, rates, yerr=[below, above], marker="o", capsize=4, label=label)
    if len(steps) > 1:
        lows = [r - b for r, b in zip(rates, below, strict=True)]
        highs = [r + a for r, a in zip(rates, above, strict=True)]
        axis.fill_between(steps, lows, highs, alpha=0.15)


def plot_curves(
    run_dir: Path, metrics_rows: list[dict[str, str]], eval_rows: list[dict[str, str]], title: str | None = None
) -> Path:
    """Draw success rate (with its 95% interval), the losses and the values on one gradient-step axis.

    Four panels share the x axis from step 0 to the run's last logged step, so a single evaluation
    sits where it belongs on the run; ``title`` (default: the run folder's name) heads the figure.
    """
    fig, axes = _pyplot().subplots(1, 4, figsize=(16, 3.8), sharex=True)
    _plot_evaluations(axes[0], eval_rows)
    axes[0].set(title="success rate (%), Wilson 95% CI", ylim=(-2, 102))
    if metrics_rows:
        steps = [int(r["step"]) for r in metrics_rows]
        for key in ("value", "bc"):
            axes[1].plot(steps, [float(r[key]) for r in metrics_rows], label=f"{key} loss")
        axes[1].set_yscale("log")
        axes[1].legend()
        axes[2].plot(steps, [float(r["policy"]) for r in metrics_rows], color="tab:green")
        axes[3].plot(steps, [float(r["value_mean"]) for r in metrics_rows], label="mean V")
        axes[3].plot(steps, [float(r["target_mean"]) for r in metrics_rows], label="mean target")
        axes[3].legend()
    axes[1].set(title="value and BC losses")
    axes[2].set(title="policy loss (-V one Euler step ahead)")
    axes[3].set(title="values")
    last = max([int(r["step"]) for r in [*metrics_rows, *eval_rows]], default=1)
    for axis in axes:
        axis.set(xlabel="gradient step", xlim=(0, last * 1.03))
    fig.suptitle(title or run_dir.name)
    return _save_figure(fig, run_dir)


def plot_online_curves(
    run_dir: Path, online_rows: list[dict[str, str]], eval_rows: list[dict[str, str]], window: int = 20
) -> Path:
    """Draw success against environment steps: online episodes (running mean) and evaluations (95% CI)."""
    fig, axis = _pyplot().subplots(1, 1, figsize=(7, 3.6))
    if online_rows:
        successes = [100 * float(r["success"]) for r in online_rows]
        running = [sum(successes[max(0, i - window + 1): i + 1]) / len(successes[max(0, i - window + 1): i + 1])
                   for i in range(len(successes))]
        axis.plot([int(r["step"]) for r in online_rows], running, label=f"online (last {window} episodes)")
    _plot_evaluations(axis, eval_rows, label="evaluation (EMA policy)")
    axis.set(title="success rate (%)", xlabel="environment step", ylim=(-2, 102))
    if axis.get_legend_handles_labels()[0]:  # nothing to label before the first episode ends
        axis.legend()
    return _save_figure(fig, run_dir)
