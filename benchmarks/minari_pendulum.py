"""A short learning run on a Minari dataset made here, against a near-BC run of the same length.

Makes a D4RL-style "medium-replay" set for Pendulum-v1 with minari's own writer: half the episodes
from a scripted swing-up controller with Gaussian action noise, half from uniformly random actions.
Its reference returns (D4RL's normalisation: 0 = random policy, 100 = the noiseless controller) are
measured here on 20 episodes each and stored in the dataset. Then it trains RQL with the stated
preset for Minari sets (`rql list`: h=1, expectile 0.7, rho 0.5, alpha 1) and a near-BC run
(alpha 1000) through the real CLI, and evaluates both (normalised score over 20 episodes):

    python benchmarks/minari_pendulum.py --steps 10000 --work /tmp/pendulum
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATASET_ID = "rql/pendulum/medium-replay-v0"
SMALL = ["actor_hidden_dims=[256,256]", "value_hidden_dims=[256,256]", "ensemble_size=2", "compile=off",
         "threads=1"]


def swing_up(observation: np.ndarray) -> float:
    """Torque of a scripted controller: pump energy up to the top's, then PD control near the top.

    Pendulum-v1 moves by angle'' = 15 sin(angle) + 3 torque (angle 0 at the top), so
    0.5 speed^2 + 15 cos(angle) is conserved without torque and equals 15 at rest on top.
    """
    cos, sin, speed = observation
    angle = np.arctan2(sin, cos)
    if cos > 0.8:
        return float(np.clip(-(30.0 * angle + 6.0 * speed) / 3.0, -2.0, 2.0))
    energy = 0.5 * speed**2 + 15.0 * cos
    push = 1.0 if energy < 15.0 else -1.0
    return float(2.0 * push * (1.0 if speed >= 0 else -1.0))


def rollouts(kind: str, episodes: int, seed: int, noise: float = 0.0) -> list[tuple[np.ndarray, ...]]:
    import gymnasium

    env = gymnasium.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    out = []
    for index in range(episodes):
        observation, _ = env.reset(seed=seed * 10_000 + index)
        observations, actions, rewards, done = [observation], [], [], False
        while not done:
            if kind == "random":
                action = rng.uniform(-2, 2, size=1)
            else:
                action = np.clip([swing_up(observation) + noise * rng.standard_normal()], -2, 2)
            observation, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
            observations.append(observation)
            actions.append(action.astype(np.float32))
            rewards.append(reward)
            done = terminated or truncated
        out.append((np.array(observations), np.array(actions), np.array(rewards)))
    env.close()
    return out


def make_dataset(episodes: int) -> tuple[float, float]:
    import gymnasium
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    random_return = float(np.mean([r.sum() for _, _, r in rollouts("random", 20, seed=7)]))
    expert_return = float(np.mean([r.sum() for _, _, r in rollouts("controller", 20, seed=8)]))
    data = rollouts("controller", episodes // 2, seed=1, noise=1.0) + rollouts("random", episodes - episodes // 2, seed=2)
    buffers = []
    for index, (observations, actions, rewards) in enumerate(data):
        truncations = np.zeros(len(rewards), bool)
        truncations[-1] = True  # Pendulum ends by its time limit only
        buffers.append(EpisodeBuffer(id=index, observations=observations, actions=actions, rewards=rewards,
                                     terminations=np.zeros(len(rewards), bool), truncations=truncations))
    minari.create_dataset_from_buffers(
        DATASET_ID, buffers, env=gymnasium.make("Pendulum-v1"), algorithm_name="scripted swing-up + noise, and random",
        ref_min_score=random_return, ref_max_score=expert_return, author="rql benchmarks",
        author_email="none", code_permalink="benchmarks/minari_pendulum.py",
        description="Half noisy scripted swing-up episodes, half random-action episodes.",
    )
    return random_return, expert_return


def train_and_score(name: str, alpha: float, steps: int, work: Path, episodes: int) -> dict:
    """One run, scored by its own evaluation at its last step (what `rql eval --seed 0 --envs 1` reports)."""
    run = work / name
    command = [sys.executable, "-m", "rql_cli", "train", "--dataset", f"minari:{DATASET_ID}", "--steps", str(steps),
               "--eval-episodes", str(episodes), "--eval-interval", str(steps), "--eval-envs", "1", "--device", "cpu",
               "--seed", "0", "--quiet", "--out", str(run), "--set", f"alpha={alpha}"]
    for item in SMALL:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    report = run / "checkpoints" / f"step_{steps:08d}" / "metrics.json"
    return json.loads(report.read_text())["tasks"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100, help="Dataset episodes (200 steps each).")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rql-pendulum-"))
    os.environ["MINARI_DATASETS_PATH"] = str(work / "minari")
    from rql_cli.minari_store import is_local, load

    if not is_local(DATASET_ID):
        low, high = make_dataset(args.episodes)
    else:
        metadata = load(DATASET_ID).storage.metadata
        low, high = metadata["ref_min_score"], metadata["ref_max_score"]
    print(f"{DATASET_ID}: {args.episodes} episodes; reference returns: random {low:.1f}, controller {high:.1f}")
    for name, alpha in (("rql", 1.0), ("near-bc", 1000.0)):
        task = train_and_score(name, alpha, args.steps, work, args.eval_episodes)
        score, (lo, hi) = task["normalized_score"], task["normalized_score_ci95"]
        print(f"{name:8s} alpha {alpha:<6g} {args.steps:,} steps: normalised score {score:5.1f} [{lo:.1f}, {hi:.1f}], "
              f"mean return {task['mean_return']:.1f} over {task['episodes']} episodes")


if __name__ == "__main__":
    main()
