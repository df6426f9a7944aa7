"""Make a bundled agent (a folder under checkpoints/) from a finished run, with the evidence behind it.

Evaluates the run's final checkpoint and its near-BC control run on the same episodes, writes its
weights (all four networks, or with --slim the acting field and the value ensemble; no train state) and
config, writes metrics.json, evidence.json, curves.png, a short labelled
rollout video and the model card. A maintainer's tool; every number it writes it measures itself.

    python tools/bundle_agent.py --run runs/cube-a10 --control runs/cube-bc --name cube-single-task2-rql \\
        --recipe "rql data generate cube-single-play-v0 --episodes 1000 --seed 0 --workers 2 --out data" \\
        --paper-source "cube-single is not in the paper"
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path

# The tool films a rollout after evaluating: mujoco picks its GL backend at first import, so choose the
# headless one before anything imports it.
os.environ.setdefault("MUJOCO_GL", "egl")

import torch

from rql_cli.evaluation import evaluate_checkpoint
from rql_cli.io.atomic import write_json_atomic
from rql_cli.io.checkpoint import save_checkpoint
from rql_cli.io.checkpoint_meta import read_meta
from rql_cli.io.metrics import EvaluationReport, read_metrics, write_metrics
from rql_cli.io.model_card import EVIDENCE_FILE, build_model_card, read_evidence
from rql_cli.io.reproduce import reproduce_command, restate_preset_values
from rql_cli.io.resolve import load_checkpoint
from rql_cli.io.run_record import read_run_record
from rql_cli.rollout import run_rollout

REPO = Path(__file__).resolve().parents[1]
VIDEO_LIMIT_BYTES = 2 * 2**20


def measure(ref: str, episodes: int, task: int | None = None) -> tuple[object, EvaluationReport]:
    loaded = load_checkpoint(ref, torch.device("cpu"))
    report = evaluate_checkpoint(loaded, tasks=[task], episodes=episodes, seed=0)
    return loaded, report


def wall_time_s(run: Path) -> float | None:
    """Training seconds of the whole run. Runs resumed before the clock went on across resumes restarted
    metrics.csv's wall_time on each resume: a drop marks one, and the sessions are added up."""
    if not (run / "metrics.csv").is_file():
        return None
    with open(run / "metrics.csv") as handle:
        times = [float(row["wall_time"]) for row in csv.DictReader(handle)]
    if not times:
        return None
    total = sum(before for before, after in zip(times, times[1:]) if after < before)
    return total + times[-1]


def interval_of(report: EvaluationReport) -> dict:
    task = report.tasks[0]
    return dict(success_rate=task.success_rate, success_ci95=list(task.success_ci95), episodes=task.episodes)


def measure_control(args: argparse.Namespace) -> dict:
    """The control run's evidence: measured here on the same episodes as the agent."""
    control_loaded, control = measure(str(args.control), args.episodes, args.control_task)
    return dict(name=args.control_name,
                command=reproduce_command(control_loaded.meta, read_run_record(args.control).config),
                **interval_of(control), step=control_loaded.meta.step)


def measure_online_route(meta, continuation: Path, episodes: int) -> dict:
    """For an agent fine-tuned online: the checkpoint it started from, and ``continuation`` (the same start
    trained offline for as many gradient steps: the online route's control), on the agent's episodes."""
    lineage = meta.lineage or {}
    if lineage.get("method") != "online":
        raise SystemExit("--offline-continuation is for a run fine-tuned online; this run's lineage is "
                         f"{lineage.get('method') or 'none'}")
    offline_loaded, offline = measure(str(continuation), episodes)
    if (offline_loaded.meta.lineage or {}).get("ref") != lineage["ref"]:
        raise SystemExit(f"{continuation} did not start from {lineage['ref']}, the online run's start")
    _, start = measure(lineage["ref"], episodes)
    steps = offline_loaded.meta.lineage["steps"]
    return dict(
        start=dict(ref=lineage["ref"], step=lineage["step"], **interval_of(start)),
        offline=dict(name=f"the same start trained {steps:,} more offline steps instead (the online route's control)",
                     command=reproduce_command(offline_loaded.meta, read_run_record(continuation).config),
                     **interval_of(offline)),
    )


