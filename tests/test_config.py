"""The typed config: JSON round trip, help text, presets from the task name, --set parsing, aliases."""

from __future__ import annotations

import re

import pytest

from rql_cli.config import (
    FIELD_HELP,
    OFFICIAL_NAMES,
    RQLConfig,
    RunConfig,
    field_names,
    parse_set_option,
)
from rql_cli.errors import ConfigError
from rql_cli.names import ENV_FAMILIES
from rql_cli.presets import PRESETS, make_config


def test_config_json_round_trip_keeps_every_field():
    config = RunConfig.of(alpha=3.0, value_hidden_dims=[256, 128], sparse_rewards=True, device="cuda:1")
    restored, unknown = RunConfig.from_json(config.to_json())
    assert restored == config and unknown == []
    agent, unknown = RQLConfig.from_json(config.agent.to_json())
    assert agent == config.agent and unknown == []


def _help_words(text: str) -> str:
    """A help text less what is added to every field's (its range, its official name)."""
    text = re.sub(r"\s*\(official name: \w+\)$", "", text)
    return re.sub(r"\s*Range: [^ ]+ to [^ ]+\.$", "", text).strip()


def _epilog_help(epilog: str) -> dict[str, str]:
    """``{field: help}`` from `rql train --help`'s epilog, one '[bold]NAME[/] = JSON: HELP' paragraph each."""
    import json

    helps = {}
    for paragraph in epilog.split("\n\n")[1:]:
        match = re.match(r"\[bold\](\w+)\[/\] = ", paragraph)
        assert match, paragraph
        _, end = json.JSONDecoder().raw_decode(paragraph, match.end())  # the default, whatever its JSON
        assert paragraph[end:end + 2] == ": ", paragraph
        helps[match.group(1)] = paragraph[end + 2:]
    return helps


def test_every_field_has_help_text():
    """Read where `rql train --help` reads: the train command's epilog (--set's list of fields) and the
    help of each option that sets a config field, in every command that has one."""
    import typer.main

    from rql_cli.cli.app import app
    from rql_cli.cli.train_command import RUN_FLAGS

    group = typer.main.get_command(app)
    train = group.commands["train"]
    helps = _epilog_help(train.epilog)
    assert list(helps) == field_names()
    for name, text in helps.items():
        assert len(_help_words(text)) > 10, (name, text)

    def commands(command):
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from commands(sub)

    with_options = set()
    for command in commands(group):
        for param in command.params:
            match = re.fullmatch(r"(.*?)\s*\(config field (\w+)\)", param.help or "", re.DOTALL)
            if match:
                assert match.group(2) in helps, (command.name, param.opts)
                assert len(_help_words(match.group(1))) > 10, (command.name, param.opts, param.help)
                with_options.add((command.name, match.group(2)))
    assert {("train", name) for name in RUN_FLAGS} <= with_options


def test_presets_follow_the_dataset_name_and_set_overrides_win():
    config = make_config("puzzle-3x3-play-singletask-task2-v0").agent
    assert (config.alpha, config.expectile, config.rho, config.horizon) == (1.0, 0.7, 0.5, 5)
    assert config.sparse_rewards
    config = make_config("cube-double-play-v0", overrides=dict(alpha=2.5)).agent
    assert (config.alpha, config.expectile) == (2.5, 0.9)
    config = make_config("cube-double-play-v0", preset="humanoidmaze-large").agent
    assert (config.discount, config.horizon, config.rho) == (0.995, 1, 0.0)


def test_set_option_parses_json_and_checks_types():
    assert parse_set_option("value_hidden_dims=[256,256]") == ("value_hidden_dims", [256, 256])
    assert parse_set_option("alpha=3") == ("alpha", 3.0)
    assert parse_set_option("device=cuda:1") == ("device", "cuda:1")
    assert parse_set_option("sparse_rewards=true") == ("sparse_rewards", True)
    with pytest.raises(ConfigError, match="horizon.*integer"):
        parse_set_option("horizon=1.5")
    with pytest.raises(ConfigError, match="alpha.*number"):
        parse_set_option("alpha=true")
    with pytest.raises(ConfigError, match="Did you mean 'expectile'"):
        parse_set_option("expectle=0.9")
    with pytest.raises(ConfigError, match="list of ints"):
        parse_set_option("actor_hidden_dims=[256, 'a']")
    with pytest.raises(ConfigError, match="expectile must lie"):
        make_config("cube-single-play-v0", overrides=dict(expectile=1.5))


