"""How gymnasium spaces map to the agent's vectors (shared by data and envs).

The agent takes one flat float32 observation and acts in [-1, 1]^A. A ``Dict`` observation becomes
its parts concatenated in the space's key order (what ``gymnasium.spaces.flatten`` and the
``FlattenObservation`` wrapper do); actions of a Box with other finite bounds are mapped affinely
to [-1, 1] in the data and back by ``RescaleAction`` in the env. Any space the agent takes is a Box
(``as_box``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rql_cli.errors import RQLError

if TYPE_CHECKING:
    from gymnasium import Space
    from gymnasium.spaces import Box


def needs_rescale(action_space: Box) -> bool:
    """Whether a Box action space has finite bounds other than [-1, 1]."""
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    return bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and (np.any(low != -1) or np.any(high != 1)))


def to_unit_range(actions: np.ndarray, action_space: Box) -> np.ndarray:
    """Actions (N, A) in the space's [low, high] mapped to [-1, 1] (unchanged when no rescale is needed)."""
    if not needs_rescale(action_space):
        return np.asarray(actions, np.float32)
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    return (2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0).astype(np.float32)


def flatten_rows(observations: np.ndarray | dict[str, Any], observation_space: Space) -> np.ndarray:
    """(N, ...) observations, or a dict of them for a ``Dict`` space, as (N, obs_dim) float32."""
    spaces = getattr(observation_space, "spaces", None)
    if isinstance(observations, dict) and isinstance(spaces, dict):
        parts = [flatten_rows(observations[key], space) for key, space in spaces.items()]
        return np.concatenate(parts, axis=1)
    array = np.asarray(observations, dtype=np.float32)
    return array.reshape(array.shape[0], -1)


def as_box(space: Space, what: str) -> Box:
    """``space`` as the Box it must be: the agent takes flat vectors and acts in continuous actions.

    ``what`` names the space in the error (``"gym:CartPole-v1's action space"``).
    """
    from gymnasium.spaces import Box  # loaded already: the space is one of its objects

    if not isinstance(space, Box):
        raise RQLError(f"{what} is a {type(space).__name__}; rql needs a Box space (flat, continuous values).")
    return space