def kept_control(folder: Path) -> dict:
    """The control measured for the bundled agent in ``folder``, which the new run replaces (read before
    anything there is overwritten)."""
    control = (read_evidence(folder) or {}).get("control")
    if not control:
        raise SystemExit(f"--keep-control: {folder} has no control in its {EVIDENCE_FILE}")
    return dict(control)


def goal_of(args: argparse.Namespace) -> dict | None:
    if args.goal_rate is None:
        return None
    return dict(success_rate=args.goal_rate, why=args.goal_why, note=args.goal_note)


def family_rows(root: Path, env_family: str) -> list[dict]:
    """The per-task table of the bundled agents of one environment (read from their own files)."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()):
        meta, _ = read_meta(folder)
        if meta.dataset != env_family:
            continue
        first = read_metrics(folder).tasks[0]
        control = (read_evidence(folder) or {}).get("control") or {}
        rows.append(dict(name=folder.name, task=first.task, success_rate=first.success_rate,
                         success_ci95=list(first.success_ci95), episodes=first.episodes,
                         control_success_rate=control.get("success_rate")))
    return rows


def refresh_family(root: Path, name: str) -> None:
    """Put the per-task table into every bundled agent of ``name``'s environment (when there are
    several) and rewrite their cards."""
    dataset = read_meta(root / name)[0].dataset
    rows = family_rows(root, dataset)
    if len(rows) < 2:
        return
    for row in rows:
        folder = root / row["name"]
        evidence = read_evidence(folder) or {}
        evidence["family"] = rows
        write_json_atomic(folder / EVIDENCE_FILE, evidence)
        rewrite_card(folder, None)


def film(out: Path, episodes: int) -> Path:
    """A labelled 320x240 rollout of ``episodes`` episodes, fewer while the file is over the limit."""
    for count in range(episodes, 0, -1):
        video = Path(run_rollout(str(out), episodes=count, render=True, out=out / "rollout.mp4",
                                 size=(320, 240), device="cpu").video)
        if video.stat().st_size <= VIDEO_LIMIT_BYTES:
            return video
    raise SystemExit(f"{video} is {video.stat().st_size / 2**20:.1f} MB even with one episode")


def restate_train_part(command: str, meta) -> str:
    """``command`` with its `rql train` part (if any) kept exact under today's preset; a `rql finetune`
    takes its agent's fields from its checkpoint, so it stays as written."""
    first, *rest = command.split(" && ")
    if first.startswith("rql train "):
        first = restate_preset_values(first, first, meta)
    return " && ".join([first, *rest])


