"""`rql train --seeds`: N seeds in one process, each exactly the run `--seed s` alone would make.

Tolerance: the stacked update (vmap) sums the same products in another order inside its batched
matmuls, so its numbers may differ from a single run's in the last bits of fp32. We hold losses and
weights to an absolute 1e-5 (weights here are O(0.1)) and logged losses, which metrics.csv keeps to 6
significant digits, to 2e-5 relative; measured over 200 steps of these tiny networks the largest gap
in the logged losses was one flip of the last printed digit. The threaded and sequential updates are the
single run's own code and are held to exact equality.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_checks import assert_refused, invoke
from conftest import TINY_NAME


from rql_cli.config import RQLConfig, RunConfig, parse_seeds
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.rql import RQLAgent
from rql_cli.core.seed_stack import SequentialSeeds, StackedActing, StackedSeeds, ThreadedSeeds
from rql_cli.errors import RQLError
from rql_cli.io.checkpoint import load_agent, load_tensors
from rql_cli.io.group_record import read_group_record, seed_dir
from rql_cli.training.group import GroupSession, make_seed_update, train_group
from rql_cli.training.observer import TrainObserver
from rql_cli.training.offline import DataSpec, train

TOLERANCE = 1e-5
SMALL = dict(actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=2, flow_steps=4, horizon=5,
             batch_size=8, eval_episodes=0, device="cpu", compile="off", log_interval=1)


def config(**changes) -> RunConfig:
    return RunConfig.of(**{**SMALL, **changes})


def losses(run_dir: Path) -> list[list[float]]:
    with open(run_dir / "metrics.csv") as handle:
        return [[float(row[k]) for k in ("value", "bc", "policy", "total")] for row in csv.DictReader(handle)]


def latest(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").iterdir())[-1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name in ("velocity", "value"):
        tensors.update({f"{name}.{k}": v for k, v in load_tensors(latest(run_dir) / f"{name}.safetensors").items()})
    return tensors


def train_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(latest(run_dir) / "train_state.safetensors")


@pytest.fixture(scope="module")
def data(tiny_dataset_dir) -> DataSpec:
    return DataSpec(name=TINY_NAME, dataset_dir=str(tiny_dataset_dir))


@pytest.fixture(scope="module")
def alone(data, tmp_path_factory) -> dict[int, Path]:
    """Seeds 0 and 2 trained alone for 200 steps."""
    root = tmp_path_factory.mktemp("alone")
    for seed in (0, 2):
        train(config(steps=200, seed=seed), data, root / f"seed{seed}")
    return {0: root / "seed0", 2: root / "seed2"}


@pytest.mark.parametrize("update", ["stacked", "threaded", "sequential"])
def test_each_seed_of_a_group_is_the_run_it_would_be_alone(update, alone, data, tmp_path):
    group = tmp_path / "group"
    outcome = train_group(config(steps=200, group_update=update), data, group, [2, 0])
    assert outcome.step == 200 and not outcome.interrupted
    assert read_group_record(group).update == update
    threads = json.loads((seed_dir(group, 0) / "train_config.json").read_text())["history"][0]["runtime"]["threads"]
    assert threads["per_seed"] == (update == "threaded")  # threaded: the run's threads each step a seed
    for seed, single in alone.items():
        member = seed_dir(group, seed)
        # The same generators in the same states: every batch index and noise draw was the same.
        ours, theirs = train_state(member), train_state(single)
        for name in ("rng.sample", "rng.noise", "step"):
            assert torch.equal(ours[name], theirs[name]), name
        ours_losses, theirs_losses = torch.tensor(losses(member)), torch.tensor(losses(single))
        assert ours_losses.shape == (200, 4)
        ours_weights, theirs_weights = weights(member), weights(single)
        if update != "stacked":  # each seed's own update, on one thread (threaded) or all (sequential)
            assert torch.equal(ours_losses, theirs_losses)
            assert all(torch.equal(ours_weights[k], theirs_weights[k]) for k in theirs_weights)
        else:
            # metrics.csv keeps 6 significant digits: a last-digit flip is up to 1e-5 relative
            assert torch.allclose(ours_losses, theirs_losses, rtol=2e-5, atol=TOLERANCE)
            assert max((ours_weights[k] - theirs_weights[k]).abs().max() for k in theirs_weights) < TOLERANCE
        # Each seed's folder is an ordinary run folder that loads alone.
        agent, meta = load_agent(latest(member))
        assert meta.seed == seed and meta.step == 200


def test_threaded_seeds_share_out_the_threads_and_step_each_seed_on_a_worker():
    agent_config = RQLConfig(actor_hidden_dims=[16, 16], value_hidden_dims=[16, 16], ensemble_size=2,
                             batch_size=6, horizon=3, flow_steps=4)
    agents = []
    for seed in range(3):
        torch.manual_seed(seed)
        agents.append(RQLAgent(agent_config, obs_dim=5, action_dim=2, device=torch.device("cpu")))
    seen: dict[int, set[tuple[str, int]]] = {i: set() for i in range(3)}  # (thread, its intra-op threads)
    for index, agent in enumerate(agents):
        def record(batch, generator, own=agent.update, index=index):
            seen[index].add((threading.current_thread().name, torch.get_num_threads()))
            return own(batch, generator)
        agent.update = record  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(0)
    batch = ChunkBatch(torch.randn(6, 5, generator=g), torch.rand(6, 3, 2, generator=g) * 2 - 1, torch.rand(6, 3),
                       torch.ones(6, 3), torch.zeros(6, 3), torch.randn(6, 5, generator=g))

    def step() -> dict[str, torch.Tensor]:
        for names in seen.values():
            names.clear()
        return update.update([batch] * 3, [torch.Generator().manual_seed(s) for s in range(3)])

    before = torch.get_num_threads()
    try:
        update = ThreadedSeeds(agents, threads=7)
        assert (update.workers, update.intra_threads) == (3, 2)  # one worker per seed, the rest intra-op
        assert step()["total"].shape == (3,) and all(a.step == 1 for a in agents)
        assert all(len(s) == 1 and next(iter(s))[0].startswith("rql-seed") and next(iter(s))[1] == 2
                   for s in seen.values())
        update.set_threads(1)  # what the governor does when other processes take the cores
        step()
        assert all(s == {(threading.current_thread().name, 1)} for s in seen.values())
        update.set_threads(2)  # two workers for three seeds: one steps two seeds in turn
        step()
        assert all(len(s) == 1 and next(iter(s))[0].startswith("rql-seed") for s in seen.values())
        assert all(a.step == 3 for a in agents)
        update.close()
    finally:
        torch.set_num_threads(before)


def test_auto_steps_a_cpu_group_side_by_side_and_threaded_is_refused_on_cuda():
    torch.manual_seed(0)
    agent = RQLAgent(RQLConfig(actor_hidden_dims=[8], value_hidden_dims=[8]), obs_dim=3, action_dim=2,
                     device=torch.device("cpu"))
    assert type(make_seed_update("auto", [agent])) is ThreadedSeeds
    assert type(make_seed_update("sequential", [agent])) is SequentialSeeds
    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # only its device is read before the refusal
    with pytest.raises(RQLError, match="on CUDA use stacked"):
        make_seed_update("threaded", [on_cuda])


@pytest.mark.parametrize("points", ["interpolated", "reversed"])
def test_one_stacked_update_equals_each_agents_own(points):
    agent_config = RQLConfig(actor_hidden_dims=[16, 16], value_hidden_dims=[16, 16], ensemble_size=3,
                             batch_size=6, horizon=3, flow_steps=4, policy_loss_points=points)

    def make(seed: int) -> RQLAgent:
        torch.manual_seed(seed)
        return RQLAgent(agent_config, obs_dim=5, action_dim=2, device=torch.device("cpu"))

    def batch(seed: int) -> ChunkBatch:
        g = torch.Generator().manual_seed(seed)
        return ChunkBatch(torch.randn(6, 5, generator=g), torch.rand(6, 3, 2, generator=g) * 2 - 1,
                          torch.rand(6, 3, generator=g), torch.ones(6, 3), (torch.rand(6, 3, generator=g) > 0.8).float(),
                          torch.randn(6, 5, generator=g))

    seeds = [4, 5, 6]
    singles, members = [make(s) for s in seeds], [make(s) for s in seeds]
    stack = StackedSeeds(members)
    for step in range(3):
        expected = [a.update(batch(10 * step + s), torch.Generator().manual_seed(s)) for a, s in zip(singles, seeds)]
        got = stack.update([batch(10 * step + s) for s in seeds], [torch.Generator().manual_seed(s) for s in seeds])
        for index, row in enumerate(expected):
            for term, value in row.items():
                assert abs(float(got[term][index]) - float(value)) < TOLERANCE, (step, term)
    for single, member in zip(singles, members):
        assert member.step == single.step == 3
        for (name, ours), (_, theirs) in zip(member.named_parameters(), single.named_parameters()):
            assert (ours - theirs).abs().max() < TOLERANCE, name
        ours_state, theirs_state = member.optimizer.state_dict()["state"], single.optimizer.state_dict()["state"]
        for index, state in theirs_state.items():
            assert float(ours_state[index]["step"]) == float(state["step"])
            assert (ours_state[index]["exp_avg_sq"] - state["exp_avg_sq"]).abs().max() < TOLERANCE


def test_stacked_acting_draws_each_seeds_noise_and_gives_its_own_chunks():
    agent_config = RQLConfig(actor_hidden_dims=[16, 16], value_hidden_dims=[16], ensemble_size=2, horizon=3,
                             flow_steps=4)
    agents = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        agents.append(RQLAgent(agent_config, obs_dim=5, action_dim=2, device=torch.device("cpu")))
    observations = {0: torch.randn(3, 5), 2: torch.randn(1, 5)}  # seed index 1 needs no chunk this call
    generators = [torch.Generator().manual_seed(10 + m) for m in range(3)]
    own_generators = [torch.Generator().manual_seed(10 + m) for m in range(3)]
    chunks = StackedActing(agents).act(observations, generators)
    assert set(chunks) == {0, 2}
    for member, obs in observations.items():
        alone = agents[member].act(obs, own_generators[member])
        assert chunks[member].shape == alone.shape == (obs.shape[0], 3, 2)
        assert (chunks[member] - alone).abs().max() < TOLERANCE
    for ours, theirs in zip(generators, own_generators):  # each drew exactly what its own act drew
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_a_groups_periodic_evaluation_gives_each_seed_its_episodes_alone(data, tmp_path):
    from rql_cli.evaluation import evaluate_agent
    from rql_cli.io.resolve import load_checkpoint

    settings = dict(steps=4, eval_interval=4, eval_episodes=2, save_interval=4)  # one env each: 2 workers in all
    train_group(config(**settings), data, tmp_path / "group", [2, 0])
    for seed in (0, 2):
        with open(seed_dir(tmp_path / "group", seed) / "eval.csv") as handle:
            [row] = list(csv.DictReader(handle))
        loaded = load_checkpoint(str(seed_dir(tmp_path / "group", seed)))  # the weights the evaluation saw
        alone = evaluate_agent(loaded.agent, loaded.meta.task_name, config(seed=seed, **settings), 4)
        assert (float(row["success_rate"]), float(row["mean_return"])) == pytest.approx(
            (alone.success_rate, alone.mean_return), rel=1e-6), seed


class _StopAt(TrainObserver):
    """Sends this process SIGTERM when the loop logs ``step``, as `kill` would."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("update", ["stacked", "threaded"])
