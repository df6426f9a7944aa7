"""The files of a run folder besides checkpoints: the run record, CSV logs and the curve picture.

    RUN_DIR/
      train_config.json    the run: dataset and where it lives, env id, dims, the typed config,
                           where it started from, and what changed at which step
      metrics.csv          training losses every log_interval steps
      eval.csv             one row per evaluation
      curves.png           learning curves, redrawn after each evaluation
      checkpoints/step_00010000/   checkpoint folders (see checkpoint.py)

The run record has one schema (``RunRecord``), one writer and one reader. Run folders of format 1
kept the record in ``config.json`` (the name a checkpoint's own file has); the reader still takes it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.config import RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.atomic import write_json_atomic
from rql_cli.io.checkpoint_files import CONFIG_FILE, TRAIN_STATE_FILE, VELOCITY_FILE, is_checkpoint_folder
from rql_cli.results import EvalResult

RUN_FILE = "train_config.json"
LEGACY_RUN_FILE = "config.json"  # format 1 run folders
RUN_FORMAT = 3
CHECKPOINTS = "checkpoints"
CURVES_FILE = "curves.png"
EVAL_COLUMNS = [
    "step", "success_rate", "success_low", "success_high", "mean_return", "episodes", "wall_time",
]
"""eval.csv: one row per periodic evaluation (``step`` is the run's own step count)."""


@dataclass
class RunRecord:
    """What a run trains, on what, and its lineage (``train_config.json``).

    Attributes:
        dataset: dataset file stem or name as given, e.g. ``'cube-single-play-v0'``.
        data: where the files live: ``{'dataset_dir', 'dataset_path', 'task'}`` (each may be None).
        env_id: ogbench singletask name the rewards were relabelled for.
        obs_dim, action_dim: sizes of one observation and one action.
        config: the run's config (the agent's under ``agent``) as it trains now; format 2 records held
            the same fields flat, which the reader still takes.
        versions: rql, torch and ogbench versions that started the run.
        parent: for a fine-tuning run, its lineage (``CheckpointMeta.lineage``: the source REF, what it
            resolved to, its step, the method); None for a run from scratch.
        finetune: for a fine-tuning run, its settings (online steps, UTD, balanced, offline data);
            ``rql finetune --resume`` reads them back.
        history: ``{'step', 'event', 'changes'}`` entries: when the run started or resumed, and the
            config fields that changed then (``{field: [old, new]}``).
    """

    dataset: str
    data: dict[str, Any]
    env_id: str
    obs_dim: int
    action_dim: int
    config: RunConfig
    versions: dict[str, str] = field(default_factory=dict)
    parent: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The train_config.json payload."""
        payload = asdict(self)
        payload["config"] = self.config.to_dict()
        return {"format_version": RUN_FORMAT, **payload}

    @classmethod
    def from_dict(cls, payload: Any, source: str) -> RunRecord:
        """Parse either format of the run record; RQLError names ``source`` when it is broken."""
        if not isinstance(payload, dict):
            raise RQLError(f"{source} must hold a JSON object, not a {type(payload).__name__}.")
        try:
            config, _ = RunConfig.from_dict(payload["config"], strict=False)
            return cls(
                dataset=str(payload["dataset"]),
                data=dict(payload.get("data") or {}),
                env_id=str(payload["env_id"]),
                obs_dim=int(payload["obs_dim"]),
                action_dim=int(payload["action_dim"]),
                config=config,
                versions=dict(payload.get("versions") or {}),
                parent=payload.get("parent"),
                finetune=payload.get("finetune"),
                history=list(payload.get("history") or []),
            )
        except KeyError as error:
            raise RQLError(f"{source} lacks the field {error}.") from None
        except (RQLError, TypeError, ValueError) as error:
            raise RQLError(f"{source} is not a valid run record: {error}") from None


@dataclass
class RunOrigin:
    """Where a fine-tuning run starts from.

    Attributes:
        folder: the source checkpoint folder (its train state, if it has one, continues Adam).
        lineage: what the run records about it (``CheckpointMeta.lineage``).
        settings: the fine-tuning settings (``RunRecord.finetune``).
        agent, meta: the source, already loaded (``io.resolve.load_checkpoint``), so a fine-tune
            copies its weights instead of reading the files again.
    """

    folder: Path
    lineage: dict[str, Any]
    settings: dict[str, Any]
    agent: Any
    meta: Any


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``RUN_DIR/checkpoints/step_00001234``."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are skipped).

    Until the run starts again, step N's checkpoint may be its ``.step_N.old`` (``replaced_by_a_dead_write``).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        name = (replaced_by_a_dead_write(p) or p).name
        if p.is_dir() and name.startswith("step_") and (p / CONFIG_FILE).is_file():
            found.append((int(name.split("_")[1]), p))
    return [p for _, p in sorted(found)]


def replaced_by_a_dead_write(folder: Path) -> Path | None:
    """The ``step_N`` that a ``.step_N.old`` folder is the whole checkpoint of, when ``step_N`` is missing.

    ``save_checkpoint`` renames a whole ``step_N`` to ``.old`` before renaming the new ``.tmp`` in, and
    deletes an ``.old`` only while ``step_N`` exists: an ``.old`` without its ``step_N`` is what a write
    that died between the two renames was replacing, whole. None for any other folder.
    """
    name = folder.name
    if not (name.startswith(".step_") and name.endswith(".old") and folder.is_dir()):
        return None
    replaced = folder.with_name(name[1:-len(".old")])
    return None if replaced.exists() else replaced


def latest_resumable(run_dir: Path, files: tuple[str, ...] = ()) -> Path:
    """The run's newest checkpoint with a train state (and ``files``), which ``--resume`` continues from."""
    found = [p for p in list_checkpoints(run_dir)
             if all((p / name).is_file() for name in (TRAIN_STATE_FILE, *files))]
    if not found:
        needs = " and ".join(["a training state", *files])
        raise RQLError(f"{run_dir} has no checkpoint with {needs} to resume from.")
    return found[-1]


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete checkpoints beyond the newest ``keep`` and the best evaluated one; returns what went.

    ``keep`` 0 keeps everything. The best is the highest mean success rate in metrics.json (the
    newest of equals); a checkpoint with an unreadable metrics.json is kept, never guessed about.
    """
    from rql_cli.io.metrics import read_metrics

    checkpoints = list_checkpoints(run_dir)
    if keep <= 0 or len(checkpoints) <= keep:
        return []
    kept = set(checkpoints[-keep:])
    best: tuple[float, int, Path] | None = None
    for index, folder in enumerate(checkpoints):
        try:
            report = read_metrics(folder)
        except RQLError:
            kept.add(folder)
            continue
        if report is not None and report.tasks and (best is None or (report.mean_success_rate, index) > best[:2]):
            best = (report.mean_success_rate, index, folder)
    if best is not None:
        kept.add(best[2])
    removed = [folder for folder in checkpoints if folder not in kept]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def remove_unfinished_writes(run_dir: Path) -> list[Path]:
    """Finish what a crashed checkpoint write left: put back a replaced checkpoint, delete the rest.

    A ``.step_N.old`` without its ``step_N`` is renamed back to ``step_N`` (``replaced_by_a_dead_write``:
    it is whole; the new ``.tmp`` may be torn and nothing on disk tells, so it is never finished). Every
    other ``.step_*.tmp`` / ``.old`` is deleted; returns those. Call only while holding the run's lock:
    a live writer may be between its renames.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    for folder in list(root.iterdir()):
        replaced = replaced_by_a_dead_write(folder)
        if replaced is not None:
            os.replace(folder, replaced)
    leftovers = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".step_")
                 and p.name.endswith((".tmp", ".old"))]
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return leftovers


