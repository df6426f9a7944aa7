"""OGBench names: which dataset and task a name means, and the ids ogbench and gymnasium use.

Names follow OGBench: ``{env}-{dataset type}[-singletask[-task{N}]]-v0``, e.g. ``cube-single-play-v0``,
``cube-single-play-singletask-v0`` or ``cube-double-play-singletask-task3-v0``. The dataset file behind
a name drops ``singletask`` and ``taskN`` (``cube-double-play-v0.npz``); the gymnasium id behind it
drops the dataset type (``cube-double-singletask-task3-v0``). Pure string work: no heavy imports, so
the data, envs and CLI layers all share this one parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rql_cli.errors import RQLError, UnknownNameError, closest_names

# Env family -> (dataset types OGBench publishes for it, default singletask task). The defaults are
# the ones ogbench itself substitutes for reward_task_id=0 (cube_env, scene_env, puzzle_env, maze.py).
# Pixel-observation ('visual-') variants are left out on purpose: RQL here is state-based.
_MANIPULATION = ("play", "noisy")
ENV_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    "cube-single": (_MANIPULATION, 2),
    "cube-double": (_MANIPULATION, 2),
    "cube-triple": (_MANIPULATION, 2),
    "cube-quadruple": (_MANIPULATION, 2),
    "scene": (_MANIPULATION, 2),
    "puzzle-3x3": (_MANIPULATION, 4),
    "puzzle-4x4": (_MANIPULATION, 4),
    "puzzle-4x5": (_MANIPULATION, 2),
    "puzzle-4x6": (_MANIPULATION, 2),
    "pointmaze-medium": (("navigate", "stitch"), 1),
    "pointmaze-large": (("navigate", "stitch"), 1),
    "pointmaze-giant": (("navigate", "stitch"), 1),
    "pointmaze-teleport": (("navigate", "stitch"), 1),
    "antmaze-medium": (("navigate", "stitch", "explore"), 1),
    "antmaze-large": (("navigate", "stitch", "explore"), 1),
    "antmaze-giant": (("navigate", "stitch"), 1),
    "antmaze-teleport": (("navigate", "stitch", "explore"), 1),
    "humanoidmaze-medium": (("navigate", "stitch"), 1),
    "humanoidmaze-large": (("navigate", "stitch"), 1),
    "humanoidmaze-giant": (("navigate", "stitch"), 1),
    "antsoccer-arena": (("navigate", "stitch"), 4),
    "antsoccer-medium": (("navigate", "stitch"), 4),
}
NUM_TASKS = 5  # every OGBench singletask env has task1..task5
TASKS = tuple(range(1, NUM_TASKS + 1))
"""Every task number a singletask env has (``--task all`` runs these)."""


_SIZE_RE = re.compile(r"\d+[kmb]?")
"""The size tag of OGBench's large sets (``100m``, ``1b``) and of ``rql data generate --shard-size`` folders."""
_NAME_RE = re.compile(r"^(?P<stem>.+?)(?:-singletask(?:-task(?P<task>\d+))?)?-(?P<version>v\d+)$")


def known_dataset_names() -> list[str]:
    """Every dataset name ``parse_task_name`` accepts, without ``singletask``/``taskN`` (sorted)."""
    return sorted(f"{family}-{kind}-v0" for family, (kinds, _) in ENV_FAMILIES.items() for kind in kinds)


