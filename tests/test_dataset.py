"""The offline dataset: loading through ogbench, reward conventions, the chunk sampler at episode ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rql_cli.data.dataset import ACTION_CLIP, ChunkSampler, OfflineDataset
from rql_cli.data.sources import load_ogbench
from rql_cli.errors import DatasetNotFoundError


def two_episode_arrays() -> dict[str, np.ndarray]:
    """Episode A: rows 0-3, episode B: rows 4-6; observation i is [i], next observation [i + 0.5]."""
    n = 7
    rows = np.arange(n, dtype=np.float32)
    return dict(
        observations=rows[:, None],
        next_observations=rows[:, None] + 0.5,
        actions=np.stack([rows / 10, -rows / 10], axis=1),
        rewards=-(rows % 3 != 0).astype(np.float32) * 2.0,  # 0 or -2
        masks=np.ones(n, dtype=np.float32),
        terminals=np.array([0, 0, 0, 1, 0, 0, 1], dtype=np.float32),
    )


def test_chunk_windows_clamp_at_episode_ends_and_bootstrap_from_true_next_observation():
    dataset = OfflineDataset.from_arrays(two_episode_arrays())
    sampler = ChunkSampler(dataset, horizon=3)
    batch = sampler.windows(torch.tensor([0, 1, 2, 5]))
    # Window at row 1: rows 1, 2, 3 (3 is A's last) -> valid, bootstrap from row 3's next obs.
    assert batch.observations[1].item() == 1.0
    torch.testing.assert_close(batch.actions[1, :, 0], torch.tensor([0.1, 0.2, 0.3]))
    assert batch.next_observations[1].item() == 3.5
    # Window at row 2: rows 2, 3, 3 (clamped); the last action repeats past the end.
    torch.testing.assert_close(batch.actions[2, :, 0], torch.tensor([0.2, 0.3, 0.3]))
    torch.testing.assert_close(batch.terminals[2], torch.tensor([0.0, 1.0, 1.0]))
    # Window at row 5: rows 5, 6, 6 in episode B, never crossing into another episode.
    torch.testing.assert_close(batch.observations[3], torch.tensor([5.0]))
    torch.testing.assert_close(batch.actions[3, :, 0], torch.tensor([0.5, 0.6, 0.6]))
    assert batch.next_observations[3].item() == 6.5
    # Window at row 0: plain, rows 0..2, bootstrap state = observation of row 3.
    assert batch.next_observations[0].item() == 2.5


def test_sampler_never_starts_on_an_episode_last_row_and_covers_the_rest():
    dataset = OfflineDataset.from_arrays(two_episode_arrays())
    sampler = ChunkSampler(dataset, horizon=2)
    batch = sampler.sample(4000, torch.Generator().manual_seed(0))
    starts = batch.observations.flatten().long()
    assert set(starts.tolist()) == {0, 1, 2, 4, 5}
    counts = torch.bincount(starts, minlength=7)[[0, 1, 2, 4, 5]].float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.03


def test_sparse_rewards_and_action_clipping():
    arrays = two_episode_arrays()
    arrays["actions"][0] = [1.0, -1.0]
    dense = OfflineDataset.from_arrays(arrays)
    sparse = OfflineDataset.from_arrays(arrays, sparse_rewards=True)
    assert set(dense.rewards.tolist()) == {0.0, -2.0}
    assert set(sparse.rewards.tolist()) == {0.0, -1.0}
    torch.testing.assert_close(sparse.rewards == 0, dense.rewards == 0)
    assert dense.actions[0].tolist() == pytest.approx([ACTION_CLIP, -ACTION_CLIP])


def test_missing_dataset_says_where_we_looked_and_how_to_make_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_ogbench("cube-double-play-v0", dataset_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cube-double-play-v0.npz") in message
    assert "rql data generate cube-double-play-v0" in message


def test_generated_file_loads_through_ogbench_with_singletask_rewards(tiny_dataset_dir):
    loaded = load_ogbench("cube-single-play-v0", dataset_dir=tiny_dataset_dir)
    train = loaded.train
    assert (train.size, train.obs_dim, train.action_dim) == (300, 28, 5)
    assert train.num_episodes == 3 and loaded.val.num_episodes == 1
    assert set(train.rewards.unique().tolist()) <= {-1.0, 0.0}
    torch.testing.assert_close(train.masks, (train.rewards == -1).float())
    # Within an episode, next observation i is observation i + 1.
    same_episode = train.terminals[:-1] == 0
    torch.testing.assert_close(train.next_observations[:-1][same_episode], train.observations[1:][same_episode])