def test_a_group_resumed_after_sigterm_continues_every_seed_exactly(update, data, tmp_path):
    run = config(steps=30, group_update=update, save_interval=0)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_group(run, data, whole, [0, 1])
    stopped = train_group(run, data, cut, [0, 1], observer=_StopAt(12))
    assert stopped.interrupted and stopped.step == 12 and stopped.resume_command == f"rql train --resume {cut}"
    for seed in (0, 1):
        assert latest(seed_dir(cut, seed)).name == "step_00000012"  # SIGTERM saved every seed
    resumed = train_group(run, data, cut, [0, 1], resume=True)
    assert resumed.step == 30 and not resumed.interrupted
    for seed in (0, 1):
        assert losses(seed_dir(cut, seed)) == losses(seed_dir(whole, seed))
        ours, theirs = weights(seed_dir(cut, seed)), weights(seed_dir(whole, seed))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        assert torch.equal(train_state(seed_dir(cut, seed))["optimizer.0.exp_avg"],
                           train_state(seed_dir(whole, seed))["optimizer.0.exp_avg"])


@pytest.mark.parametrize("update", ["stacked", "threaded"])
def test_a_nan_in_one_seed_stops_that_seed_only(update, data, tmp_path, monkeypatch):
    original = GroupSession.advance

    def advance_then_poison(self, window, observer):
        original(self, window, observer)
        if self.position == 30:  # plant a NaN in seed 1's weights after step 30 (checkpoint at 20)
            with torch.no_grad():
                self.members[1].agent.velocity.mlp.out.weight.fill_(float("nan"))

    monkeypatch.setattr(GroupSession, "advance", advance_then_poison)
    stops: list[tuple[int, str]] = []

    class Watch(TrainObserver):
        def on_seed_stopped(self, seed: int, message: str) -> None:
            stops.append((seed, message))

    group = tmp_path / "group"
    outcome = train_group(config(steps=50, save_interval=20, group_update=update), data, group, [0, 1, 2],
                          observer=Watch())
    assert outcome.step == 50 and not outcome.interrupted
    assert [seed for seed, _ in stops] == [1] and "step 31" in stops[0][1]
    stopped = read_group_record(group).stopped
    assert list(stopped) == [1] and stopped[1]["step"] == 31
    assert stopped[1]["checkpoint"].endswith("step_00000020") and stopped[1]["checkpoint"] in stops[0][1]
    for seed, step in ((0, 50), (1, 20), (2, 50)):
        agent, meta = load_agent(latest(seed_dir(group, seed)))
        assert meta.step == step and all(torch.isfinite(p).all() for p in agent.parameters())
    assert len(losses(seed_dir(group, 1))) == 30  # its log ends with its last good window
    # A resume continues the seeds that were training; the stopped one stays as it was.
    assert train_group(config(steps=60, save_interval=20, group_update=update), data, group, [0, 1, 2],
                       resume=True).step == 60
    assert latest(seed_dir(group, 1)).name == "step_00000020" and latest(seed_dir(group, 2)).name == "step_00000060"