def check_disk_for_checkpoints(run_dir: Path, checkpoint_bytes: int, count: int) -> None:
    """Refuse a run whose ``count`` checkpoints of ``checkpoint_bytes`` each cannot fit on its disk."""
    needed = checkpoint_bytes * count
    free = shutil.disk_usage(Path(run_dir)).free
    if needed > free:
        raise RQLError(
            f"The run's checkpoints need about {needed / 2**20:,.0f} MiB ({count} of "
            f"{checkpoint_bytes / 2**20:,.1f} MiB) but {run_dir} has only {free / 2**20:,.0f} MiB free. "
            "Free some space, keep fewer checkpoints (--set keep_checkpoints=N) or choose another --out."
        )


def is_run_dir(path: Path) -> bool:
    """A folder with ``checkpoints/`` and a run record (``train_config.json``, or format 1's)."""
    path = Path(path)
    has_record = (path / RUN_FILE).is_file() or (
        (path / LEGACY_RUN_FILE).is_file() and not (path / VELOCITY_FILE).exists()
    )
    return has_record and (path / CHECKPOINTS).is_dir()


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse a new run's folder that would overwrite something, or that cannot be written.

    A file, a checkpoint folder or any non-empty folder is refused, naming it; so is a folder that
    cannot be made (checked with a temporary file in its nearest existing ancestor, so a refused run
    leaves nothing behind).
    """
    import tempfile

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RQLError(f"--out {run_dir} is a file; a run needs a folder. Choose another --out.")
    if (run_dir / VELOCITY_FILE).exists():
        raise RQLError(f"--out {run_dir} is a checkpoint folder; a new run would overwrite it. Choose another --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RQLError(f"--out {run_dir} already exists and is not empty; a new run never writes into it. Choose another --out.")
    ancestor = run_dir if run_dir.is_dir() else next(p for p in run_dir.absolute().parents if p.exists())
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise RQLError(f"Cannot write the run folder {run_dir}: {error.strerror or error}. Choose another --out.") from None


LOCK_FILE = ".lock"
"""A run folder's lock while a process trains in it: ``{"pid", "host"}`` of that process."""


