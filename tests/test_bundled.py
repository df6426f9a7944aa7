"""Bundled checkpoints: listed by name with their scores; a broken one never hides the others."""

from __future__ import annotations

import json
import shlex
import shutil

from typer.testing import CliRunner

from rql_cli.cli.app import app
from rql_cli.io.bundled import bundled_checkpoint_folders, bundled_checkpoints


def test_listing_survives_broken_folders_and_names_the_problem(tiny_run_dir, tmp_path, monkeypatch):
    source = tiny_run_dir / "checkpoints" / "step_00000002"
    root = tmp_path / "bundled"
    for name in ("good", "bad-metrics", "bad-config"):
        shutil.copytree(source, root / name)
    (root / "good" / "metrics.json").write_text(json.dumps({"tasks": [{"success_rate": 0.5, "episodes": 10}]}))
    (root / "bad-metrics" / "metrics.json").write_text("{truncated")
    (root / "bad-config" / "config.json").write_text("[]")
    (root / "not-a-checkpoint").mkdir()
    monkeypatch.setenv("RQL_CHECKPOINTS", str(root))
    monkeypatch.setenv("COLUMNS", "240")  # table cells on one line each

    assert list(bundled_checkpoint_folders()) == ["bad-config", "bad-metrics", "good"]
    entries = {entry.name: entry for entry in bundled_checkpoints()}
    assert (entries["good"].success, entries["good"].episodes, entries["good"].step) == ("50.0%", 10, 2)
    assert entries["bad-metrics"].success == "unreadable metrics.json"
    assert entries["bad-config"].dataset == "unreadable config.json"

    result = CliRunner().invoke(app, ["list"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "50.0%" in text and "unreadable metrics.json" in text


def test_list_json_describes_every_bundled_agent_and_each_preset_source():
    from rql_cli.presets import PRESETS

    result = CliRunner().invoke(app, ["list", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    folders = bundled_checkpoint_folders()
    assert [entry["name"] for entry in payload["bundled"]] == list(folders)
    for entry in payload["bundled"]:
        folder = folders[entry["name"]]
        assert entry["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        assert entry["env_id"] and entry["task"] in range(1, 6)
        low, high = entry["success_ci95"]
        assert low <= entry["success_rate"] <= high
        assert entry["video"] is None or (folder / entry["video"]).is_file()
    assert set(payload["presets"]) == set(PRESETS)
    assert all(preset["source"] for preset in payload["presets"].values())
    assert "cube-single-play-v0" in payload["generatable"]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval(result: dict) -> str:
    low, high = result["success_ci95"]
    return f"{_pct(result['success_rate'])} [{_pct(low)}, {_pct(high)}] over {result['episodes']} episodes"


def _sections(text: str) -> dict[str, list[str]]:
    """A card body's '## ' sections, by title: their lines."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            lines = sections.setdefault(line[3:].strip(), [])
        else:
            lines.append(line)
    return sections


def _bullets(lines: list[str]) -> list[tuple[str, str | None]]:
    """A section's top-level '- ' items, each with the one command of the bash block under it (or None)."""
    items: list[list] = []
    block: list[str] | None = None
    for line in lines:
        stripped = line.strip()
        if line.startswith("- "):
            items.append([line[2:], None])
        elif stripped == "```bash":
            block = []
        elif stripped == "```" and block is not None:
            assert items and items[-1][1] is None and len(block) == 1, lines
            items[-1][1], block = block[0], None
        elif block is not None:
            block.append(stripped)
    return [tuple(item) for item in items]


def _table_rows(lines: list[str]) -> list[list[str]]:
    """The body rows of the first markdown table in ``lines``, cells stripped."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[2:]


def test_every_bundled_card_parses_to_its_metrics_and_evidence():
    """The card's model-index metadata (parsed as the Hub parses it) holds metrics.json's numbers, and
    its Results and Evidence sections hold metrics.json's and evidence.json's."""
    import pytest
    from huggingface_hub import ModelCard

    from rql_cli.io.metrics import read_metrics
    from rql_cli.io.model_card import read_evidence

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    for name, folder in folders.items():
        report = read_metrics(folder)
        tasks = [task.to_dict() for task in report.tasks]  # as metrics.json holds them
        assert report.checkpoint == name  # what `rql eval --checkpoint` takes, not a path on the bundling machine
        card = ModelCard.load(folder / "README.md")
        assert (card.data.model_name, card.data.library_name) == (name, "rql"), name
        expected = []
        for task in tasks:
            low, high = task["success_ci95"]
            common = dict(
                task_type="reinforcement-learning", dataset_type=task["dataset_name"],
                dataset_name=task["env_id"], dataset_config=f"task{task['task']}",
            )
            expected += [
                dict(common, metric_type="success_rate", metric_value=round(task["success_rate"], 4),
                     metric_args={"episodes": task["episodes"], "ci95": [round(low, 4), round(high, 4)]}),
                dict(common, metric_type="mean_return", metric_value=round(task["mean_return"], 3),
                     metric_args={"episodes": task["episodes"]}),
            ]
        parsed = [{key: getattr(result, key) for key in want} for result, want in zip(card.data.eval_results, expected)]
        assert parsed == expected and len(card.data.eval_results) == len(expected), name
        for task in tasks:  # per-episode records back the summary
            assert len(task["successes"]) == len(task["seeds"]) == task["episodes"], name
            assert task["success_rate"] == pytest.approx(sum(task["successes"]) / task["episodes"]), name
            assert task["seeds"] == list(range(task["seeds"][0], task["seeds"][0] + task["episodes"])), name

        sections = _sections(card.text)
        results = [
            [str(t["task"]), f"`{t['env_id']}`", _pct(t["success_rate"]),
             f"[{_pct(t['success_ci95'][0])}, {_pct(t['success_ci95'][1])}]", str(t["episodes"])]
            for t in tasks
        ]
        assert _table_rows(sections["Results"]) == results, name

        evidence = read_evidence(folder)
        if evidence is None:
            assert "Evidence" not in sections, name
            continue
        bullets = {}
        for text, command in _bullets(sections["Evidence"]):
            key, _, value = text.partition(":")
            bullets[key] = (value.strip(), command)
        assert bullets["this agent"] == (_interval(tasks[0]), None), name
        control = evidence["control"]
        assert bullets[control["name"]] == (_interval(control), control["command"]), name
        route = evidence.get("online_route")
        if route:  # fine-tuned online: its start and the same start trained offline, on its episodes
            start, offline = route["start"], route["offline"]
            start_key = f"before online fine-tuning (`{start['ref']}`, step {start['step']:,})"
            assert bullets[start_key] == (_interval(start), None), name
            assert bullets[offline["name"]] == (_interval(offline), offline["command"]), name
        paper = evidence["paper"]
        number = "not reported" if paper["success_rate"] is None else _pct(paper["success_rate"])
        assert bullets["the paper's RQL on this task"] == (f"{number} ({paper['source']})", None), name
        goal, measured = evidence["goal"], tasks[0]["success_rate"]
        verdict = "reached" if measured >= goal["success_rate"] else "**not reached**"
        stated, _ = bullets["the goal"]
        assert stated.startswith(f"{_pct(goal['success_rate'])} ({goal['why']}): {verdict} ({_pct(measured)})"), name
        assert bullets["data, made here"] == ("", evidence["dataset_recipe"]), name
        assert bullets["training command"] == ("", evidence["train_command"]), name
        # the Training section reproduces the run with the command that ran, its run settings included
        training = sections["Training"]
        start = training.index("```bash")
        assert training[start + 1:start + 3] == [evidence["train_command"], "```"], name
        if "family" in evidence:
            family = [
                [str(row["task"]), f"`{row['name']}`",
                 f"{_pct(row['success_rate'])} [{_pct(row['success_ci95'][0])}, {_pct(row['success_ci95'][1])}]",
                 str(row["episodes"]), _pct(row["control_success_rate"])]
                for row in sorted(evidence["family"], key=lambda row: row["task"])
            ]
            header = sections["Evidence"].index("| task | agent | success [95% CI] | episodes | near-BC control |")
            assert _table_rows(sections["Evidence"][header:]) == family, name
            own = next(row for row in evidence["family"] if row["name"] == name)
            assert (own["success_rate"], own["episodes"]) == (measured, tasks[0]["episodes"]), name


STRONG = 0.8
"""Agents whose metrics.json records at least this success rate must solve episodes it records as solved."""


def test_every_bundled_agent_loads_fits_its_env_and_strong_ones_solve_recorded_episodes():
    """Each agent loads and fits its env. A strong one, replayed from the reset seeds of the three
    shortest episodes its metrics.json records as successes (fresh flow noise, so not the recorded
    runs themselves), solves at least two of them; a weak one plays one of them to the end."""
    import pytest
    import torch

    from rql_cli.envs.evaluate import run_episode
    from rql_cli.envs.make import make_eval_env
    from rql_cli.envs.policy import chunk_policy
    from rql_cli.io.checkpoint_meta import check_checkpoint_dims
    from rql_cli.io.metrics import read_metrics
    from rql_cli.io.resolve import load_checkpoint

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    strong = 0
    for name, folder in folders.items():
        loaded = load_checkpoint(name, torch.device("cpu"))
        assert loaded.resolved.folder == folder
        recorded = read_metrics(folder).tasks[0].to_dict()
        assert recorded["task"] == loaded.meta.task_name.resolve_task(), name
        solved = sorted(
            (length, seed)
            for seed, length, success in zip(recorded["seeds"], recorded["lengths"], recorded["successes"])
            if success
        )
        seeds = [seed for _, seed in solved[:3]]
        is_strong = recorded["success_rate"] >= STRONG
        env = make_eval_env(loaded.meta.task_name)
        try:
            check_checkpoint_dims(name, loaded.meta, env.observation_space.shape[-1], env.action_space.shape[-1],
                                  "the environment")
            policy = chunk_policy(loaded.agent, torch.Generator().manual_seed(0))
            outcomes = [run_episode(env, policy, seed) for seed in (seeds if is_strong else seeds[:1])]
        finally:
            env.close()
        assert all(o.length <= recorded["max_episode_steps"] for o in outcomes), name
        if is_strong:
            strong += 1
            assert sum(o.success for o in outcomes) >= 2, (name, [(o.seed, o.success, o.length) for o in outcomes])
    assert strong >= 1


def _config_of_train_command(command: str) -> tuple[int | None, dict]:
    """(task, config fields) that a card's `rql train --dataset D [--task T] [--set K=V]...` command makes."""
    import shlex

    from rql_cli.config import parse_set_option
    from rql_cli.presets import make_config
    from rql_cli.names import parse_task_name

    tokens = shlex.split(command)
    assert tokens[:2] == ["rql", "train"], command
    options = list(zip(tokens[2::2], tokens[3::2]))
    options = [(flag, value) for flag, value in options if flag != "--out"]  # where it writes: no config
    dataset = next(value for flag, value in options if flag == "--dataset")
    task = next((int(value) for flag, value in options if flag == "--task"), None)
    overrides = dict(parse_set_option(value) for flag, value in options if flag == "--set")
    assert {flag for flag, _ in options} <= {"--dataset", "--task", "--set"}, command
    fields = make_config(parse_task_name(dataset), overrides=overrides).flat()
    fields.pop("device")
    return task, fields


def test_every_bundled_card_states_commands_that_rebuild_its_config_and_its_controls():
    """The training command on a card, run today, must make the agent's config: a preset changed since
    bundling would otherwise make it train something else. The control's differs only in alpha."""
    import pytest

    from rql_cli.io.checkpoint_meta import read_meta
    from rql_cli.io.model_card import read_evidence

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    for name, folder in folders.items():
        evidence = read_evidence(folder)
        if evidence is None:
            continue
        meta, _ = read_meta(folder)
        stored = meta.config.to_dict()  # the agent's config: a checkpoint keeps no run settings
        if evidence["train_command"].startswith("rql finetune "):
            _check_fine_tuned_from_a_bundled_agent(name, evidence["train_command"], meta, folders)
            _check_control_command(name, evidence["control"]["command"], stored)
            continue
        train, *finetune = evidence["train_command"].split(" && ")
        task, command_fields = _config_of_train_command(train)
        fields = {k: v for k, v in command_fields.items() if k in stored}
        assert fields == stored, name
        trained_steps = meta.step
        if meta.lineage:  # trained, then fine-tuned: `rql train ... --out RUN && rql finetune --checkpoint RUN ...`
            [continued] = finetune
            tokens = shlex.split(continued)
            out = shlex.split(train)[shlex.split(train).index("--out") + 1]
            assert tokens[:4] == ["rql", "finetune", "--checkpoint", out], name
            if meta.lineage["method"] == "online":
                steps = tokens[tokens.index("--online-steps") + 1]
                assert steps == str(meta.lineage["online_steps"]) == str(meta.step), name
                assert ("--balanced" in tokens) == bool(meta.lineage.get("balanced")), name
            else:  # continued offline
                assert tokens[tokens.index("--steps") + 1] == str(meta.lineage["steps"]) == str(meta.step), name
            # the agent is the trained one: the continuation sets run settings only
            assert not [v for t, v in zip(tokens, tokens[1:]) if t == "--set" and v.split("=")[0] in stored], name
            trained_steps = meta.lineage["step"]
        else:
            assert not finetune, name
        assert (command_fields["steps"], command_fields["seed"]) == (trained_steps, meta.seed), name
        assert (task or meta.task_name.resolve_task()) == meta.task_name.resolve_task(), name
        assert evidence["train_command"] in (folder / "README.md").read_text(), name
        _check_control_command(name, evidence["control"]["command"], stored)


def _check_control_command(name: str, command: str, stored: dict) -> None:
    """A near-BC control's command makes the agent's config but for alpha, 1000."""
    _, control_fields = _config_of_train_command(command)
    control = {k: v for k, v in control_fields.items() if k in stored}
    assert control["alpha"] == 1000.0, name
    assert {**control, "alpha": stored["alpha"]} == stored, name


def _check_fine_tuned_from_a_bundled_agent(name: str, command: str, meta, folders: dict) -> None:
    """`rql finetune --checkpoint OTHER ...`: OTHER is bundled beside it with this agent's config and the
    step it started from, and the command states the online steps and batches its lineage records."""
    from rql_cli.io.checkpoint_meta import read_meta

    tokens = shlex.split(command)
    assert tokens[:4] == ["rql", "finetune", "--checkpoint", meta.lineage["ref"]], name
    start, _ = read_meta(folders[meta.lineage["ref"]])
    assert start.config.to_dict() == meta.config.to_dict() and start.step == meta.lineage["step"], name
    assert meta.lineage["method"] == "online", name
    assert tokens[tokens.index("--online-steps") + 1] == str(meta.lineage["online_steps"]) == str(meta.step), name
    assert ("--balanced" in tokens) == bool(meta.lineage.get("balanced")), name
    assert not [v for t, v in zip(tokens, tokens[1:]) if t == "--set" and v.split("=")[0] in meta.config.to_dict()]


def test_an_old_control_command_gains_the_fields_a_changed_preset_no_longer_gives(tiny_run_dir):
    """A control's command written before a preset changed: the fields that neither it nor its
    agent's command set held the old preset's value, the agent's, and come back as --set."""
    from rql_cli.presets import make_config
    from rql_cli.io.checkpoint_meta import read_meta
    from rql_cli.io.reproduce import reproduce_command, restate_preset_values

    meta, _ = read_meta(sorted((tiny_run_dir / "checkpoints").iterdir())[-1])
    today = make_config(meta.dataset).flat()
    meta.config.expectile, meta.config.rho = today["expectile"], today["rho"]
    old_agent = reproduce_command(meta)  # written when the preset gave this agent's expectile and rho
    assert "expectile=" not in old_agent and "rho=" not in old_agent
    meta.config.expectile, meta.config.rho = today["expectile"] + 0.05, today["rho"] + 0.25  # the preset moved
    control_then = f"{old_agent} --set alpha=1000.0"
    restated = restate_preset_values(control_then, old_agent, meta)
    assert restated.startswith(control_then)
    _, control = _config_of_train_command(restated)
    assert (control["expectile"], control["rho"], control["alpha"]) == (meta.config.expectile, meta.config.rho, 1000.0)
    # a field the agent's command stated is left alone (its control followed its own command)
    stated = restate_preset_values(control_then, f"{old_agent} --set rho={today['rho']}", meta)
    assert "rho=" not in stated.removeprefix(control_then)
    assert restate_preset_values(restated, old_agent, meta) == restated  # once is enough