@pytest.fixture(scope="module")
def cli_group(tiny_dataset_dir, tmp_path_factory) -> Path:
    """`rql train --seeds 3,5` for 4 steps through the CLI."""
    group = tmp_path_factory.mktemp("cli") / "group"
    result = invoke("train", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--seeds", "3,5",
                    "--steps", "4", "--eval-episodes", "0", "--device", "cpu", "--out", str(group), "--quiet",
                    *[f"--set={k}={json.dumps(v)}" for k, v in SMALL.items() if k not in ("device", "eval_episodes")])
    assert result.exit_code == 0, result.output
    return group


def test_rql_eval_of_a_group_reports_each_seed_and_the_mean_over_seeds(cli_group, tmp_path):
    report = tmp_path / "report.json"
    result = invoke("eval", "--checkpoint", str(cli_group), "--episodes", "2", "--device", "cpu", "--json",
                    str(report))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mean of 2" in text and "Student t 95% interval over seeds" in text and "Wilson" in text
    payload = json.loads(report.read_text())
    assert set(payload["seeds"]) == {"3", "5"}
    rates = [payload["seeds"][s]["tasks"][0]["success_rate"] for s in ("3", "5")]
    assert payload["across_seeds"][0]["mean_success_rate"] == pytest.approx(sum(rates) / 2)