class RunLock:
    """Refuse a second process on one run folder (two resumes would truncate each other's logs).

    The lock is ``RUN/.lock``, created atomically with this process's pid and host; a lock whose
    process is gone (same host, pid not running) is stale and taken over. Entering takes it when the
    folder exists (a resume is refused before any data loads); a new run's folder is made, and locked,
    by :meth:`make_folder` once its inputs are checked, so a refused command leaves nothing behind.
    Leaving removes the lock, and the folder too when this lock made it and nothing else was written.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._created_folder = False
        self._held = False

    def __enter__(self) -> "RunLock":
        if self.run_dir.is_dir():
            self._acquire()
        return self

    def make_folder(self) -> None:
        """Make the run folder (and its parents) and hold its lock: call before the run's first write."""
        if self._held:  # entering found the folder (a resume) and locked it
            return
        self._created_folder = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()

    def _acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._refuse_unless_stale(me["host"])
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as out:
                json.dump(me, out)
            self._held = True
            return
        raise RQLError(f"Could not lock {self.run_dir}: another process keeps taking {self.path}.")

    def _refuse_unless_stale(self, host: str) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, holder_host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # unreadable: a lock torn by a crash, stale
        if holder_host != host:
            raise RQLError(
                f"{self.run_dir} is in use by an rql process on {holder_host} (pid {pid}). Wait for it, or "
                f"delete {self.path} if that process is gone."
            )
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # its process is gone
        except PermissionError:
            pass  # alive, another user's
        raise RQLError(
            f"{self.run_dir} is in use by another rql process (pid {pid}): two runs in one folder would "
            f"overwrite each other's checkpoints and logs. Wait for it to finish, or stop it with "
            f"`kill -INT {pid}` (it saves a checkpoint), then resume."
        )

    def __exit__(self, *exc_info: object) -> None:
        if not self._held:
            return
        self.path.unlink(missing_ok=True)
        self._held = False
        if self._created_folder and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()


