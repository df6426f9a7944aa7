"""The fine-tuning replay buffer: windows never cross episodes, uniform or balanced sampling, restore."""

from __future__ import annotations

import numpy as np
import torch

from rql_cli.data.dataset import OfflineDataset
from rql_cli.data.replay import ReplayBuffer

OBS, ACT, H = 3, 2, 3


def offline(episode_lengths: list[int], first_id: int = 0) -> OfflineDataset:
    """Rows whose observation[0] is the episode id and observation[1] the row's index in it."""
    rows = []
    for episode, length in enumerate(episode_lengths):
        for t in range(length):
            rows.append((first_id + episode, t, t == length - 1))
    ids = np.array([[e, t, 0] for e, t, _ in rows], dtype=np.float32)
    terminals = np.array([last for *_, last in rows], dtype=np.float32)
    return OfflineDataset.from_arrays(dict(
        observations=ids, next_observations=ids, actions=np.zeros((len(rows), ACT)), rewards=np.zeros(len(rows)),
        masks=np.ones(len(rows)), terminals=terminals,
    ))


def online_step(episode: int, t: int, last: bool) -> dict:
    observation = np.array([episode, t, 1], dtype=np.float32)
    return dict(observations=observation, next_observations=observation, actions=np.full(ACT, 2.0),
                rewards=-1.0, masks=1.0, terminals=1.0 if last else 0.0)


def fill(buffer: ReplayBuffer, episode_lengths: list[int], first_id: int, unfinished: int = 0) -> int:
    added = 0
    for offset, length in enumerate([*episode_lengths, unfinished]):
        finished = offset < len(episode_lengths)
        for t in range(length):
            buffer.add(online_step(first_id + offset, t, finished and t == length - 1))
            added += 1
    return added


def test_windows_never_cross_episodes_and_unfinished_windows_wait():
    buffer = ReplayBuffer(offline([5, 4]), capacity=40, obs_dim=OBS, action_dim=ACT, horizon=H, device=torch.device("cpu"))
    added = fill(buffer, [4, 2, 6], first_id=10, unfinished=4)
    assert buffer.online_size == added == 16
    # Online starts: every row but each finished episode's last (3 + 1 + 5), plus the unfinished
    # episode's rows whose whole window is stored (rows 0 and 1 of its 4).
    assert buffer.num_online_starts == 9 + 2
    batch = buffer.sample(4000, torch.Generator().manual_seed(0))
    first_ids = batch.observations[:, 0]
    # Window rows come from the observation's episode only; rows past an end repeat the last row.
    starts = buffer.start_rows
    windows_rows = torch.minimum(starts[:, None] + torch.arange(H), buffer.episode_end[starts][:, None])
    episode_of_rows = buffer.dataset.observations[windows_rows][..., 0]
    assert torch.all(episode_of_rows == episode_of_rows[:, :1])
    assert set(first_ids.unique().tolist()) == {0, 1, 10, 11, 12, 13}
    unfinished = batch.observations[first_ids == 13][:, 1]
    assert set(unfinished.unique().tolist()) == {0.0, 1.0}  # rows 2 and 3 still lack their window
    # Actions are stored clipped like the offline loader's.
    assert float(buffer.dataset.actions[buffer.n_offline:].max()) < 1.0


def test_balanced_sampling_draws_half_from_each_part_uniform_draws_by_size():
    buffer = ReplayBuffer(offline([50] * 8), capacity=100, obs_dim=OBS, action_dim=ACT, horizon=H, device=torch.device("cpu"))
    fill(buffer, [20, 20], first_id=100)
    generator = torch.Generator().manual_seed(1)
    online_fraction = [
        float((buffer.sample(256, generator, balanced=balanced).observations[:, 2] == 1).float().mean())
        for balanced in (True, False)
        for _ in range(40)
    ]
    balanced, uniform = np.mean(online_fraction[:40]), np.mean(online_fraction[40:])
    assert abs(balanced - 0.5) < 0.01  # exactly half of each batch
    expected = buffer.num_online_starts / buffer.start_rows.numel()  # 38 of 430
    assert abs(uniform - expected) < 0.02


def test_online_part_keeps_finished_episodes_and_restores_identically():
    device = torch.device("cpu")
    buffer = ReplayBuffer(offline([5]), capacity=30, obs_dim=OBS, action_dim=ACT, horizon=H, device=device)
    fill(buffer, [4, 6], first_id=10, unfinished=3)
    part = buffer.online_part()
    assert part["terminals"].shape == (10,) and part["terminals"].sum() == 2  # the running episode is left out
    again = ReplayBuffer(offline([5]), capacity=30, obs_dim=OBS, action_dim=ACT, horizon=H, device=device)
    again.restore_online(part)
    assert again.online_size == 10 and torch.equal(again.start_rows, buffer.start_rows[: again.start_rows.numel()])
    for name, tensor in part.items():
        assert torch.equal(again.online_part()[name], tensor), name
    assert torch.equal(again.episode_end[: again.n_offline + 10], buffer.episode_end[: buffer.n_offline + 10])


def test_empty_offline_part_and_a_buffer_that_cannot_fit_are_clear():
    import pytest

    from rql_cli.errors import RQLError

    buffer = ReplayBuffer(None, capacity=10, obs_dim=OBS, action_dim=ACT, horizon=H, device=torch.device("cpu"))
    with pytest.raises(RQLError, match="no complete window"):
        buffer.sample(4, torch.Generator())
    with pytest.raises(RQLError, match=r"would need .* GiB .* free"):
        ReplayBuffer(None, capacity=10**12, obs_dim=OBS, action_dim=ACT, horizon=H, device=torch.device("cpu"))