@dataclass(frozen=True)
class TaskName:
    """A parsed OGBench single-task name.

    Attributes:
        family: env family without the dataset type, e.g. ``'cube-single'``.
        dataset_type: ``'play'``, ``'noisy'``, ``'navigate'``, ``'stitch'`` or ``'explore'``.
        version: the trailing version token, e.g. ``'v0'``.
        task: the task number written in the name (1..5), or None when the name gives none.
        size: the size tag of a large set's shard folder (``'100m'`` in ``puzzle-4x4-play-100m-v0``),
            None for the ordinary single-file sets.
    """

    family: str
    dataset_type: str
    version: str = "v0"
    task: int | None = None
    size: str | None = None

    @property
    def dataset_name(self) -> str:
        """The dataset file stem, e.g. ``'cube-single-play-v0'`` (file ``cube-single-play-v0.npz``)."""
        return f"{self.family}-{self.dataset_type}-{self.version}"

    @property
    def folder_name(self) -> str | None:
        """The shard folder of a sized name, e.g. ``'puzzle-4x4-play-100m-v0'``; None without a size."""
        return f"{self.family}-{self.dataset_type}-{self.size}-{self.version}" if self.size else None

    @property
    def tasks(self) -> tuple[int, ...]:
        """Every task number of this env: (1, 2, 3, 4, 5)."""
        return TASKS

    @property
    def default_task(self) -> int:
        """The task ogbench uses when a singletask name has no ``-taskN`` (cube, scene: 2; ...)."""
        return ENV_FAMILIES[self.family][1]

    def resolve_task(self, task: int | None = None) -> int:
        """The concrete task number: ``task`` if given, else the name's own, else the family default."""
        chosen = task if task is not None else self.task if self.task is not None else self.default_task
        if not isinstance(chosen, int) or isinstance(chosen, bool) or not 1 <= chosen <= NUM_TASKS:
            raise RQLError(
                f"Task {chosen!r} does not exist for {self.dataset_name}: OGBench single-task envs have "
                f"tasks 1 to {NUM_TASKS} (default {self.default_task})."
            )
        return chosen

    def _task_suffix(self, task: int | None) -> str:
        if task is None and self.task is None:
            return ""
        return f"-task{self.resolve_task(task)}"

    def env_id(self, task: int | None = None) -> str:
        """The singletask name ogbench's loader takes, e.g. ``'cube-single-play-singletask-task3-v0'``.

        ``task=None`` means the task written in the name, or, if the name has none, the default-task
        name without ``-taskN`` (``'cube-single-play-singletask-v0'``), which ogbench maps to
        ``default_task``.
        """
        return f"{self.family}-{self.dataset_type}-singletask{self._task_suffix(task)}-{self.version}"

    def gym_id(self, task: int | None = None) -> str:
        """The registered gymnasium id behind ``env_id``, e.g. ``'cube-single-singletask-task3-v0'``."""
        return f"{self.family}-singletask{self._task_suffix(task)}-{self.version}"


MINARI_PREFIX = "minari:"
GYM_PREFIX = "gym:"


@dataclass(frozen=True)
class ExternalName:
    """A dataset from outside OGBench, with the one task its environment has.

    ``minari:D4RL/pen/human-v2`` is a Minari dataset (its env rebuilt from the spec the dataset
    stores); ``gym:Hopper-v5`` is the gymnasium env a plain ``.npz`` is evaluated in (``--env``).
    Answers the questions a ``TaskName`` answers, so evaluation, rollouts, checkpoints and the Hub
    handle both alike; there is one task (number 1).

    Attributes:
        source: ``'minari'`` or ``'gym'``.
        ident: the Minari dataset id or the gymnasium env id.
        env_spec: the env's gymnasium spec as JSON, when known.
    """

    source: str
    ident: str
    task: int | None = None
    dataset_type: str = "external"
    version: str = ""
    env_spec: str | None = field(default=None, compare=False)
    """gymnasium ``EnvSpec.to_json()`` of the env, when known (a checkpoint records it): builds the env
    where the Minari dataset is not on disk."""

    @property
    def family(self) -> str:
        """What presets key on: the id without its version, e.g. ``'minari:D4RL/antmaze/large-play'``."""
        unversioned = re.sub(r"-v\d+$", "", self.ident)
        return f"{self.source}:{unversioned}"

    @property
    def dataset_name(self) -> str:
        """The name as given, e.g. ``'minari:D4RL/pen/human-v2'``."""
        return f"{self.source}:{self.ident}"

    @property
    def tasks(self) -> tuple[int, ...]:
        """The one task: (1,)."""
        return (1,)

    @property
    def default_task(self) -> int:
        """1: the env's own task."""
        return 1

    def resolve_task(self, task: int | None = None) -> int:
        """1; any other task number is an error (the env has one task)."""
        if task not in (None, 1):
            raise RQLError(f"{self.dataset_name} has one task (its environment's own); --task {task} does not exist.")
        return 1

    def env_id(self, task: int | None = None) -> str:
        """The name itself (``'minari:...'`` or ``'gym:...'``): what checkpoints record as their env."""
        self.resolve_task(task)
        return self.dataset_name

    def gym_id(self, task: int | None = None) -> str:
        """The gymnasium id (for Minari: the id without the prefix; the env comes from its stored spec)."""
        self.resolve_task(task)
        return self.ident


