"""Transitions from outside OGBench: Minari datasets and plain ``.npz`` files.

Both become the same transition arrays as an OGBench file (``OfflineDataset``):

- ``rewards`` as stored;
- ``terminals`` 1 on every episode's last transition, whether the episode terminated or was
  truncated (a chunk window never crosses it);
- ``masks`` 0 only where the episode *terminated* (no bootstrap past a true end); a truncation is not
  a termination, so the value bootstraps there;
- observations flattened and actions mapped to [-1, 1] as the env adapter does (``rql_cli.spaces``).

Episodes may differ in length. The chunk sampler draws start rows uniformly over transitions; the
official OGBench sampler draws uniformly over episodes and then over rows, which is the same thing
only when every episode has the same length (true of OGBench, not of most Minari sets), so longer
episodes get their fair share of windows here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rql_cli.errors import DatasetError
from rql_cli.spaces import flatten_rows, to_unit_range

if TYPE_CHECKING:
    from gymnasium.spaces import Box
    from minari import MinariDataset

PLAIN_REQUIRED = ("observations", "actions", "rewards", "terminals")
PLAIN_OPTIONAL = ("masks", "next_observations", "timeouts")


def minari_arrays(dataset: MinariDataset) -> dict[str, np.ndarray]:
    """The transition arrays of a ``MinariDataset``, read in one bulk call (not a loop of ``dataset[i]``).

    Minari stores T+1 observations and T actions per episode; transition t is (o_t, a_t, r_t, o_{t+1}).
    """
    episodes = list(dataset.storage.get_episodes(dataset.episode_indices))
    if not episodes:
        raise DatasetError(f"Minari dataset '{dataset.spec.dataset_id}' holds no episodes.")
    space = dataset.observation_space

    def observations_of(episode: dict[str, Any], part: slice) -> np.ndarray:
        observations = episode["observations"]
        if isinstance(observations, dict):
            return flatten_rows({k: np.asarray(v)[part] for k, v in observations.items()}, space)
        return flatten_rows(np.asarray(observations)[part], space)

    lengths = np.array([len(episode["rewards"]) for episode in episodes])
    ends = np.cumsum(lengths) - 1
    terminations = np.concatenate([np.asarray(e["terminations"], bool) for e in episodes])
    terminals = np.zeros(int(lengths.sum()), np.float32)
    terminals[ends] = 1.0
    actions = np.concatenate([np.asarray(e["actions"]).reshape(len(e["rewards"]), -1) for e in episodes])
    return {
        "observations": np.concatenate([observations_of(e, slice(0, -1)) for e in episodes]),
        "next_observations": np.concatenate([observations_of(e, slice(1, None)) for e in episodes]),
        "actions": to_unit_range(actions, dataset.action_space),
        "rewards": np.concatenate([np.asarray(e["rewards"], np.float32) for e in episodes]),
        "terminals": terminals,
        "masks": (~terminations).astype(np.float32),
    }


def plain_arrays(path: Path, action_space: Box | None = None) -> dict[str, np.ndarray]:
    """The transition arrays of a plain ``.npz`` (neither OGBench nor Minari).

    Keys: ``observations`` (N, obs_dim), ``actions`` (N, A), ``rewards`` (N,), ``terminals`` (N,) 1
    where an episode ends; optional ``timeouts`` (N,) 1 where an episode was cut by a time limit
    (D4RL's layout: an episode then ends at terminals | timeouts, and ``terminals`` alone mean a true
    termination), ``masks`` (N,) 0 where the value must not bootstrap (default 1 - terminals: without
    ``timeouts`` every episode end counts as a termination), ``next_observations`` (N, obs_dim)
    (default: the next row's observation; each episode's last row, which has none, is dropped).
    ``action_space``: the env's, to map actions to [-1, 1]; None leaves them as stored.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"{path} is not a readable .npz archive of arrays ({type(error).__name__}: {error})."
        ) from None
    with archive:
        missing = [k for k in PLAIN_REQUIRED if k not in archive.files]
        if missing:
            raise DatasetError(
                f"{path} lacks '{missing[0]}'. A plain dataset needs observations (N, obs_dim), actions (N, A), "
                f"rewards (N,) and terminals (N,: 1 where an episode ends); optional: masks (N,), "
                f"next_observations (N, obs_dim), timeouts (N,). It holds: {', '.join(archive.files) or 'nothing'}."
            )
        arrays = {k: np.asarray(archive[k]) for k in (*PLAIN_REQUIRED, *PLAIN_OPTIONAL) if k in archive.files}
    rows = arrays["observations"].shape[0]
    expected = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "masks": 1, "timeouts": 1,
                "next_observations": 2}
    for key, value in arrays.items():
        if value.ndim != expected[key] or value.shape[0] != rows:
            shape = "(N, dim)" if expected[key] == 2 else "(N,)"
            raise DatasetError(f"{path}: '{key}' has shape {value.shape}; expected {shape} with N = {rows:,} "
                               "(the rows of observations).")
    terminated = arrays["terminals"].astype(bool)
    ends = terminated | arrays.get("timeouts", np.zeros(rows, bool)).astype(bool)
    masks = arrays["masks"].astype(np.float32) if "masks" in arrays else (~terminated).astype(np.float32)
    observations = arrays["observations"].astype(np.float32)
    if "next_observations" in arrays:
        keep = np.ones(rows, bool)
        next_observations = arrays["next_observations"].astype(np.float32)
    else:  # o_{t+1} is the next row within an episode; an episode's last row has none: dropped
        keep = ~ends
        next_observations = np.concatenate([observations[1:], observations[-1:]])
        ends = np.concatenate([ends[1:], [True]]) & keep  # the row before a dropped one now ends its episode
    actions = arrays["actions"].astype(np.float32)
    if action_space is not None:
        actions = to_unit_range(actions, action_space)
    out = {
        "observations": observations[keep], "next_observations": next_observations[keep],
        "actions": actions[keep], "rewards": arrays["rewards"].astype(np.float32)[keep],
        "masks": masks[keep], "terminals": ends[keep].astype(np.float32),
    }
    if out["rewards"].size == 0:
        raise DatasetError(
            f"{path} holds no transitions once each episode's last row is dropped (no next observation)."
        )
    return out