def test_rql_eval_of_a_group_gives_each_seed_the_episodes_of_its_own_eval(cli_group, monkeypatch):
    """All seeds' envs together: each seed's policy sees the observations it sees alone (which depend on
    every action it took before), and the episodes end alike."""
    from rql_cli.envs import policy
    from rql_cli.evaluation import evaluate_checkpoint, evaluate_group
    from rql_cli.io.resolve import load_checkpoint

    seen: dict[str, list] = {"together": [[], []], "alone": []}
    seed_policies, chunk_policy = policy.seed_policies, policy.chunk_policy

    def watched_seed_policies(*args, **kwargs):
        inner = seed_policies(*args, **kwargs)
        def policies(rows):
            for member, obs in rows.items():
                seen["together"][member].append(obs.copy())
            return inner(rows)
        return policies

    def watched_chunk_policy(*args, **kwargs):
        inner = chunk_policy(*args, **kwargs)
        def act(obs):
            seen["alone"].append(obs.copy())
            return inner(obs)
        return act

    monkeypatch.setattr(policy, "seed_policies", watched_seed_policies)
    monkeypatch.setattr(policy, "chunk_policy", watched_chunk_policy)
    options = dict(tasks=[None], episodes=3, seed=4, num_envs=2)  # 3 episodes on 2 envs per seed
    together = evaluate_group(cli_group, torch.device("cpu"), best=False, together=True, **options)
    for member, seed in enumerate((3, 5)):
        seen["alone"] = []
        alone = evaluate_checkpoint(load_checkpoint(str(seed_dir(cli_group, seed))), **options)
        ours, theirs = together.reports[seed].tasks[0], alone.tasks[0]
        assert (ours.seeds, ours.successes, ours.returns, ours.lengths, ours.policy_rows) == (
            theirs.seeds, theirs.successes, theirs.returns, theirs.lengths, theirs.policy_rows)
        assert len(seen["together"][member]) == len(seen["alone"]) == ours.policy_calls > 0
        for got, expected in zip(seen["together"][member], seen["alone"], strict=True):
            assert np.array_equal(got, expected), seed


