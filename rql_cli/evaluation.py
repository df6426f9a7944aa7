"""Evaluating a checkpoint: resolve it, load it, check it fits the env, run each task, report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rql_cli.errors import CheckpointError


@dataclass
class CheckpointReport:
    """Per-task evaluation results of one checkpoint (JSON-friendly through ``to_dict``)."""

    checkpoint: str
    dataset: str
    step: int
    device: str
    tasks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean_success_rate(self) -> float:
        return sum(t["success_rate"] for t in self.tasks) / max(len(self.tasks), 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            checkpoint=self.checkpoint,
            dataset=self.dataset,
            step=self.step,
            device=self.device,
            mean_success_rate=self.mean_success_rate,
            tasks=self.tasks,
        )


def check_dims_against_env(meta: Any, env_id: str, task: int | None, env: Any = None) -> None:
    """Raise CheckpointError when the checkpoint's obs/action dims differ from the env's.

    ``env``: an env already built for ``env_id`` to read the dims from (left open); None builds one.
    """
    from rql_cli.envs.make import make_eval_env

    own_env = env is None
    if own_env:
        env = make_eval_env(env_id, task)
    try:
        env_obs = int(env.observation_space.shape[-1])
        env_act = int(env.action_space.shape[-1])
    finally:
        if own_env:
            env.close()
    if (env_obs, env_act) != (meta.obs_dim, meta.action_dim):
        raise CheckpointError(
            f"The checkpoint does not fit {env_id}: the checkpoint expects observations of size "
            f"{meta.obs_dim} and actions of size {meta.action_dim}; the environment gives "
            f"observations of size {env_obs} and actions of size {env_act}."
        )


def evaluate_checkpoint(
    ref: str,
    *,
    tasks: list[int | None],
    episodes: int = 50,
    seed: int = 0,
    num_envs: int | None = None,
    device: str = "auto",
    dataset: str | None = None,
    best: bool = False,
    on_task_start: Callable[[int | None], None] | None = None,
    on_episode: Callable[[int, int, float], None] | None = None,
) -> CheckpointReport:
    """Evaluate the EMA policy of checkpoint ``ref`` on each task in ``tasks`` (None = its own).

    ``dataset`` evaluates in another env of the same dims (e.g. the -noisy twin); by default
    the checkpoint's own env is used. Flow noise is seeded from ``seed`` per task.
    """
    from rql_cli.core.device import make_generator, resolve_device
    from rql_cli.envs.evaluate import evaluate
    from rql_cli.envs.policy import chunk_policy
    from rql_cli.io.checkpoint import load_agent
    from rql_cli.io.resolve import resolve_checkpoint

    folder = resolve_checkpoint(ref, best=best)
    torch_device = resolve_device(device)
    agent, meta = load_agent(folder, torch_device)
    env_name = dataset or meta.env_id
    check_dims_against_env(meta, env_name, tasks[0])
    report = CheckpointReport(
        checkpoint=str(folder), dataset=meta.dataset, step=meta.step, device=str(torch_device)
    )
    for index, task in enumerate(tasks):
        if on_task_start:
            on_task_start(task)
        generator = make_generator(torch_device, seed * 1000 + index)
        started = time.perf_counter()
        result = evaluate(
            chunk_policy(agent, generator),
            env_name,
            task,
            episodes=episodes,
            num_envs=num_envs,
            seed=seed,
            on_episode=on_episode,
        ).to_dict()
        result["wall_seconds"] = time.perf_counter() - started
        report.tasks.append(result)
    return report


def save_metrics_into(folder: Path, report: CheckpointReport) -> Path:
    """Write the report as the checkpoint's metrics.json (atomically)."""
    from rql_cli.io.checkpoint import write_json_atomic

    path = Path(folder) / "metrics.json"
    write_json_atomic(path, report.to_dict())
    return path
