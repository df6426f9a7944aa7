"""The model card (README.md) of a pushed checkpoint, built from its config.json and metrics.json.

The card's metadata carries ``eval_results`` made from the measured metrics only, so the Hub shows
a score exactly when one was measured; without metrics the card says how to measure one.
``huggingface_hub`` is imported inside the functions that build the card (it takes a second).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.config import FIELD_HELP, RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.checkpoint_meta import CheckpointMeta
from rql_cli.io.metrics import EvaluationReport
from rql_cli.io.reproduce import preset_values, reproduce_command
from rql_cli.io.run_layout import CURVES_FILE
from rql_cli.names import ExternalName

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData


LIBRARY_NAME = "rql"
TAGS = ("reinforcement-learning", "offline-rl", "flow-matching", "rql")
CITATION = """@article{oberai2026reversal,
  title   = {Reversal Q-Learning},
  author  = {Oberai and Park and Levine},
  journal = {arXiv preprint arXiv:2606.17551},
  year    = {2026}
}"""


EVIDENCE_FILE = "evidence.json"
"""Optional file of a checkpoint folder (the bundled agents have one) with what backs its numbers:
``dataset_recipe`` (the `rql data generate` command), ``train_command``, ``train_wall_time_s``,
``machine``, ``control`` ({name, command, success_rate, success_ci95, episodes}: a near-BC run of the
same length), ``paper`` ({success_rate, source}: the paper's RQL number for the task, if any) and
``goal`` ({success_rate, why, note}: the success the agent was meant to reach, why, and what reaching
it would take where it falls short) and ``family`` (a list of {name, task, success_rate, success_ci95,
episodes, control_success_rate}: the agents for each task of this environment published beside it,
this one included) and, for an agent fine-tuned online, ``online_route`` ({start: {ref, step,
success_rate, success_ci95, episodes}: the checkpoint it started from; offline: {name, command,
success_rate, success_ci95, episodes}: the same start trained offline for as many gradient steps, the
online route's control}), all measured on the agent's own episodes."""


def read_evidence(folder: Path | str) -> dict[str, Any] | None:
    """The folder's evidence.json as a dict, None when absent; RQLError when it is not a JSON object."""
    path = Path(folder) / EVIDENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RQLError(f"{path} is not readable JSON ({error}).") from None
    if not isinstance(data, dict):
        raise RQLError(f"{path} must hold a JSON object, not a {type(data).__name__}.")
    return data


def _interval_text(success_rate: float, ci95: Sequence[float] | None, episodes: int | None) -> str:
    low, high = ci95 or (float("nan"), float("nan"))
    return f"{pct(success_rate)} [{pct(low)}, {pct(high)}] over {'?' if episodes is None else episodes} episodes"


def _evidence_section(report: EvaluationReport | None, evidence: dict[str, Any] | None, curves: bool) -> list[str]:
    """What backs the numbers: the control, the paper, the data recipe, the command, the curves."""
    if not evidence and not curves:
        return []
    lines = ["## Evidence", ""]
    evidence = evidence or {}
    if report and report.tasks:
        first = report.tasks[0]
        lines.append(f"- this agent: {_interval_text(first.success_rate, first.success_ci95, first.episodes)}")
    lines += _online_route_lines(evidence.get("online_route"))
    control = evidence.get("control")
    if control:
        lines += _measured_lines(control.get("name", "control"), control)
    paper = evidence.get("paper")
    if paper:
        number = pct(paper["success_rate"]) if paper.get("success_rate") is not None else "not reported"
        lines.append(f"- the paper's RQL on this task: {number} ({paper.get('source', 'arXiv 2606.17551')})")
    goal = evidence.get("goal")
    if goal and goal.get("success_rate") is not None:
        line = f"- the goal: {pct(goal['success_rate'])}" + (f" ({goal['why']})" if goal.get("why") else "")
        measured = report.tasks[0].success_rate if report and report.tasks else None
        reached = measured is not None and measured >= goal["success_rate"]
        if measured is not None:
            line += f": {'reached' if reached else '**not reached**'} ({pct(measured)})"
        # the note says what reaching the goal would take: only where it is not reached
        lines.append(line + (f". {goal['note']}" if goal.get("note") and not reached else ""))
    for key, label in (("dataset_recipe", "data, made here"), ("train_command", "training command")):
        if evidence.get(key):
            lines += [f"- {label}:", "", "  ```bash", f"  {evidence[key]}", "  ```"]
    if evidence.get("train_wall_time_s"):
        machine = f" on {evidence['machine']}" if evidence.get("machine") else ""
        lines.append(f"- training took {evidence['train_wall_time_s'] / 3600:.2f} h{machine}")
    if evidence.get("family"):
        lines += ["", *_family_table(evidence["family"])]
    if curves:
        lines += ["", "![training curves: success with its 95% interval, losses, values](curves.png)"]
    return [*lines, ""]


def _online_route_lines(route: dict[str, Any] | None) -> list[str]:
    """Where online fine-tuning took the agent: its start, and the same start trained offline instead."""
    if not route:
        return []
    start, offline = route["start"], route["offline"]
    return [*_measured_lines(f"before online fine-tuning (`{start['ref']}`, step {start['step']:,})", start),
            *_measured_lines(offline.get("name", "the start trained offline instead"), offline)]


def _measured_lines(label: str, measured: dict[str, Any]) -> list[str]:
    """One evidence bullet: ``label``, the success with its interval, and the command that made it, if any."""
    shown = _interval_text(measured["success_rate"], measured.get("success_ci95"), measured.get("episodes"))
    command = measured.get("command")
    return [f"- {label}: {shown}", *(["", "  ```bash", f"  {command}", "  ```"] if command else [])]


def _family_table(family: list[dict[str, Any]]) -> list[str]:
    """The per-task table: one agent per task of the same environment, each with its own control."""
    lines = [
        "One agent per task of this environment, each measured the same way:", "",
        "| task | agent | success [95% CI] | episodes | near-BC control |", "|---|---|---|---|---|",
    ]
    for row in sorted(family, key=lambda r: r["task"]):
        low, high = row["success_ci95"]
        control = row.get("control_success_rate")
        lines.append(
            f"| {row['task']} | `{row['name']}` | {pct(row['success_rate'])} [{pct(low)}, {pct(high)}] | "
            f"{row['episodes']} | {'-' if control is None else pct(control)} |"
        )
    return lines


def pct(value: float) -> str:
    """0.1234 -> '12.3%'."""
    return f"{100 * value:.1f}%"


def _config_table(meta: CheckpointMeta) -> list[str]:
    preset = preset_values(meta)
    rows = ["| field | value | preset | meaning |", "|---|---|---|---|"]
    for name, value in meta.config.to_dict().items():
        default = preset.get(name)
        differs = f"`{json.dumps(default)}`" if name in preset and default != value else ""
        meaning = FIELD_HELP.get(name, "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{json.dumps(value)}` | {differs} | {meaning} |")
    return rows


def card_metadata(meta: CheckpointMeta, report: EvaluationReport | None, model_name: str) -> ModelCardData:
    """``huggingface_hub.ModelCardData``: library, tags, and one success rate and mean return per task."""
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = []
    for result in report.tasks if report else []:
        common: dict[str, Any] = dict(
            task_type="reinforcement-learning", task_name="Offline reinforcement learning",
            dataset_type=result.dataset_name or meta.dataset,
            dataset_name=result.env_id or meta.env_id,
            dataset_config=f"task{result.task}" if result.task is not None else None,
        )
        episodes = int(result.episodes or 0)
        ci95 = [round(float(x), 4) for x in result.success_ci95 or ()]
        eval_results.append(EvalResult(
            **common, metric_type="success_rate", metric_name="success rate",
            metric_value=round(float(result.success_rate), 4),
            metric_args={"episodes": episodes, "ci95": ci95},
        ))
        if result.mean_return is not None:
            eval_results.append(EvalResult(
                **common, metric_type="mean_return", metric_name="mean return",
                metric_value=round(float(result.mean_return), 3), metric_args={"episodes": episodes},
            ))
    return ModelCardData(
        library_name=LIBRARY_NAME, tags=[*TAGS, *_source_tags(meta)],
        pipeline_tag="reinforcement-learning", model_name=model_name, eval_results=eval_results or None,
    )


def _family(meta: CheckpointMeta) -> str | None:
    try:
        return meta.task_name.family
    except RQLError:
        return None


def _external(meta: CheckpointMeta) -> ExternalName | None:
    try:
        parsed = meta.task_name
    except RQLError:
        return None
    return parsed if isinstance(parsed, ExternalName) else None


def _source_tags(meta: CheckpointMeta) -> list[str]:
    """Hub tags (letters, digits, '-', '_', '.'): the data source, and the env family or id."""
    external = _external(meta)
    if external is None:
        family = _family(meta)
        return ["ogbench", *([family] if family else [])]
    return [external.source, re.sub(r"[^A-Za-z0-9_.-]+", "-", external.ident).strip("-").lower()]


def _dataset_words(meta: CheckpointMeta) -> str:
    """How the card names the training data: an OGBench dataset, a Minari dataset or a plain file."""
    external = _external(meta)
    if external is None:
        return f"the OGBench dataset `{meta.dataset}`"
    if external.source == "minari":
        return f"the Minari dataset `{external.ident}`"
    return f"a dataset file for the gymnasium env `{external.ident}`"


def _reproduce_hint(meta: CheckpointMeta) -> str:
    external = _external(meta)
    if external is None:
        return ("Reproduce the run (add `--dataset-dir DIR` where the dataset files are; "
                "`rql data generate` makes them):")
    if external.source == "minari":
        return f"Reproduce the run (`rql data download minari:{external.ident}` fetches the dataset):"
    return "Reproduce the run (add `--dataset-path FILE.npz`, the data it was trained on):"


def _results_section(meta: CheckpointMeta, report: EvaluationReport | None) -> list[str]:
    if not report or not report.tasks:
        return [
            "**Not evaluated yet.** This checkpoint carries no `metrics.json`, so no success rate is "
            "claimed. Measure it and push again:", "", "```bash", "rql eval --checkpoint FOLDER --save", "```",
        ]
    lines = ["| task | environment | success rate | 95% CI | episodes |", "|---|---|---|---|---|"]
    for result in report.tasks:
        low, high = result.success_ci95 or (float("nan"), float("nan"))
        task = "" if result.task is None else result.task
        episodes = "?" if result.episodes is None else result.episodes
        lines.append(
            f"| {task} | `{result.env_id or meta.env_id}` | "
            f"{pct(result.success_rate)} | [{pct(low)}, {pct(high)}] | {episodes} |"
        )
    first = report.tasks[0]
    return [*lines, "", (
        f"Measured by `rql eval` with the EMA policy (95% Wilson interval over the episodes; episode "
        f"seeds are in `metrics.json`), ogbench {first.ogbench_version or '?'}, success timing "
        f"`{first.success_timing or meta.success_timing}`."
    )]


def _usage_section(load_ref: str) -> list[str]:
    return [
        "## Use it", "", "```bash",
        f"rql eval --checkpoint {load_ref}          # download into the Hub cache, then evaluate",
        f"rql pull {load_ref}                       # download and verify only",
        f"rql rollout --checkpoint {load_ref} --render",
        "```", "", "```python",
        "from rql_cli.io.resolve import load_checkpoint",
        "",
        f'loaded = load_checkpoint("{load_ref}", device="cpu")  # loaded.agent, loaded.meta',
        "```", "",
    ]


def _lineage_lines(meta: CheckpointMeta) -> list[str]:
    """'Fine-tuned from ...' lines for a checkpoint made by `rql finetune`, else nothing."""
    lineage = meta.lineage
    if not lineage:
        return []
    where = lineage.get("repo_id") or lineage.get("ref", "?")
    commit = f" at commit `{lineage['commit']}`" if lineage.get("commit") else ""
    if lineage.get("method") == "online":
        how = (f"online in `{meta.env_id}` for {lineage.get('online_steps', 0):,} environment steps, "
               f"{lineage.get('utd', 1)} gradient step(s) per environment step, "
               + ("balanced offline/online batches" if lineage.get("balanced") else "batches uniform over the buffer")
               + ("" if lineage.get("offline_data", True) else ", without the offline data"))
    else:
        how = f"by {lineage.get('steps') or 0:,} more offline gradient steps"
    return [f"- fine-tuned from `{where}`{commit} (its step {lineage.get('step', 0):,}), {how}; "
            f"optimiser {lineage.get('optimizer', 'fresh')}"]


def _training_section(meta: CheckpointMeta, run: RunConfig | None, command: str | None) -> list[str]:
    """Steps, data, versions, the command that trains it (``command`` as run, else rebuilt) and its config."""
    of_run = f" (of a {run.steps:,}-step run)" if run is not None and run.steps > meta.step else ""
    return [
        "## Training", "",
        *_lineage_lines(meta),
        f"- training steps: {meta.step:,}{of_run}",
        f"- dataset: `{meta.dataset}`; environment: `{meta.env_id}`; observations {meta.obs_dim}, "
        f"actions {meta.action_dim}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items())),
        "",
        _reproduce_hint(meta),
        "", "```bash", command or reproduce_command(meta, run), "```", "",
        "### Config", "",
        "The preset column shows the task preset's value where this run differs from it.", "",
        *_config_table(meta), "",
    ]


def build_model_card(
    meta: CheckpointMeta,
    report: EvaluationReport | None,
    repo_id: str,
    *,
    files: list[str],
    video_name: str | None = None,
    revision: str | None = None,
    evidence: dict[str, Any] | None = None,
    run: RunConfig | None = None,
) -> ModelCard:
    """The README.md of a pushed checkpoint as a ``huggingface_hub.ModelCard``.

    Args:
        meta: the checkpoint's config.json.
        report: its metrics.json, or None (the card then says it is not evaluated yet).
        repo_id: ``user/name`` the card is for; ``revision`` its branch ('main' is left out of commands).
        files: the file names the commit publishes (listed in the card).
        video_name: the rollout video in the repo, if one is published.
        evidence: the folder's evidence.json (``read_evidence``), for the Evidence section.
        run: the config of the run that wrote the checkpoint, when known (its training command).
    """
    from huggingface_hub import ModelCard

    name = repo_id.split("/")[-1]
    load_ref = f"{repo_id}@{revision}" if revision and revision != "main" else repo_id
    lines = [
        f"# {name}", "",
        f"A **Reversal Q-Learning** (RQL) agent: a flow-matching policy over action chunks of "
        f"{meta.config.horizon} steps, trained offline on {_dataset_words(meta)} and "
        f"evaluated in `{meta.env_id}`. Made with `rql` (the rql-cli package).",
        "", "## Results", "",
        *_results_section(meta, report), "",
        *_evidence_section(report, evidence, curves=CURVES_FILE in files),
        *_usage_section(load_ref),
        *(["## Rollout", "", f"[{video_name}]({video_name})", ""] if video_name else []),
        # the command the evidence records is the one that ran, with its run settings; rebuilt otherwise
        *_training_section(meta, run, (evidence or {}).get("train_command")),
        "## Files", "", *[f"- `{file}`" for file in sorted(files)], "",
        "Weights are safetensors (no pickle): loading them never runs code.", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    data = card_metadata(meta, report, name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