def rewrite_card(out: Path, goal: dict | None) -> None:
    """Rebuild a bundled agent's card from the files it already has (no new measurement)."""
    meta, _ = read_meta(out)
    evidence = read_evidence(out) or {}
    if goal is not None:
        evidence["goal"] = goal
    # the command leaves out what equals today's preset: written again, it stays exact when a preset changes;
    # the control's, whose config the bundle does not keep, gains --set for what its agent's command left out
    control = evidence.get("control") or {}
    command = evidence.get("train_command")
    if control.get("command") and command:
        control["command"] = restate_preset_values(control["command"], command, meta)
    # the agent's own command, written with its run's settings, gains only what a changed preset took away
    evidence["train_command"] = restate_train_part(command, meta) if command else reproduce_command(meta)
    write_json_atomic(out / EVIDENCE_FILE, evidence)
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "README.md")
    video = "rollout.mp4" if (out / "rollout.mp4").is_file() else None
    card = build_model_card(meta, read_metrics(out), f"rql/{out.name}", files=[*files, "README.md"],
                            video_name=video, evidence=evidence)
    card.save(out / "README.md")
    print(f"{out.name}: card rewritten")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="the finished run to bundle (with --card-only: refresh its training time)")
    parser.add_argument("--control", type=Path, help="the near-BC run of the same length (not with --card-only)")
    parser.add_argument("--keep-control", action="store_true",
                        help="instead of --control: keep the control measured for the agent this run replaces "
                        "(its evidence.json), for a rerun of the same task, data, networks and steps")
    parser.add_argument("--control-of", help="with --keep-control: the bundled agent whose control to keep "
                        "(an agent fine-tuned from it), instead of --name")
    parser.add_argument("--offline-continuation", type=Path,
                        help="for a run fine-tuned online: the run that trained the same start offline for as "
                        "many gradient steps (the card shows the start, this and the agent on the same episodes)")
    parser.add_argument("--control-name", default="near-BC control (alpha 1000, same data and steps)")
    parser.add_argument("--control-task", type=int, default=None,
                        help="evaluate the control on this task (a near-BC run trained with another task's "
                        "rewards; say so in --control-name)")
    parser.add_argument("--slim", action="store_true",
                        help="keep only the EMA field that acts and the value ensemble (half the bytes). Measured "
                        "(docs/results.md): 10,000 online steps from a slim puzzle-3x3 task-4 start reached 72%% "
                        "against 93%% from the full one, so agents meant as fine-tuning starts stay full")
    parser.add_argument("--name", required=True)
    parser.add_argument("--recipe", help="the `rql data generate` command that made the data (not with --card-only)")
    parser.add_argument("--paper-rate", type=float, help="the paper's RQL success on this task, if any")
    parser.add_argument("--paper-source", default="Oberai, Park and Levine (2026), arXiv 2606.17551")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--video-episodes", type=int, default=2)
    parser.add_argument("--machine", default="2 CPU cores (AMD EPYC), one thread")
    parser.add_argument("--root", type=Path, default=REPO / "checkpoints", help="where bundled agents live")
    parser.add_argument("--goal-rate", type=float, help="the success the agent was meant to reach")
    parser.add_argument("--goal-why", help="where the goal comes from (the paper, the hub's aim)")
    parser.add_argument("--goal-note", help="what reaching the goal would take, where the agent falls short")
    parser.add_argument("--card-only", action="store_true",
                        help="keep the folder's measurements; update evidence.json's goal, film the rollout "
                        "if it is missing or too large, and rewrite the card")
    args = parser.parse_args()
    if args.card_only:
        if args.run:  # refresh the run's training time (sessions added up)
            evidence = read_evidence(args.root / args.name) or {}
            evidence["train_wall_time_s"] = wall_time_s(args.run)
            write_json_atomic(args.root / args.name / EVIDENCE_FILE, evidence)
        video = args.root / args.name / "rollout.mp4"
        if not video.is_file() or video.stat().st_size > VIDEO_LIMIT_BYTES:  # a bundle stopped at its video
            film(args.root / args.name, args.video_episodes)
        rewrite_card(args.root / args.name, goal_of(args))
        refresh_family(args.root, args.name)
        return
    if not (args.run and (args.control or args.keep_control) and args.recipe):
        parser.error("--run, --control (or --keep-control) and --recipe are needed to bundle a run "
                     "(only --card-only does without)")

    loaded, report = measure(str(args.run), args.episodes)
    kept_from = args.root / (args.control_of or args.name)
    control_evidence = kept_control(kept_from) if args.keep_control else measure_control(args)
    meta = loaded.meta
    out = args.root / args.name
    report.checkpoint = out.name  # the bundled name `rql eval --checkpoint` takes, not a path on this machine
    save_checkpoint(out, loaded.agent, meta, metrics=report, slim=args.slim)
    shutil.copyfile(args.run / "curves.png", out / "curves.png")
    evidence = dict(
        dataset_recipe=args.recipe,
        train_command=reproduce_command(meta, read_run_record(args.run).config),
        train_wall_time_s=wall_time_s(args.run),
        machine=args.machine,
        control=control_evidence,
        paper=dict(success_rate=args.paper_rate, source=args.paper_source),
        goal=goal_of(args),
    )
    if args.offline_continuation:
        evidence["online_route"] = measure_online_route(meta, args.offline_continuation, args.episodes)
    write_json_atomic(out / EVIDENCE_FILE, evidence)
    film(out, args.video_episodes)
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "README.md")
    card = build_model_card(meta, report, f"rql/{args.name}", files=[*files, "README.md"],
                            video_name="rollout.mp4", evidence=evidence)
    card.save(out / "README.md")
    refresh_family(args.root, args.name)
    first = report.tasks[0]
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"{args.name}: {100 * first.success_rate:.1f}% over {first.episodes} episodes; control "
          f"{100 * control_evidence['success_rate']:.1f}%; {size_mb:.1f} MB")


if __name__ == "__main__":
    main()
