"""The CPU matmul route: measured on the run's shapes, fp32-accurate, cached per machine, recorded."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from rql_cli.config import RQLConfig, RunConfig
from rql_cli.core.batch import ChunkBatch
from rql_cli.core.networks import MLP, ValueEnsemble
from rql_cli.core.rql import RQLAgent
from rql_cli.errors import ConfigError, RQLError
from rql_cli.training import matmul_route
from rql_cli.training.matmul_route import (
    ROUTE_PRECISION,
    choose_matmul_route,
    cpu_has_bf16,
    hidden_product_dtype,
    layer_shapes,
    pick_route,
)

AGENT = RQLConfig(actor_hidden_dims=[64, 64], value_hidden_dims=[64, 64], ensemble_size=2, horizon=3,
                  flow_steps=4, batch_size=32)
CPU = torch.device("cpu")


def random_batch(g: torch.Generator) -> ChunkBatch:
    """32 random windows of AGENT's shapes: observations 28 wide, chunks of 3 actions of 5."""
    return ChunkBatch(torch.randn(32, 28, generator=g), torch.rand(32, 3, 5, generator=g) * 2 - 1,
                      -torch.rand(32, 3, generator=g), torch.ones(32, 3), torch.zeros(32, 3),
                      torch.randn(32, 28, generator=g))


