"""Hub push and pull through the real `rql` command line, against the local Hub-API server.

The client is the unmodified huggingface_hub, pointed at tests/hub_server.py with HF_ENDPOINT. It
reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every step that talks to the
Hub runs `python -m rql_cli` in a subprocess with its own environment. Steps are grouped into few
tests because each subprocess pays about three seconds of imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hub_server import hub_env  # tests/ is on sys.path under pytest
from typer.testing import CliRunner

PUBLISHED = ("config.json", "velocity.safetensors", "value.safetensors")
SECRET = "hf_wrong_secret_value_123"


@pytest.fixture
def checkpoint(tiny_run_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint (tests write metrics.json into it)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_run_dir / "checkpoints" / "step_00000002", folder)
    return folder


def rql(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rql_cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def output(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def assert_ok(result: subprocess.CompletedProcess) -> str:
    text = output(result)
    assert result.returncode == 0, text
    return text


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    text = output(result)
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def write_training_metrics(folder: Path, success_rate: float) -> dict:
    """metrics.json as training writes it: one result dict (not `rql eval --save`'s report)."""
    metrics = dict(success_rate=success_rate, success_ci95=[0.4, 0.8], mean_return=-120.0, episodes=20,
                   seeds=list(range(20)), task=2, dataset_name="cube-single-play-v0",
                   env_id="cube-single-play-singletask-task2-v0", ogbench_version="1.2.2", success_timing="pre")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_push_pull_eval_round_trip_and_offline_cache(hub, checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    from rql_cli.cli.app import app
    from rql_cli.io.checkpoint import load_agent

    # Measured numbers first, exactly as a user would write them.
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(checkpoint), "--episodes", "2", "--envs", "1",
                                      "--save"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    measured = metrics["tasks"][0]

    home = tmp_path / "hf"
    text = assert_ok(rql("push", str(checkpoint), "--repo-id", "alice/agent", "--no-video",
                         env=hub_env(hub, home, token=hub.token)))
    assert "Pushed" in text and "alice/agent" in text and hub.token not in text
    history = hub.state.history("alice/agent")
    assert len(history) == 2  # the repo's initial commit + exactly one push
    remote = hub.state.files("alice/agent")
    assert set(remote) == {".gitattributes", *PUBLISHED, "metrics.json", "README.md"}  # no train state
    for name in (*PUBLISHED, "metrics.json"):
        assert remote[name] == (checkpoint / name).read_bytes(), name

    # `rql eval --checkpoint user/name`: the resolver pulls into the Hub cache under HF_HOME, then evaluates.
    text = assert_ok(rql("eval", "--checkpoint", "alice/agent", "--episodes", "2", "--envs", "1", env=hub_env(hub, home)))
    snapshot = home / "hub" / "models--alice--agent" / "snapshots" / history[0]
    assert "cube-single-play-v0 @ step 2" in text
    for name in (*PUBLISHED, "metrics.json"):
        assert (snapshot / name).read_bytes() == (checkpoint / name).read_bytes(), name
    agent, meta = load_agent(snapshot)
    assert meta.step == 2 and agent.step == 2
    card = ModelCard.load(snapshot / "README.md")
    assert card.data.library_name == "rql"
    assert {"reinforcement-learning", "offline-rl", "flow-matching", "rql", "cube-single"} <= set(card.data.tags)
    success = [r for r in card.data.eval_results if r.metric_type == "success_rate"][0]
    assert success.task_type == "reinforcement-learning" and success.dataset_type == "cube-single-play-v0"
    assert success.metric_value == pytest.approx(measured["success_rate"], abs=1e-4)
    assert success.metric_args["episodes"] == 2
    for fragment in ("rql eval --checkpoint alice/agent", "rql pull alice/agent", "rql train --dataset cube-single-play-v0",
                     "--set ensemble_size=2", "| `ensemble_size` | `2` | `10` |", "arXiv:2606.17551", "over the episodes"):
        assert fragment in card.content, fragment

    # Offline: `rql pull` answers from the warm cache without a single request, with the card's
    # metrics; a repo that is not cached fails at once.
    before = len(hub.state.requests)

    def never_pulled() -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        result = rql("pull", "alice/never-pulled", env=hub_env(hub, home, offline=True))
        return result, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:  # the two offline pulls need nothing of each other: side by side
        refused = pool.submit(never_pulled)
        text = assert_ok(rql("pull", "alice/agent", env=hub_env(hub, home, offline=True)))
    low, high = measured["success_ci95"]
    assert str(snapshot) in text and "Verified" in text
    assert f"[{100 * low:.1f}%, {100 * high:.1f}%]" in text and "Model card results" in text
    result, seconds = refused.result()
    assert_clean_error(result, "offline", "HF_HUB_OFFLINE", "alice/never-pulled", "not in the Hub cache")
    assert seconds < 30
    assert len(hub.state.requests) == before


def test_second_push_is_a_second_revision_and_the_first_stays_pullable(hub, checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    home = tmp_path / "hf"
    first_metrics = write_training_metrics(checkpoint, 0.65)
    (checkpoint / "rollout.mp4").write_bytes(b"not really a video")  # --video takes it, renders nothing
    assert_ok(rql("push", str(checkpoint), "--repo-id", "alice/agent", "--with-train-state",
                  env=hub_env(hub, home, token=hub.token)))
    first = hub.state.history("alice/agent")[0]
    assert hub.state.files("alice/agent")["rollout.mp4"] == b"not really a video"
    (checkpoint / "metrics.json").unlink()
    text = assert_ok(rql("push", str(checkpoint), "--repo-id", "alice/agent", "--no-video", "-m", "again",
                         env=hub_env(hub, home, token=hub.token)))
    assert "not evaluated yet" in text and "rql eval --checkpoint" in text
    history = hub.state.history("alice/agent")
    assert len(history) == 3 and history[1] == first
    latest = hub.state.files("alice/agent")
    assert set(latest) == {".gitattributes", *PUBLISHED, "README.md"}  # stale metrics, video, train state go
    assert "removed from the repo" in text and "metrics.json" in text
    assert "Not evaluated yet" in latest["README.md"].decode()

    pulled = tmp_path / "first"
    with ThreadPoolExecutor(max_workers=2) as pool:  # two pulls that need nothing of each other, side by side
        no_branch = pool.submit(rql, "pull", "alice/agent", "--revision", "no-such-branch", env=hub_env(hub, home))
        text = assert_ok(rql("pull", f"alice/agent@{first}", "--dir", str(pulled), env=hub_env(hub, home)))
    assert "65.0%" in text
    assert json.loads((pulled / "metrics.json").read_text()) == first_metrics
    assert (pulled / "train_state.safetensors").read_bytes() == (checkpoint / "train_state.safetensors").read_bytes()
    success = [r for r in ModelCard.load(pulled / "README.md").data.eval_results if r.metric_type == "success_rate"][0]
    assert success.metric_value == 0.65 and success.metric_args == {"episodes": 20, "ci95": [0.4, 0.8]}

    assert_clean_error(no_branch.result(), "alice/agent", "no revision 'no-such-branch'")


def test_push_without_a_token_or_with_a_wrong_one_uploads_nothing(hub, checkpoint, tmp_path):
    home = tmp_path / "hf"
    assert_clean_error(rql("push", str(checkpoint), "--repo-id", "alice/agent", "--no-video", env=hub_env(hub, home)),
                       "HF_TOKEN", "hf auth login", "--token", "Nothing was uploaded")
    assert not [r for r in hub.state.requests if r[0] == "POST"]

    text = assert_clean_error(
        rql("push", str(checkpoint), "--repo-id", "alice/agent", "--no-video", "--token", SECRET, env=hub_env(hub, home)),
        "401", "alice/agent", "hf auth login", "--token", "Nothing was uploaded",
    )
    assert SECRET not in text
    assert hub.state.uploads() == 0 and "alice/agent" not in hub.state.repos


def test_pull_of_an_unknown_repo_names_it(hub, tmp_path):
    assert_clean_error(rql("pull", "alice/does-not-exist", env=hub_env(hub, tmp_path / "hf")),
                       "No model repo 'alice/does-not-exist'", hub.url)


COUNTING_RUNNER = """
import atexit, json, sys
import ogbench
import rql_cli.io.checkpoint as checkpoint

counts = {"weight_loads": 0, "envs_built": 0}
real_load, real_make = checkpoint.load_weights_into, ogbench.make_env_and_datasets

def counting_load(*args, **kwargs):
    counts["weight_loads"] += 1
    return real_load(*args, **kwargs)

def counting_make(*args, **kwargs):
    counts["envs_built"] += 1
    return real_make(*args, **kwargs)

checkpoint.load_weights_into, ogbench.make_env_and_datasets = counting_load, counting_make
atexit.register(lambda: print("COUNTS " + json.dumps(counts)))
from rql_cli.cli.app import main
sys.argv = ["rql", *sys.argv[1:]]
main()
"""


def counted(*args: str, env: dict[str, str]) -> tuple[str, dict[str, int]]:
    """Run `rql ARGS` with weight loads and env constructions counted; (output, counts)."""
    result = subprocess.run([sys.executable, "-c", COUNTING_RUNNER, *args], env=env, capture_output=True,
                            text=True, timeout=180)
    text = assert_ok(result)
    return text, json.loads(text.split("COUNTS ", 1)[1].split("}", 1)[0] + "}")


def test_a_hub_checkpoint_is_downloaded_and_loaded_once_per_command(hub, checkpoint, tmp_path):
    # The files a push publishes, put there without a client (the round-trip test checks the push itself).
    hub.state.add_repo("alice/agent", {name: (checkpoint / name).read_bytes() for name in PUBLISHED})
    home = tmp_path / "hf"

    def downloads(since: int) -> int:
        return sum(1 for method, path in hub.state.requests[since:]
                   if method == "GET" and path.endswith("/velocity.safetensors"))

    before = len(hub.state.requests)
    text, counts = counted("eval", "--checkpoint", "alice/agent", "--episodes", "2", "--envs", "1",
                           env=hub_env(hub, home))
    assert "cube-single-play-v0 @ step 2" in text
    assert counts == {"weight_loads": 1, "envs_built": 1} and downloads(before) == 1

    before = len(hub.state.requests)
    with ThreadPoolExecutor(max_workers=2) as pool:  # both start from the warm cache: side by side
        pushing = pool.submit(counted, "push", "alice/agent", "--repo-id", "alice/copy", "--no-video",
                              env=hub_env(hub, home, token=hub.token))
        _, counts = counted("rollout", "--checkpoint", "alice/agent", "--episodes", "1", "--max-steps", "5",
                            env=hub_env(hub, home))
        pushed = pushing.result()[1]
    assert counts == {"weight_loads": 1, "envs_built": 1}
    assert downloads(before) == 0  # the cache serves the rollout (and the push)

    assert pushed == {"weight_loads": 1, "envs_built": 0}
    assert hub.state.files("alice/copy")["velocity.safetensors"] == (checkpoint / "velocity.safetensors").read_bytes()


def test_a_hub_checkpoint_is_downloaded_and_loaded_once_by_finetune(hub, checkpoint, tiny_dataset_dir, tmp_path):
    hub.state.add_repo("alice/agent", {name: (checkpoint / name).read_bytes() for name in PUBLISHED})
    text, counts = counted("finetune", "--checkpoint", "alice/agent", "--online-steps", "4", "--eval-episodes", "0",
                           "--dataset-dir", str(tiny_dataset_dir), "--set", "compile=off", "--out", str(tmp_path / "ft"),
                           env=hub_env(hub, tmp_path / "hf"))
    assert "alice/agent" in text and (tmp_path / "ft" / "checkpoints" / "step_00000004").is_dir()
    assert counts["weight_loads"] == 1
    assert sum(1 for method, path in hub.state.requests
               if method == "GET" and path.endswith("/velocity.safetensors")) == 1


@pytest.fixture
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_push_and_pull_give_up_on_a_silent_endpoint_and_leave_nothing_behind(silent_endpoint, checkpoint, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=silent_endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_ETAG_TIMEOUT="2", TMPDIR=str(scratch),
               RQL_CHECKPOINTS=str(tmp_path / "none"))
    cases = [
        (("push", str(checkpoint), "--repo-id", "alice/agent", "--no-video", "--token", "hf_test"), "did not answer"),
        (("pull", "alice/agent"), "Could not reach the Hub"),
    ]

    def timed(args: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        result = rql(*args, env=env)
        return result, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=2) as pool:  # both mostly wait on the silent endpoint: side by side
        outcomes = list(pool.map(timed, [args for args, _ in cases]))
    for (_, fragment), (result, seconds) in zip(cases, outcomes):
        text = assert_clean_error(result, fragment, silent_endpoint)
        assert seconds < 90, text
    assert list(scratch.iterdir()) == []  # no staging copy left behind


def test_ctrl_c_during_a_push_leaves_no_staging_copy(silent_endpoint, checkpoint, tmp_path):
    import signal

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=silent_endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
               TMPDIR=str(scratch), RQL_CHECKPOINTS=str(tmp_path / "none"), PYTHONUNBUFFERED="1")
    (checkpoint / "rollout.mp4").write_bytes(b"video")  # staged as a copy beside the weights
    process = subprocess.Popen([sys.executable, "-m", "rql_cli", "push", str(checkpoint), "--repo-id", "alice/agent",
                                "--token", "hf_test"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def staged() -> bool:  # the push's staging folder exists: it is waiting on the silent Hub
        return any(p.name.startswith("rql-push-") for p in scratch.iterdir())

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not staged():
        time.sleep(0.1)
    assert staged(), "the push never staged its files"
    time.sleep(0.5)  # into the upload call
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode in (1, 130) and "Traceback" not in output, output
    assert [p for p in scratch.iterdir() if p.name.startswith("rql-")] == []
    assert (checkpoint / "rollout.mp4").read_bytes() == b"video"


def test_a_push_publishes_the_evidence_and_curves_and_the_card_quotes_them(hub, checkpoint, tmp_path):
    write_training_metrics(checkpoint, 0.65)
    evidence = dict(
        dataset_recipe="rql data generate cube-single-play-v0 --episodes 1000 --seed 0 --out data",
        train_command="rql train --dataset cube-single-play-v0 --dataset-dir data --steps 40000",
        train_wall_time_s=5400, machine="2 CPU cores",
        control=dict(name="near-BC control (alpha 1000)", success_rate=0.2, success_ci95=[0.08, 0.42],
                     episodes=20, command="rql train ... --set alpha=1000"),
        paper=dict(success_rate=None, source="cube-single is not in the paper"),
        goal=dict(success_rate=0.8, why="the hub's aim", note="A GPU run would need 1M steps."),
        family=[dict(name="cube-single-task3-rql-cpu", task=3, success_rate=0.78, success_ci95=[0.689, 0.85],
                     episodes=100, control_success_rate=0.05),
                dict(name="cube-single-task1-rql-cpu", task=1, success_rate=0.74, success_ci95=[0.646, 0.816],
                     episodes=100, control_success_rate=None)],
    )
    (checkpoint / "evidence.json").write_text(json.dumps(evidence))
    (checkpoint / "curves.png").write_bytes(b"\x89PNG not really")
    assert_ok(rql("push", str(checkpoint), "--repo-id", "alice/evidence", "--no-video",
                  env=hub_env(hub, tmp_path / "hf", token=hub.token)))
    remote = hub.state.files("alice/evidence")
    assert remote["evidence.json"] == (checkpoint / "evidence.json").read_bytes()
    assert remote["curves.png"] == b"\x89PNG not really"
    card = " ".join(remote["README.md"].decode().split())
    for fragment in ("## Evidence", "this agent: 65.0% [40.0%, 80.0%] over 20 episodes",
                     "near-BC control (alpha 1000): 20.0% [8.0%, 42.0%] over 20 episodes",
                     "the paper's RQL on this task: not reported", evidence["dataset_recipe"],
                     evidence["train_command"], "training took 1.50 h on 2 CPU cores", "](curves.png)",
                     "the goal: 80.0% (the hub's aim): **not reached** (65.0%). A GPU run would need 1M steps."):
        assert fragment in card, fragment
    rows = [line for line in remote["README.md"].decode().splitlines() if line.startswith("| ") and "rql-cpu" in line]
    assert rows == ["| 1 | `cube-single-task1-rql-cpu` | 74.0% [64.6%, 81.6%] | 100 | - |",
                    "| 3 | `cube-single-task3-rql-cpu` | 78.0% [68.9%, 85.0%] | 100 | 5.0% |"]  # by task


def test_a_card_says_a_goal_was_reached_with_the_number_and_drops_the_shortfall_note(checkpoint):
    from rql_cli.io.checkpoint_meta import read_meta
    from rql_cli.io.metrics import read_metrics
    from rql_cli.io.model_card import build_model_card

    note = "A GPU run would need 1M steps."
    meta = read_meta(checkpoint)[0]
    for success, expected in ((0.85, "the goal: 80.0% (the hub's aim): reached (85.0%)"),
                              (0.65, f"the goal: 80.0% (the hub's aim): **not reached** (65.0%). {note}")):
        write_training_metrics(checkpoint, success)
        evidence = dict(goal=dict(success_rate=0.8, why="the hub's aim", note=note))
        card = build_model_card(meta, read_metrics(checkpoint), "alice/goal", files=[], evidence=evidence).content
        card = " ".join(card.split())
        assert expected in card, card
        assert (note in card) == (success < 0.8)
