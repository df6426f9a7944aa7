"""Which OGBench datasets ``rql data generate`` can make, how the official collection made each, and
which episodes one generation draws.

Only the manipulation sets (cube, scene, puzzle) were collected by scripted oracles that ship inside
the ogbench wheel; the locomotion sets came from trained expert policies that are not shipped.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from rql_cli.errors import RQLError, UnknownNameError, closest_names
from rql_cli.names import ENV_FAMILIES, TaskName, parse_task_name

Key = tuple[str, int]
"""An episode's identity within a generation: (split ``'train'`` or ``'val'``, index within the split)."""


@dataclasses.dataclass(frozen=True)
class DatasetRecipe:
    """How one OGBench manipulation dataset is collected.

    Attributes:
        env_id: base gymnasium id made in data-collection mode, e.g. ``'cube-double-v0'``.
        oracle: ``'plan'`` (``play`` sets) or ``'markov'`` (``noisy`` sets).
        num_episodes: train episodes in the official set; the ``-val`` file holds a tenth as many.
        p_stack: ``(low, high)``; each episode draws its stacking probability from U(low, high).
            Equal ends mean a fixed value. Puzzle envs ignore it.
        p_random_action: probability of a uniform random action in [-1, 1]^5 at each step
            (``noisy`` sets only).
    """

    env_id: str
    oracle: Literal["plan", "markov"]
    num_episodes: int
    p_stack: tuple[float, float]
    p_random_action: float = 0.0

    @property
    def family(self) -> Literal["cube", "scene", "puzzle"]:
        """Which env class: ``'cube'``, ``'scene'`` or ``'puzzle'``."""
        # Every recipe's env id starts with its family (the recipes below); a str cannot say so.
        return self.env_id.split("-")[0]  # type: ignore[return-value]

    @property
    def num_val_episodes(self) -> int:
        """Episodes in the official ``-val`` file."""
        return self.num_episodes // 10

    @property
    def has_button_states(self) -> bool:
        """Whether rows carry ``button_states`` (scene and puzzle keep them outside qpos)."""
        return self.family in ("scene", "puzzle")


# The families our oracles can collect, with what the official collection used for each: train
# episodes and the p_stack range. Their dataset types come from rql_cli.names.ENV_FAMILIES.
_OFFICIAL_COLLECTION: dict[str, tuple[int, tuple[float, float]]] = {
    "cube-single": (1000, (0.0, 0.0)),
    "cube-double": (1000, (0.0, 0.25)),
    "cube-triple": (3000, (0.05, 0.35)),
    "cube-quadruple": (5000, (0.1, 0.5)),
    "scene": (1000, (0.5, 0.5)),
    "puzzle-3x3": (1000, (0.0, 0.0)),
    "puzzle-4x4": (1000, (0.0, 0.0)),
    "puzzle-4x5": (3000, (0.0, 0.0)),
    "puzzle-4x6": (5000, (0.0, 0.0)),
}
_ORACLE_OF_DATASET_TYPE: dict[str, Literal["plan", "markov"]] = {"play": "plan", "noisy": "markov"}


def _random_action_probability(family: str, dataset_type: str) -> float:
    """Per-step probability of a uniform random action: ``noisy`` sets only, higher for puzzles."""
    if dataset_type != "noisy":
        return 0.0
    return 0.2 if family.startswith("puzzle") else 0.1


def _recipes() -> dict[str, DatasetRecipe]:
    """One recipe per dataset type that rql_cli.names lists for each family we can collect."""
    table = {}
    for family, (episodes, p_stack) in _OFFICIAL_COLLECTION.items():
        dataset_types, _ = ENV_FAMILIES[family]
        for dataset_type in dataset_types:
            table[TaskName(family, dataset_type).dataset_name] = DatasetRecipe(
                env_id=f"{family}-v0",
                oracle=_ORACLE_OF_DATASET_TYPE[dataset_type],
                num_episodes=episodes,
                p_stack=p_stack,
                p_random_action=_random_action_probability(family, dataset_type),
            )
    return table


GENERATABLE: dict[str, DatasetRecipe] = _recipes()
"""Dataset names ``rql data generate`` can make (file stems, e.g. ``cube-single-play-v0``) and their recipes."""


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """What every episode of one generation depends on: episode k of split s is a function of these
    and (s, k) alone, whichever process collects it. Small and picklable: it is what worker processes
    get, and what the episode cache checks before reusing an episode.

    Attributes:
        name: a key of ``GENERATABLE``.
        seed: base seed of every episode.
        episode_length: steps per episode (1001 in the official sets).
    """

    name: str
    seed: int
    episode_length: int

    @property
    def recipe(self) -> DatasetRecipe:
        """How the dataset is collected."""
        return GENERATABLE[self.name]


def lookup_recipe(name: str) -> DatasetRecipe:
    """The recipe of ``name``; UnknownNameError naming the dataset file for a task name, or the
    closest generatable names otherwise."""
    if name in GENERATABLE:
        return GENERATABLE[name]
    names = sorted(GENERATABLE)
    try:
        parsed = parse_task_name(name)
    except RQLError:  # an unknown name, or a task outside 1..5: answered with suggestions below
        parsed = None
    if parsed is not None and parsed.dataset_name in GENERATABLE and parsed.env_id() == name:
        # Users often pass the env name they train on; the file behind it drops 'singletask' and 'taskN'.
        file_stem = parsed.dataset_name
        raise UnknownNameError(
            f"'{name}' is a task name; its dataset file is '{file_stem}'. Generate '{file_stem}' instead."
        )
    if parsed is not None and parsed.dataset_name not in GENERATABLE:
        # A real OGBench dataset, but not one of the manipulation sets made by scripted oracles.
        raise UnknownNameError(
            f"'{parsed.dataset_name}' is an OGBench dataset that rql cannot generate: only the manipulation "
            "sets (cube, scene, puzzle) have scripted oracles in ogbench; the locomotion ones come from trained "
            "expert policies that are not shipped. "
            f"Put the official {parsed.dataset_name}.npz and {parsed.dataset_name}-val.npz in a folder and pass it "
            f"as --dataset-dir. Datasets that can be generated: {', '.join(names)}."
        )
    close = closest_names(name, names)
    hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    raise UnknownNameError(
        f"Cannot generate dataset '{name}'.{hint} Datasets that can be generated (`rql list` shows them "
        f"too): {', '.join(names)}."
    )