def test_a_group_folder_where_one_checkpoint_is_needed_names_a_seeds_folder(cli_group, tmp_path):
    for args in (["rollout", "--checkpoint", str(cli_group), "--episodes", "1"],
                 ["export", "--checkpoint", str(cli_group), "--out", str(tmp_path / "policy.onnx")]):
        assert_refused(invoke(*args), "group of 2 seeds", str(seed_dir(cli_group, 3)), f"rql eval --checkpoint {cli_group}")
    assert_refused(invoke("finetune", "--checkpoint", str(cli_group), "--online-steps", "10"),
                   "seed group", "online fine-tuning takes one agent", str(seed_dir(cli_group, 3)))
    assert not (tmp_path / "policy.onnx").exists()


def test_a_group_fine_tuned_offline_is_each_seed_fine_tuned_alone_and_resumes(cli_group, tiny_dataset_dir, tmp_path):
    common = ["--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--eval-episodes", "0", "--device", "cpu",
              "--set", "log_interval=1", "--quiet"]
    group = tmp_path / "ft-group"
    done = invoke("finetune", "--checkpoint", str(cli_group), "--steps", "3", "--out", str(group), *common)
    assert done.exit_code == 0, done.output
    assert read_group_record(group).seeds == [3, 5]
    for seed in (3, 5):
        alone = tmp_path / f"ft-{seed}"
        done = invoke("finetune", "--checkpoint", str(seed_dir(cli_group, seed)), "--steps", "3", "--seed", str(seed),
                      "--out", str(alone), *common)
        assert done.exit_code == 0, done.output
        assert losses(seed_dir(group, seed)) == losses(alone)  # the sequential update: exactly
        lineage = json.loads((seed_dir(group, seed) / "train_config.json").read_text())["parent"]
        assert lineage["ref"] == str(seed_dir(cli_group, seed)) and lineage["method"] == "offline"
    done = invoke("finetune", "--resume", str(group), "--set", "steps=5", "--quiet")
    assert done.exit_code == 0, done.output
    assert all(len(losses(seed_dir(group, s))) == 5 for s in (3, 5))


def test_a_group_seed_folder_is_an_ordinary_run_for_eval_and_rollout(cli_group, tmp_path):
    member = seed_dir(cli_group, 5)
    assert invoke("eval", "--checkpoint", str(member), "--episodes", "1", "--device", "cpu").exit_code == 0
    env = {**os.environ, "MUJOCO_GL": "egl"}
    done = subprocess.run([sys.executable, "-m", "rql_cli", "rollout", "--checkpoint", str(member), "--episodes", "1",
                           "--max-steps", "5", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_group_seed_folder_pushes_to_the_hub(cli_group, hub, tmp_path):
    from hub_server import hub_env

    done = subprocess.run([sys.executable, "-m", "rql_cli", "push", str(seed_dir(cli_group, 3)), "--repo-id",
                           "alice/seed3", "--no-video"], env=hub_env(hub, tmp_path / "hf", token=hub.token),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "config.json" in hub.state.files("alice/seed3")


def test_rql_train_resume_of_a_group_folder_continues_the_group(cli_group, tmp_path):
    group = tmp_path / "group"
    shutil.copytree(cli_group, group)
    result = invoke("train", "--resume", str(group), "--steps", "6", "--quiet")
    assert result.exit_code == 0, result.output
    for seed in (3, 5):
        assert latest(seed_dir(group, seed)).name == "step_00000006"


@pytest.mark.parametrize(("text", "seeds"), [("0-3", [0, 1, 2, 3]), ("0,3,5", [0, 3, 5]), ("0-1, 8", [0, 1, 8]),
                                             ("7", [7])])
def test_seed_lists_parse(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [("3-1", "runs backwards"), ("a", "neither"), ("0,0", "twice"),
                                               ("0-999", "more than 256"), ("", "neither")])
def test_bad_seed_lists_are_refused(text, message):
    with pytest.raises(RQLError, match=message):
        parse_seeds(text)


def test_seeds_beside_seed_is_refused_before_any_work(tmp_path):
    assert_refused(invoke("train", "--dataset", TINY_NAME, "--seeds", "0-1", "--seed", "3", "--out", str(tmp_path / "x")),
                   "--seeds starts a group", "drop --seed")
    assert not (tmp_path / "x").exists()