def losses_and_gradients(agent: RQLAgent, batch: ChunkBatch, noise) -> tuple[dict, list[torch.Tensor]]:
    """The agent's loss terms on ``batch`` and ``noise`` and the gradients of their total."""
    agent.optimizer.zero_grad()
    losses, _ = agent.loss_terms(batch, noise)
    losses["total"].backward()
    return losses, [p.grad.clone() for p in agent.parameters() if p.grad is not None]


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """No fixed route, a cache of this test's own, and torch's precision restored afterwards."""
    monkeypatch.delenv("RQL_MATMUL_ROUTE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = torch.get_float32_matmul_precision()
    yield tmp_path / "rql" / "matmul_routes.json"
    torch.set_float32_matmul_precision(before)


def test_the_route_is_measured_once_then_read_from_the_machines_cache(measured):
    first = choose_matmul_route("highest", CPU, AGENT, 28, 5)
    assert first.how == "measured" and set(first.gflops) == set(first.errors) == {"default", "oneDNN"}
    assert all(rate > 0 for rate in first.gflops.values())
    assert first.errors["default"] < 1e-5  # fp32 against float64
    assert torch.get_float32_matmul_precision() == ROUTE_PRECISION[first.route]
    assert first.route == pick_route(first.gflops, first.errors)
    [entry] = json.loads(measured.read_text()).values()
    assert entry["route"] == first.route
    second = choose_matmul_route("highest", CPU, AGENT, 28, 5)
    assert second.how == "cached" and second.route == first.route and second.gflops == first.gflops
    other_shapes = choose_matmul_route("highest", CPU, AGENT.replace(value_hidden_dims=[32]), 28, 5)
    assert other_shapes.how == "measured" and len(json.loads(measured.read_text())) == 2


def test_runs_started_together_measure_once_and_take_the_same_route(measured):
    """Two runs starting at once (threads here; the lock is on the file, so processes alike): one
    measures, the other waits and reads its entry, instead of each timing the other's load."""
    start = threading.Barrier(2)

    def choose() -> matmul_route.MatmulRoute:
        start.wait()
        return choose_matmul_route("highest", CPU, AGENT, 28, 5)

    with ThreadPoolExecutor(2) as pool:
        routes = list(pool.map(lambda _: choose(), range(2)))
    assert sorted(r.how for r in routes) == ["cached", "measured"]
    assert routes[0].route == routes[1].route and routes[0].gflops == routes[1].gflops
    assert len(json.loads(measured.read_text())) == 1


def test_onednn_is_taken_only_when_faster_and_as_accurate():
    fp32 = {"default": 4e-7, "oneDNN": 7e-7}
    assert pick_route({"default": 100.0, "oneDNN": 150.0}, fp32) == "oneDNN"
    assert pick_route({"default": 100.0, "oneDNN": 102.0}, fp32) == "default"  # within the measurement's noise
    bf16 = {"default": 4e-7, "oneDNN": 3e-3}
    assert pick_route({"default": 100.0, "oneDNN": 400.0}, bf16) == "default"  # never lower precision silently


def test_a_lower_precision_is_set_as_asked_and_a_fixed_route_skips_measuring(measured, monkeypatch):
    asked = choose_matmul_route("high", CPU, AGENT, 28, 5)
    assert (asked.how, torch.get_float32_matmul_precision()) == ("asked", "high")
    monkeypatch.setattr(matmul_route, "cpu_has_bf16", lambda: False)  # medium without bf16 instructions
    asked = choose_matmul_route("medium", CPU, AGENT, 28, 5)
    assert (asked.route, torch.get_float32_matmul_precision()) == ("asked", "medium")
    assert hidden_product_dtype(asked) is None
    monkeypatch.setenv("RQL_MATMUL_ROUTE", "oneDNN")
    fixed = choose_matmul_route("highest", CPU, AGENT, 28, 5)
    assert fixed.route == "oneDNN" and fixed.gflops == {} and torch.get_float32_matmul_precision() == "medium"
    assert not measured.exists()
    monkeypatch.setenv("RQL_MATMUL_ROUTE", "fast")
    with pytest.raises(RQLError, match="RQL_MATMUL_ROUTE='fast'"):
        choose_matmul_route("highest", CPU, AGENT, 28, 5)
    with pytest.raises(ConfigError, match="matmul_precision"):
        RunConfig.of(matmul_precision="low").validate()


def test_the_layer_shapes_are_the_networks_products():
    shapes = layer_shapes(AGENT, 28, 5)
    first_in = 28 + 3 * 5 + 1  # observation, chunk, flow time
    assert shapes == [(1, 32, first_in, 64), (1, 32, 64, 64), (2, 32, first_in, 64), (2, 32, 64, 64)]


def test_onednns_losses_and_gradients_match_the_defaults_within_fp32(measured):
    torch.manual_seed(0)
    agent = RQLAgent(AGENT, 28, 5, CPU)
    batch = random_batch(torch.Generator().manual_seed(1))
    noise = agent.draw_noise(32, torch.Generator().manual_seed(2))
    results = []
    for setting in ("highest", ROUTE_PRECISION["oneDNN"]):
        torch.set_float32_matmul_precision(setting)
        results.append(losses_and_gradients(agent, batch, noise))
    (base_losses, base_grads), (losses, grads) = results
    for name, value in base_losses.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(base_grads) > 0
    for got, expected in zip(grads, base_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_run_records_and_prints_its_route(tiny_dataset_dir, tmp_path, measured):
    from cli_checks import invoke
    from conftest import TINY_NAME

    result = invoke("train", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--steps", "2",
                    "--eval-episodes", "0", "--device", "cpu", "--out", str(tmp_path / "run"),
                    "--set", "actor_hidden_dims=[32]", "--set", "value_hidden_dims=[32]", "--set", "batch_size=8")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    matmul = record["history"][0]["runtime"]["matmul"]
    assert matmul["how"] == "measured" and matmul["route"] in ("default", "oneDNN")
    shown = " ".join(result.output.split())
    assert "matmuls: the default route" in shown or "matmuls: oneDNN" in shown
    assert record["config"]["matmul_precision"] == "highest"


def test_medium_on_a_cpu_with_bf16_multiplies_between_hidden_layers_in_bf16(measured, monkeypatch):
    monkeypatch.setattr(matmul_route, "cpu_has_bf16", lambda: True)
    route = choose_matmul_route("medium", CPU, AGENT, 28, 5)
    assert (route.route, route.how, torch.get_float32_matmul_precision()) == ("bf16", "asked", "highest")
    assert hidden_product_dtype(route) is torch.bfloat16
    assert hidden_product_dtype(choose_matmul_route("medium", torch.device("cuda"), AGENT, 28, 5)) is None
    assert not measured.exists()


def test_bf16_hidden_products_round_only_between_hidden_layers_and_stay_near_fp32():
    torch.manual_seed(0)
    agent = RQLAgent(AGENT, 28, 5, CPU)
    batch = random_batch(torch.Generator().manual_seed(1))
    noise = agent.draw_noise(32, torch.Generator().manual_seed(2))
    results = []
    for dtype in (None, torch.bfloat16):
        agent.set_hidden_product_dtype(dtype)
        results.append(losses_and_gradients(agent, batch, noise))
    modules = [m for m in agent.modules() if isinstance(m, (MLP, ValueEnsemble))]
    assert len(modules) == 4 and all(m.hidden_product_dtype is torch.bfloat16 for m in modules)  # acting too
    (fp32_losses, fp32_grads), (bf16_losses, bf16_grads) = results
    for name, value in fp32_losses.items():  # bf16 keeps ~3 significant digits per product
        torch.testing.assert_close(bf16_losses[name], value, rtol=3e-2, atol=1e-3)
    assert any(not torch.equal(bf16_losses[name], value) for name, value in fp32_losses.items())
    close = [torch.allclose(got, expected, rtol=0.2, atol=1e-3) for got, expected in zip(bf16_grads, fp32_grads,
                                                                                        strict=True)]
    assert sum(close) >= 0.9 * len(close)
    # With one hidden layer there is no product between hidden layers: the networks stay fp32 exactly.
    one = RQLConfig(actor_hidden_dims=[64], value_hidden_dims=[64], ensemble_size=2, horizon=3, flow_steps=4,
                    batch_size=32)
    torch.manual_seed(0)
    shallow = RQLAgent(one, 28, 5, CPU)
    before, _ = shallow.loss_terms(batch, noise)
    shallow.set_hidden_product_dtype(torch.bfloat16)
    after, _ = shallow.loss_terms(batch, noise)
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_a_medium_run_records_its_route_and_says_what_runs_in_bf16(tiny_dataset_dir, tmp_path, measured):
    from cli_checks import invoke
    from conftest import TINY_NAME

    result = invoke("train", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--steps", "3",
                    "--eval-episodes", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--set",
                    "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]", "--set", "batch_size=8",
                    "--set", "matmul_precision=medium")
    assert result.exit_code == 0, result.output
    matmul = json.loads((tmp_path / "run" / "train_config.json").read_text())["history"][0]["runtime"]["matmul"]
    if cpu_has_bf16():
        assert (matmul["route"], matmul["torch_precision"]) == ("bf16", "highest")
        assert "bf16 products between hidden layers" in " ".join(result.output.split())
    else:
        assert (matmul["route"], matmul["torch_precision"]) == ("asked", "medium")
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) >= 2 and "nan" not in metrics[-1].lower()


@pytest.mark.parametrize("way", ["stacked", "threaded"])
def test_a_seed_group_multiplies_in_bf16_for_every_seed(way):
    from rql_cli.core.seed_stack import StackedSeeds, ThreadedSeeds

    agents = []
    for seed in range(2):
        torch.manual_seed(seed)
        agents.append(RQLAgent(AGENT, 28, 5, CPU))
    group = StackedSeeds(agents) if way == "stacked" else ThreadedSeeds(agents, threads=2)
    group.set_hidden_product_dtype(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    batches = [random_batch(g) for _ in agents]
    losses = group.update(batches, [torch.Generator().manual_seed(s) for s in range(2)])
    assert losses["total"].shape == (2,) and torch.isfinite(losses["total"]).all()
    for agent in agents:
        networks = [m for m in agent.modules() if isinstance(m, (MLP, ValueEnsemble))]
        assert all(m.hidden_product_dtype is torch.bfloat16 for m in networks)
    if way == "threaded":
        group.close()