ParsedName = TaskName | ExternalName
"""What ``parse_task_name`` returns: an OGBench task, or a Minari or gymnasium env with its one task."""


def parse_task_name(name: str | ParsedName) -> ParsedName:
    """Parse a dataset or singletask name; raise ``UnknownNameError`` with suggestions if unknown.

    Accepts ``cube-single-play-v0``, ``cube-single-play-singletask-v0`` and
    ``cube-single-play-singletask-task3-v0`` (and the same shapes for every family in ``ENV_FAMILIES``),
    and ``minari:<dataset id>`` / ``gym:<env id>`` (an ``ExternalName``). A parsed name is returned as
    it is, so callers may pass either.
    """
    if isinstance(name, (TaskName, ExternalName)):
        return name
    for source, prefix in (("minari", MINARI_PREFIX), ("gym", GYM_PREFIX)):
        if name.strip().startswith(prefix):
            ident = name.strip()[len(prefix):].strip()
            if not ident:
                raise UnknownNameError(
                    f"{name!r} names no {source} id; write e.g. 'minari:D4RL/pen/human-v2' or 'gym:Hopper-v5'."
                )
            return ExternalName(source=source, ident=ident)
    match = _NAME_RE.match(name.strip())
    family = kind = size = None
    if match:
        family, _, kind = match["stem"].rpartition("-")
        if _SIZE_RE.fullmatch(kind) and family:  # a large set's folder name: puzzle-4x4-play-100m-v0
            size = kind
            family, _, kind = family.rpartition("-")
    if (
        match is None or family is None or kind is None
        or family not in ENV_FAMILIES
        or kind not in ENV_FAMILIES[family][0]
        or match["version"] != "v0"  # OGBench has published only v0 so far
    ):
        valid = known_dataset_names()
        # Compare like with like: strip singletask/taskN so 'cube-singel-play-singletask-task2-v0'
        # is matched against dataset names, not against every task variant.
        probe = re.sub(r"-singletask(-task\d+)?", "", name.strip())
        suggestions = closest_names(probe, valid) or closest_names(name, valid)
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        raise UnknownNameError(
            f"Unknown OGBench dataset or task name {name!r}.{hint} Names look like "
            "'cube-single-play-v0' or 'cube-single-play-singletask-task2-v0'; run `rql list` to see them."
        )
    task = int(match["task"]) if match["task"] is not None else None
    parsed = TaskName(family=family, dataset_type=kind, version=match["version"], task=task, size=size)
    if task is not None:
        parsed.resolve_task()  # validates 1..5 with a friendly message
    return parsed


def parse_ogbench_name(name: str | ParsedName) -> TaskName:
    """``parse_task_name`` where only an OGBench name can be meant (its dataset files, shard folders)."""
    parsed = parse_task_name(name)
    if isinstance(parsed, ExternalName):
        raise RQLError(
            f"'{parsed.dataset_name}' is not an OGBench dataset; this takes OGBench names such as "
            "'cube-single-play-v0'."
        )
    return parsed