def check_resumable(run_dir: Path) -> None:
    """Refuse --resume of something that is not a run folder, saying what it is and what to pass."""
    run_dir = Path(run_dir)
    if is_checkpoint_folder(run_dir):
        above = run_dir.parent.parent if run_dir.parent.name == CHECKPOINTS else None
        hint = f" Pass the run folder above it: `--resume {above}`." if above else ""
        raise RQLError(f"{run_dir} is a checkpoint folder, not a run folder.{hint}")
    if not is_run_dir(run_dir):
        raise RQLError(
            f"{run_dir} is not a run folder (one made by `rql train --out`, with {RUN_FILE} and {CHECKPOINTS}/)."
        )


def write_run_record(run_dir: Path, record: RunRecord) -> Path:
    """Write ``record`` as ``RUN_DIR/train_config.json`` atomically (the folder is made if missing)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / RUN_FILE
    write_json_atomic(path, record.to_dict())
    return path


def read_run_record(run_dir: Path) -> RunRecord:
    """The run record of ``run_dir`` (format 2's train_config.json, else format 1's config.json)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file() and (run_dir / LEGACY_RUN_FILE).is_file():
        path = run_dir / LEGACY_RUN_FILE
    if not path.is_file():
        raise RQLError(f"{run_dir} is not a run folder: it has no {RUN_FILE}.")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RQLError(f"{path} is not valid JSON: {error}.") from None
    return RunRecord.from_dict(payload, source=str(path))


def record_of_checkpoint(checkpoint_folder: Path) -> RunRecord | None:
    """The record of the run folder holding ``checkpoint_folder`` (``RUN/checkpoints/step_N``), if any.

    None for a bundled, pulled or copied checkpoint, or a run record that cannot be read.
    """
    run_dir = Path(checkpoint_folder).parent.parent
    if not is_run_dir(run_dir):
        return None
    try:
        return read_run_record(run_dir)
    except RQLError:
        return None


def recorded_data_location(checkpoint_folder: Path, dataset: str) -> tuple[Path | None, Path | None]:
    """(dataset_dir, dataset_path) where the run holding ``checkpoint_folder`` found ``dataset``.

    A checkpoint inside a run folder was trained on files its run record names; fine-tuning it online
    replays them unless told otherwise. (None, None) for a checkpoint outside a run folder, a record
    of another dataset, or files no longer where they were.
    """
    record = record_of_checkpoint(checkpoint_folder)
    if record is None or record.dataset != dataset:
        return None, None
    path, folder = record.data.get("dataset_path"), record.data.get("dataset_dir")
    if path and Path(path).exists():
        return None, Path(path)
    if folder and Path(folder).is_dir():
        return Path(folder), None
    return None, None


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, run_dir: Path) -> Path:
    path = Path(run_dir) / CURVES_FILE
    tmp = path.with_name(".curves.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    _pyplot().close(fig)
    tmp.replace(path)
    return path


def _plot_evaluations(axis: Any, eval_rows: list[dict[str, str]], label: str | None = None) -> None:
    """Success (%) per evaluation with its Wilson 95% interval as error bars (visible for one point too)."""
    if not eval_rows:
        return
    steps = [int(r["step"]) for r in eval_rows]
    rates = [100 * float(r["success_rate"]) for r in eval_rows]
    below = [rate - 100 * float(r["success_low"]) for rate, r in zip(rates, eval_rows)]
    above = [100 * float(r["success_high"]) - rate for rate, r in zip(rates, eval_rows)]
    axis.errorbar(steps, rates, yerr=[below, above], marker="o", capsize=4, label=label)
    if len(steps) > 1:
        axis.fill_between(steps, [r - b for r, b in zip(rates, below)], [r + a for r, a in zip(rates, above)],
                          alpha=0.15)


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
