"""From run folders to scores: which runs there are, what each scored, and how they group.

A path given to ``rql report`` may be a run folder, a seed group (``rql train --seeds``), a sweep, or
any folder holding such folders at any depth. A run's score is the success rate of its last periodic
evaluation (``eval.csv``); its curve is every evaluation. Runs group by what differs between them:
the environment family and every config field that is not the seed or a machine setting.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.errors import RQLError
from rql_cli.io.run_layout import RUN_FILE, is_run_dir
from rql_cli.io.run_record import read_run_record
from rql_cli.names import parse_task_name

MACHINE_FIELDS = frozenset({
    "seed", "device", "threads", "compile", "group_update", "eval_envs", "dataset_on_device", "shard_prefetch",
    "log_interval", "keep_checkpoints", "save_interval", "eval_interval",
})
"""Config fields that say how a run used a machine, not what was trained: never a grouping."""


@dataclass
class RunScore:
    """One run folder's evaluations.

    Attributes:
        run_dir: the folder.  dataset, env_id: what it trained on (env_id names the task).
        family: the environment family, e.g. 'cube-single'.  seed: its seed.
        settings: its config, every field by name.
        curve: ``(step, success rate)`` of each periodic evaluation, oldest first.
    """

    run_dir: Path
    dataset: str
    env_id: str
    family: str
    seed: int
    settings: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final(self) -> float:
        """Success rate at the last evaluation."""
        return self.curve[-1][1]

    @property
    def final_step(self) -> int:
        return self.curve[-1][0]


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run folder at or under ``paths`` (each once, sorted); RQLError for a path that holds none."""
    found: set[Path] = set()
    for path in paths:
        if not Path(path).exists():
            raise RQLError(f"{path} does not exist; give run folders, seed groups or sweep folders.")
        here = {Path(path)} if is_run_dir(Path(path)) else {p.parent for p in Path(path).rglob(RUN_FILE)
                                                            if is_run_dir(p.parent)}
        if not here:
            raise RQLError(f"{path} holds no run folder (a folder with {RUN_FILE} and checkpoints/).")
        found |= here
    return sorted(found)


def read_run(run_dir: Path) -> RunScore:
    """The record and evaluations of one run folder (an empty curve when it was never evaluated)."""
    record = read_run_record(run_dir)
    curve = []
    eval_csv = Path(run_dir) / "eval.csv"
    if eval_csv.is_file():
        with open(eval_csv, newline="") as handle:
            curve = [(int(float(row["step"])), float(row["success_rate"])) for row in csv.DictReader(handle)]
    name = parse_task_name(record.env_id)
    settings = record.config.flat()
    return RunScore(run_dir=Path(run_dir), dataset=record.dataset, env_id=record.env_id, family=name.family,
                    seed=int(settings["seed"]), settings=settings, curve=curve)


def collect(paths: list[Path]) -> tuple[list[RunScore], list[Path]]:
    """(the evaluated runs under ``paths``, the run folders without any evaluation)."""
    runs = [read_run(d) for d in find_run_dirs(paths)]
    return [r for r in runs if r.curve], [r.run_dir for r in runs if not r.curve]


def varying_fields(runs: list[RunScore]) -> list[str]:
    """Config fields (not machine settings) whose value differs between ``runs``, sorted."""
    names = sorted({k for r in runs for k in r.settings} - MACHINE_FIELDS)
    return [n for n in names if len({repr(r.settings.get(n)) for r in runs}) > 1]


def group_label(run: RunScore, fields: list[str]) -> str:
    """'cube-single alpha=3' from the run's family and its values of ``fields``."""
    return " ".join([run.family, *(f"{n}={run.settings.get(n)}" for n in fields)])


def by_group(runs: list[RunScore]) -> dict[str, dict[str, list[RunScore]]]:
    """Runs by group label (family and varying fields), then by task (env id), in sorted order."""
    fields = varying_fields(runs)
    groups: dict[str, dict[str, list[RunScore]]] = {}
    for run in sorted(runs, key=lambda r: (group_label(r, fields), r.env_id, r.seed)):
        groups.setdefault(group_label(run, fields), {}).setdefault(run.env_id, []).append(run)
    return groups