@pytest.mark.parametrize("official, ours, value", [
    ("h", "horizon", 5), ("ensemble_ct", "ensemble_size", 4), ("ema", "actor_ema", 0.99),
    ("layer_norm", "value_layer_norm", False),
])
def test_official_field_names_are_accepted_as_aliases(official, ours, value):
    assert OFFICIAL_NAMES[official] == ours
    assert parse_set_option(f"{official}={str(value).lower()}") == (ours, value)
    config, unknown = RQLConfig.from_dict({official: value})
    assert getattr(config, ours) == value and unknown == []
    assert getattr(make_config("cube-single-play-v0", overrides={official: value}).agent, ours) == value
    with pytest.raises(ConfigError, match=ours):
        parse_set_option(f"{official}=\"not a {ours}\"")


def test_help_text_comes_from_field_metadata_not_source_code():
    import dataclasses

    for f in [*dataclasses.fields(RQLConfig), *dataclasses.fields(RunConfig)[1:]]:  # RunConfig's first: agent
        assert FIELD_HELP[f.name].startswith(f.metadata["help"]) and len(f.metadata["help"]) > 10
    assert FIELD_HELP["eval_envs"].endswith("Range: 1 to 1,024.")


@pytest.mark.parametrize("changes, fragment", [
    (dict(eval_envs=0), "eval_envs must lie in [1, 1,024]"),
    (dict(eval_episodes=-5), "eval_episodes must lie in [0,"),
    (dict(log_interval=0), "log_interval must lie in [1,"),
    (dict(seed=99999999999999999999), "seed must lie in [0, 2,147,483,647]"),
    (dict(flow_steps=10**9), "flow_steps must lie in [1, 1,000]"),
    (dict(ensemble_size=10**9), "ensemble_size must lie in [1, 1,024]"),
    (dict(value_hidden_dims=[10**8]), "value_hidden_dims must hold 1 to 64 widths"),
    (dict(lr=0.0), "lr must lie in (0, 1]"),
])
def test_every_numeric_field_is_checked_against_its_range(changes, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        RunConfig().replace(**changes)


def test_list_fields_take_commas_so_shells_need_no_quotes():
    assert parse_set_option("value_hidden_dims=256,256") == ("value_hidden_dims", [256, 256])
    assert parse_set_option("actor_hidden_dims=[512]") == ("actor_hidden_dims", [512])
    with pytest.raises(ConfigError, match="list of ints"):
        parse_set_option("actor_hidden_dims=512")  # one number without brackets stays an error


def test_every_preset_is_a_known_env_family():
    external = {"minari:D4RL/antmaze", "external"}
    assert set(PRESETS) - external <= set(ENV_FAMILIES)
    assert make_config("pointmaze-medium-navigate-v0") == RunConfig()  # no preset: the defaults
    # Minari ids take the closest published preset (antmaze), or the stated one for everything else.
    antmaze = make_config("minari:D4RL/antmaze/large-play-v1").agent
    assert (antmaze.alpha, antmaze.expectile, antmaze.horizon) == (0.1, 0.5, 1)
    hopper = make_config("minari:mujoco/hopper/medium-v0")
    assert hopper == make_config("gym:Hopper-v5") == RunConfig.of(**PRESETS["external"])


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(ConfigError, match="JSON object"):
        RQLConfig.from_dict([1, 2])


def test_the_agent_config_is_what_defines_the_agent_and_the_run_config_how_a_run_uses_the_machine():
    from rql_cli.config import AGENT_FIELDS, FIXED_ON_RESUME, RUN_FIELDS

    assert set(AGENT_FIELDS) == {
        "actor_hidden_dims", "value_hidden_dims", "value_layer_norm", "ensemble_size", "flow_steps", "horizon",
        "policy_loss_points", "alpha", "expectile", "rho", "discount", "tau", "actor_ema", "lr", "batch_size",
        "sparse_rewards",
    }
    assert set(RUN_FIELDS) == {
        "steps", "eval_interval", "eval_episodes", "eval_envs", "log_interval", "keep_checkpoints", "save_interval",
        "seed", "device", "dataset_on_device", "shard_swap_every", "shard_prefetch", "compile", "threads", "log_to",
        "matmul_precision",
        "group_update",
    }
    assert FIXED_ON_RESUME == {*AGENT_FIELDS, "dataset_on_device"}
    # --set reaches both, and a flat dict of both comes back whole
    config = RunConfig().replace(alpha=2.0, steps=7, h=4)
    assert (config.agent.alpha, config.steps, config.agent.horizon) == (2.0, 7, 4)
    assert RunConfig.from_flat(config.flat())[0] == config
