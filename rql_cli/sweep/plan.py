"""A sweep's plan: what to train (``SweepSpec``), expanded into runs named by their coordinates.

``SWEEP/sweep.json`` holds the spec and the runs; the same command again finds the same plan and
continues it. Each run is an ordinary run folder ``SWEEP/<dataset>_task<T>_<field>=<value>..._seed<S>``
that every other command takes; with ``seeds_together`` a grid point's seeds train as one seed group
(``rql train --seeds``) in ``SWEEP/<dataset>_task<T>_<field>=<value>.../seed_<S>``.
"""

from __future__ import annotations

import itertools
import json
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.config import ConfigError, RunConfig, canonical_field_name, field_names, parse_seeds, parse_set_option
from rql_cli.errors import RQLError
from rql_cli.io.atomic import read_json, write_json_atomic
from rql_cli.io.group_record import seed_dir
from rql_cli.names import parse_task_name
from rql_cli.presets import make_config

PLAN_FILE = "sweep.json"
PLAN_FORMAT = 1


@dataclass
class SweepSpec:
    """What a sweep trains: every dataset x task x grid point x seed, with ``fixed`` overrides for all, the
    ``scheduler`` that may stop runs early (``{'name': 'asha', ...}``; None: every run to its end), and
    whether each grid point's seeds train together as one seed group (``seeds_together``)."""

    datasets: list[str]
    seeds: list[int]
    tasks: list[int | None] = field(default_factory=lambda: [None])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    dataset_dir: str | None = None
    scheduler: dict[str, Any] | None = None
    seeds_together: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedRun:
    """One run of a sweep: its folder name (relative to the sweep folder), dataset, task, seed, config
    overrides, and the seed group it trains in (its grid point's folder name; None: a run of its own)."""

    name: str
    dataset: str
    task: int | None
    seed: int
    overrides: dict[str, Any]
    group: str | None = None

    def config(self) -> RunConfig:
        """The run's config: the task's preset, then the overrides (checked)."""
        return make_config(parse_task_name(self.dataset), None, self.overrides)


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``--set field=v1,v2,...`` -> (field, values): one run per value. A list field's values are
    bracketed (``value_hidden_dims=[256,256],[512,512]``); without brackets its commas make one list."""
    if "=" not in text:
        raise ConfigError(f"--set expects field=value[,value...], got '{text}' (e.g. --set alpha=3,10).")
    key, raw = text.split("=", 1)
    name = canonical_field_name(key.strip())
    if name not in field_names():
        parse_set_option(text)  # raises the unknown-field message with suggestions
    is_list = typing.get_origin(typing.get_type_hints(RunConfig).get(name)) is list or _agent_list(name)
    parts = _top_level_parts(raw) if not is_list or raw.strip().startswith("[") else [raw]
    if not parts:
        raise ConfigError(f"--set {key}= gives no value; write --set {key}=VALUE[,VALUE...].")
    return name, [parse_set_option(f"{key}={part}")[1] for part in parts]


def _agent_list(name: str) -> bool:
    from rql_cli.config import RQLConfig

    return typing.get_origin(typing.get_type_hints(RQLConfig).get(name)) is list


def _top_level_parts(text: str) -> list[str]:
    """Split on commas outside brackets: '3,10' -> ['3', '10']; '[1,2],[3]' -> ['[1,2]', '[3]']."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_tasks(text: str | None) -> list[int | None]:
    """``--task`` of a sweep: '1-5', '1,3' or '2'; None: each dataset's own task."""
    if text is None:
        return [None]
    tasks: list[int | None] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise RQLError(f"--task takes task numbers and ranges such as 1-5 or 1,3; '{part}' is neither.")
        if dash and int(last) < int(first):
            raise RQLError(f"--task range {part} is empty; write {last}-{first}.")
        tasks.extend(range(int(first), int(last if dash else first) + 1))
    return tasks


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of ``spec``, each config built and checked now (so a bad value fails before any run)."""
    if not spec.datasets or not spec.seeds:
        raise RQLError("A sweep needs at least one dataset and one seed.")
    runs = []
    fields = sorted(spec.grid)
    for dataset, task, values in itertools.product(spec.datasets, spec.tasks, itertools.product(
            *(spec.grid[f] for f in fields))):
        point = dict(zip(fields, values, strict=True))
        task_name = parse_task_name(dataset)
        if task is not None:
            task_name.resolve_task(task)
        point_name = "_".join([dataset.replace(":", "-").replace("/", "-"), *([f"task{task}"] if task else []),
                               *(f"{f}={_short(v)}" for f, v in point.items())])
        for seed in spec.seeds:
            overrides = {**spec.fixed, **point, "seed": seed}
            if spec.seeds_together:
                run = PlannedRun(name=seed_dir(Path(point_name), seed).as_posix(), dataset=dataset, task=task,
                                 seed=seed, overrides=overrides, group=point_name)
            else:
                run = PlannedRun(name=f"{point_name}_seed{seed}", dataset=dataset, task=task, seed=seed,
                                 overrides=overrides)
            run.config()  # unknown fields and out-of-range values fail here, before anything runs
            runs.append(run)
    return runs


def units(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """What one task trains: each seed group's runs together (in plan order), every other run alone."""
    grouped: dict[str, list[PlannedRun]] = {}
    for run in runs:
        grouped.setdefault(run.group or run.name, []).append(run)
    return list(grouped.values())


def _short(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def write_plan(sweep_dir: Path, spec: SweepSpec, runs: list[PlannedRun]) -> Path:
    """Write ``SWEEP/sweep.json``; refuses a folder whose sweep.json holds another plan."""
    path = Path(sweep_dir) / PLAN_FILE
    payload = {"format_version": PLAN_FORMAT, "spec": spec.to_dict(), "runs": [asdict(r) for r in runs]}
    if path.is_file():
        existing = SweepSpec(**read_plan_payload(sweep_dir)["spec"]).to_dict()  # plans before `scheduler` too
        if existing != json.loads(json.dumps(spec.to_dict())):
            raise RQLError(
                f"{sweep_dir} holds another sweep's plan ({PLAN_FILE}); continue it with `rql sweep --resume "
                f"{sweep_dir}`, or choose another --out."
            )
        return path
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)
    return path


def read_plan_payload(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / PLAN_FILE
    payload = read_json(path)
    if not isinstance(payload, dict) or "spec" not in payload:
        raise RQLError(f"{path} is not a sweep plan.")
    return payload


def read_plan(sweep_dir: Path) -> tuple[SweepSpec, list[PlannedRun]]:
    """The spec and runs of the sweep in ``sweep_dir``."""
    payload = read_plan_payload(sweep_dir)
    spec = SweepSpec(**payload["spec"])
    return spec, expand(spec)


def load_spec_file(path: Path) -> SweepSpec:
    """A sweep spec from TOML: dataset (or datasets), task ('1-5'), seeds ('0-3'), seeds_together (a bool),
    [grid] (lists), [set]."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RQLError(f"{path} cannot be read as a sweep file: {error}") from None
    datasets = data.get("datasets") or ([data["dataset"]] if "dataset" in data else [])
    grid = {canonical_field_name(k): v if isinstance(v, list) else [v] for k, v in (data.get("grid") or {}).items()}
    return SweepSpec(datasets=list(datasets), seeds=parse_seeds(str(data.get("seeds", "0"))),
                     tasks=parse_tasks(str(data["task"])) if "task" in data else [None], grid=grid,
                     fixed=dict(data.get("set") or {}), dataset_dir=data.get("dataset_dir"),
                     seeds_together=bool(data.get("seeds_together", False)))
