"""The bad-input corpus: every kind of wrong input through the real `rql` command line.

Each case must end with exit code 1, no traceback, a message that names the problem, and nothing
changed on disk: the whole world of folders the cases point at hashes the same before and after.
Most cases run in this process, one after another, through Typer's CliRunner (the same app the
console script runs), with the environment, working folder and time limit a fresh process would
have; the few that need a fresh interpreter (FRESH_INTERPRETER says which and why) run meanwhile
through the console script's entry, two at a time, and must refuse without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

HEX40 = "0123456789abcdef0123456789abcdef01234567"
CASE_TIMEOUT_S = 120

# (case id, arguments with {W} for the world folder, fragments the message must hold, extra environment)
CASES: list[tuple[str, list[str], list[str], dict[str, str]]] = [
    # --- names ---------------------------------------------------------------------------------
    ("train-misspelt-dataset", ["train", "--dataset", "cube-singel-play-v0", "--out", "{W}/new"], ["cube-single-play-v0", "rql list"], {}),
    ("train-unknown-dataset", ["train", "--dataset", "foo-v0", "--out", "{W}/new"], ["Unknown OGBench dataset"], {}),
    ("train-unknown-preset", ["train", "--dataset", "cube-single-play-v0", "--preset", "cube-singel", "--dataset-dir", "{W}/data"], ["Unknown preset", "cube-single"], {}),
    ("train-task-out-of-range", ["train", "--dataset", "cube-single-play-v0", "--task", "9", "--dataset-dir", "{W}/data"], ["Task 9 does not exist"], {}),
    ("generate-locomotion", ["data", "generate", "antmaze-large-navigate-v0", "--out", "{W}/gen"], ["rql cannot generate", "--dataset-dir"], {}),
    ("generate-misspelt", ["data", "generate", "cube-singel-play-v0", "--out", "{W}/gen"], ["Did you mean", "cube-single-play-v0"], {}),
    ("generate-task-name", ["data", "generate", "cube-single-play-singletask-task2-v0", "--out", "{W}/gen"], ["is a task name", "cube-single-play-v0"], {}),
    ("info-unknown", ["data", "info", "nope-play-v0", "--dataset-dir", "{W}/data"], ["Unknown OGBench dataset"], {}),
    ("eval-unknown-ref", ["eval", "--checkpoint", "nosuch"], ["No checkpoint 'nosuch'"], {}),
    ("rollout-unknown-ref", ["rollout", "--checkpoint", "nosuch"], ["No checkpoint 'nosuch'"], {}),
    ("pull-not-a-hub-id", ["pull", "not a hub id"], ["is not a Hub repo id"], {}),
    ("push-bad-repo-id", ["push", "{W}/ckpt", "--repo-id", "bad id", "--token", "hf_x"], ["is not a Hub repo id"], {}),
    # --- numbers ---------------------------------------------------------------------------------
    ("eval-envs-zero", ["eval", "--checkpoint", "{W}/ckpt", "--envs", "0"], ["--envs must lie in [1, 1,024]"], {}),
    ("eval-envs-negative", ["eval", "--checkpoint", "{W}/ckpt", "--envs", "-2"], ["--envs must lie in"], {}),
    ("eval-episodes-zero", ["eval", "--checkpoint", "{W}/ckpt", "--episodes", "0"], ["--episodes must lie in"], {}),
    ("eval-task-text", ["eval", "--checkpoint", "{W}/ckpt", "--task", "seven"], ["--task expects a number 1-5 or 'all'"], {}),
    ("train-eval-envs-zero", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--eval-envs", "0", "--out", "{W}/new"], ["eval_envs must lie in [1, 1,024]"], {}),
    ("train-eval-episodes-negative", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--eval-episodes", "-5", "--out", "{W}/new"], ["eval_episodes must lie in"], {}),
    ("train-log-interval-zero", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "log_interval=0", "--out", "{W}/new"], ["log_interval must lie in"], {}),
    ("train-huge-seed", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--seed", "99999999999999999999", "--out", "{W}/new"], ["seed must lie in [0, 2,147,483,647]"], {}),
    ("eval-huge-seed", ["eval", "--checkpoint", "{W}/ckpt", "--episodes", "1", "--seed", "99999999999999999999"], ["--seed must lie in [0, 2,147,483,647]"], {}),
    ("rollout-negative-seed", ["rollout", "--checkpoint", "{W}/ckpt", "--episodes", "1", "--max-steps", "3", "--seed", "-1"], ["--seed must lie in [0, 2,147,483,647]"], {}),
    ("generate-huge-seed", ["data", "generate", "cube-single-play-v0", "--episodes", "1", "--val-episodes", "1", "--seed", "2147483648", "--out", "{W}/gen"], ["--seed must lie in [0, 2,147,483,647]"], {}),
    ("train-negative-steps", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--steps", "-1", "--out", "{W}/new"], ["steps must lie in"], {}),
    ("rollout-fps-zero", ["rollout", "--checkpoint", "{W}/ckpt", "--fps", "0"], ["--fps must lie in"], {}),
    ("rollout-task-nine", ["rollout", "--checkpoint", "{W}/ckpt", "--task", "9"], ["--task must lie in [1, 5]"], {}),
    ("rollout-tiny-size", ["rollout", "--checkpoint", "{W}/ckpt", "--render", "--size", "10x10", "--out", "{W}/v.mp4"], ["between 16 and 4096"], {}),
    ("rollout-odd-mp4", ["rollout", "--checkpoint", "{W}/ckpt", "--render", "--size", "641x480", "--out", "{W}/v.mp4"], ["even width and height"], {}),
    ("rollout-bad-suffix", ["rollout", "--checkpoint", "{W}/ckpt", "--render", "--out", "{W}/v.avi"], [".mp4 or .gif"], {}),
    ("generate-zero-episodes", ["data", "generate", "cube-single-play-v0", "--episodes", "0", "--out", "{W}/gen"], ["num_episodes must be at least 1"], {}),
    ("generate-zero-workers", ["data", "generate", "cube-single-play-v0", "--workers", "0", "--out", "{W}/gen"], ["--workers must lie in"], {}),
    ("finetune-utd-zero", ["finetune", "--checkpoint", "{W}/ckpt", "--online-steps", "5", "--utd", "0"], ["--utd must lie in"], {}),
    ("finetune-negative-online", ["finetune", "--checkpoint", "{W}/ckpt", "--online-steps", "-5"], ["--online-steps must be a positive"], {}),
    ("finetune-dataset-without-steps", ["finetune", "--checkpoint", "{W}/ckpt", "--dataset", "cube-single-play-v0"], ["add --steps N"], {}),
    # --- config fields ---------------------------------------------------------------------------
    ("set-unknown-field", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "alpah=3"], ["Unknown config field 'alpah'", "'alpha'"], {}),
    ("set-wrong-type", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "horizon=abc"], ["'horizon' expects an integer"], {}),
    ("set-list-as-number", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "value_hidden_dims=256"], ["expects a JSON list of ints"], {}),
    ("set-no-equals", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "nokey"], ["--set expects key=value"], {}),
    ("set-expectile-range", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "expectile=1.5"], ["expectile must lie in (0, 1)"], {}),
    ("set-flow-steps-huge", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "flow_steps=1000000000"], ["flow_steps must lie in [1, 1,000]"], {}),
    ("set-ensemble-zero", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "ensemble_size=0"], ["ensemble_size must lie in"], {}),
    ("set-lr-zero", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "lr=0"], ["lr must lie in (0, 1]"], {}),
    ("set-policy-points", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "policy_loss_points=foo"], ["policy_loss_points must be"], {}),
    ("set-width-huge", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "value_hidden_dims=[100000000]"], ["value_hidden_dims must hold"], {}),
    ("set-bool-as-number", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--set", "alpha=true"], ["'alpha' expects a number"], {}),
    ("device-unknown", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--device", "tpu", "--out", "{W}/new"], ["Unknown device 'tpu'"], {}),
    # --- dataset files ---------------------------------------------------------------------------
    ("dataset-missing", ["train", "--dataset", "cube-double-play-v0", "--dataset-dir", "{W}/empty", "--out", "{W}/new"], ["not found", "rql data generate cube-double-play-v0"], {}),
    ("dataset-path-folder", ["train", "--dataset", "cube-single-play-v0", "--dataset-path", "{W}/data", "--out", "{W}/new"], ["is a folder", "--dataset-dir"], {}),
    ("dataset-path-missing", ["train", "--dataset", "cube-single-play-v0", "--dataset-path", "{W}/data/none.npz", "--out", "{W}/new"], ["not found", "none.npz"], {}),
    ("dataset-text-as-npz", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/textdata", "--out", "{W}/new"], ["not a readable .npz archive", "never loads pickled"], {}),
    ("dataset-nan", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/nandata", "--out", "{W}/new"], ["NaN or infinite values"], {}),
    ("info-missing", ["data", "info", "cube-double-play-v0", "--dataset-dir", "{W}/empty"], ["not found"], {}),
    # --- checkpoint files and configs ------------------------------------------------------------
    ("ckpt-config-list", ["eval", "--checkpoint", "{W}/ck-list"], ["must hold a JSON object"], {}),
    ("ckpt-obs-dim-string", ["eval", "--checkpoint", "{W}/ck-obsdim"], ["'obs_dim' must be an integer"], {}),
    ("ckpt-config-not-json", ["eval", "--checkpoint", "{W}/ck-json"], ["is not valid JSON"], {}),
    ("ckpt-truncated", ["eval", "--checkpoint", "{W}/ck-trunc"], ["velocity.safetensors", "truncated or corrupt"], {}),
    ("ckpt-missing-file", ["eval", "--checkpoint", "{W}/ck-missing"], ["missing value.safetensors"], {}),
    ("ckpt-int8", ["eval", "--checkpoint", "{W}/ck-int8"], ["is int8", "refused rather than converted"], {}),
    ("ckpt-nan-weights", ["eval", "--checkpoint", "{W}/ck-nan"], ["NaN or infinite values"], {}),
    ("ckpt-newer-format", ["eval", "--checkpoint", "{W}/ck-newer"], ["format_version 99", "rql 9.0.0"], {}),
    ("ckpt-flow-steps-huge", ["eval", "--checkpoint", "{W}/ck-flow"], ["flow_steps must lie in"], {}),
    ("ckpt-terabytes", ["eval", "--checkpoint", "{W}/ck-huge"], ["would need", "GiB"], {}),
    ("ckpt-wrong-env", ["eval", "--checkpoint", "{W}/ck-env"], ["expects observations of size 28", "gives observations of size 37"], {}),
    ("ckpt-is-a-file", ["eval", "--checkpoint", "{W}/afile.txt"], ["is a file"], {}),
    ("ckpt-empty-folder", ["eval", "--checkpoint", "{W}/empty"], ["neither a checkpoint folder"], {}),
    ("ckpt-best-bad-metrics", ["eval", "--checkpoint", "{W}/run-badmetrics", "--best"], ["metrics.json is not valid JSON"], {}),
    ("eval-json-folder", ["eval", "--checkpoint", "{W}/ckpt", "--json", "{W}/data"], ["--json", "is a folder"], {}),
    ("eval-json-under-a-file", ["eval", "--checkpoint", "{W}/ckpt", "--episodes", "1", "--json", "{W}/afile.txt/r.json"], ["--json {W}/afile.txt/r.json cannot be written", "is a file"], {}),
    ("rollout-video-under-a-file", ["rollout", "--checkpoint", "{W}/ckpt", "--render", "--max-steps", "3", "--out", "{W}/afile.txt/v.mp4"], ["--out {W}/afile.txt/v.mp4 cannot be written", "is a file"], {}),
    ("generate-out-is-a-file", ["data", "generate", "cube-single-play-v0", "--episodes", "1", "--val-episodes", "1", "--out", "{W}/afile.txt"], ["--out {W}/afile.txt is a file"], {}),
    ("ckpt-missing-train-state-key", ["train", "--resume", "{W}/run-badstate"], ["lacks rng.noise"], {}),
    # --- run folders -----------------------------------------------------------------------------
    ("resume-checkpoint-folder", ["train", "--resume", "{W}/run/checkpoints/step_00000002"], ["is a checkpoint folder, not a run folder", "--resume {W}/run"], {}),
    ("resume-not-a-run", ["train", "--resume", "{W}/empty"], ["is not a run folder"], {}),
    ("resume-changes-network", ["train", "--resume", "{W}/run", "--set", "horizon=7"], ["--resume cannot change horizon"], {}),
    ("resume-with-dataset", ["train", "--resume", "{W}/run", "--dataset", "cube-single-play-v0"], ["drop --dataset"], {}),
    ("out-is-a-file", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--out", "{W}/afile.txt"], ["is a file"], {}),
    ("out-is-a-checkpoint", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--out", "{W}/ckpt"], ["is a checkpoint folder"], {}),
    ("out-holds-a-run", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--out", "{W}/run"], ["already holds a run"], {}),
    ("out-not-empty", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--out", "{W}/textdata"], ["not empty"], {}),
    ("finetune-resume-train-run", ["finetune", "--resume", "{W}/run"], ["is not a fine-tuning run"], {}),
    ("finetune-out-not-empty", ["finetune", "--checkpoint", "{W}/ckpt", "--online-steps", "5", "--out", "{W}/data"], ["not empty"], {}),
    ("finetune-no-offline-data", ["finetune", "--checkpoint", "{W}/ckpt", "--online-steps", "5", "--dataset-dir", "{W}/empty", "--out", "{W}/new"], ["--no-offline-data"], {}),
    # --- the Hub ---------------------------------------------------------------------------------
    ("push-no-token", ["push", "{W}/ckpt", "--repo-id", "alice/agent", "--no-video"], ["HF_TOKEN", "Nothing was uploaded"], {}),
    ("push-offline", ["push", "{W}/ckpt", "--repo-id", "alice/agent", "--token", "hf_x"], ["HF_HUB_OFFLINE"], {"HF_HUB_OFFLINE": "1"}),
    ("push-to-a-commit", ["push", "{W}/ckpt", "--repo-id", f"alice/agent@{HEX40}", "--token", "hf_x"], ["not to the commit"], {}),
    ("pull-two-revisions", ["pull", "alice/agent@main", "--revision", "dev"], ["Two revisions"], {}),
    ("pull-offline-uncached", ["pull", "alice/never"], ["offline", "not in the Hub cache"], {"HF_HUB_OFFLINE": "1"}),
    ("eval-save-hub-id", ["eval", "--checkpoint", "alice/agent", "--save"], ["--save writes metrics.json", "rql pull alice/agent --dir"], {}),
]

# Only a machine without CUDA refuses this one (with CUDA it trains), so it has its own test, which CUDA machines skip.
CUDA_ABSENT_CASE = (
    "cuda-absent", ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{W}/data", "--device", "cuda", "--out", "{W}/new"],
    ["asked for CUDA"], {},
)


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    payload = json.loads(path.read_text())
    result = change(payload)
    path.write_text(json.dumps(payload if result is None else result))


def edit_tensor(folder: Path, change) -> None:
    path = folder / "velocity.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = change(tensors[name])
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def world(tiny_run_dir, tiny_dataset_dir, tmp_path_factory) -> Path:
    """Folders of every kind the cases point at, good and broken."""
    import numpy as np

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_dataset_dir, root / "data")
    shutil.copytree(tiny_run_dir, root / "run")
    source = root / "run" / "checkpoints" / "step_00000002"
    for name in ("ckpt", "ck-list", "ck-obsdim", "ck-json", "ck-trunc", "ck-missing", "ck-int8", "ck-nan",
                 "ck-newer", "ck-flow", "ck-huge", "ck-env"):
        shutil.copytree(source, root / name)
    edit_config(root / "ck-list", lambda payload: [1, 2])
    edit_config(root / "ck-obsdim", lambda payload: payload.update(obs_dim="28"))
    (root / "ck-json").joinpath("config.json").write_text("{not json")
    data = (root / "ck-trunc" / "velocity.safetensors").read_bytes()
    (root / "ck-trunc" / "velocity.safetensors").write_bytes(data[: len(data) // 2])
    (root / "ck-missing" / "value.safetensors").unlink()
    edit_tensor(root / "ck-int8", lambda t: t.to(torch.int8))
    edit_tensor(root / "ck-nan", lambda t: torch.full_like(t, float("nan")))
    edit_config(root / "ck-newer", lambda payload: payload.update(format_version=99, versions={"rql": "9.0.0"}))
    edit_config(root / "ck-flow", lambda payload: payload["config"].update(flow_steps=10**9))
    edit_config(root / "ck-huge", lambda payload: payload["config"].update(ensemble_size=1024, value_hidden_dims=[65536] * 8))
    edit_config(root / "ck-env", lambda payload: payload.update(env_id="cube-double-play-singletask-v0"))
    shutil.copytree(root / "run", root / "run-badmetrics")
    (root / "run-badmetrics" / "checkpoints" / "step_00000002" / "metrics.json").write_text("{oops")
    shutil.copytree(root / "run", root / "run-badstate")
    state_path = root / "run-badstate" / "checkpoints" / "step_00000002" / "train_state.safetensors"
    state = load_file(str(state_path))
    del state["rng.noise"]
    save_file(state, str(state_path))
    (root / "empty").mkdir()
    (root / "afile.txt").write_text("not a checkpoint")
    (root / "textdata").mkdir()
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        (root / "textdata" / name).write_text("just text\n")
    (root / "nandata").mkdir()
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        arrays = dict(np.load(root / "data" / name))
        arrays["actions"][3, 1] = np.nan
        np.savez_compressed(root / "nandata" / name, **arrays)
    return root


# The cases that run in a fresh `python -m rql_cli`, and why. huggingface_hub reads HF_HOME (its cache
# and the saved login), HF_ENDPOINT and HF_HUB_OFFLINE once, when it is imported: this process imported
# it with the environment pytest was started in, so a case that reaches the Hub client (every push and
# pull, and a Hub id given to eval) needs an interpreter that imports it with the case's environment:
# no login, an endpoint that refuses at once, HF_HUB_OFFLINE where the case sets it. These runs also
# keep the console script's own entry (`main()`) under the corpus. Every other case needs nothing of a
# fresh process and runs in this one (run_in_process).
FRESH_INTERPRETER = {
    "pull-not-a-hub-id", "push-bad-repo-id", "push-no-token", "push-offline", "push-to-a-commit",
    "pull-two-revisions", "pull-offline-uncached", "eval-save-hub-id",
}


def needs_a_fresh_interpreter(case: tuple[str, list[str], list[str], dict[str, str]]) -> bool:
    name, args, _, extra_env = case
    if args[0] in ("push", "pull") or extra_env or any("/" in arg and "{W}" not in arg and not arg.startswith("-")
                                                        for arg in args[1:]):
        assert name in FRESH_INTERPRETER, f"{name} reaches the Hub client or sets the environment: list it in FRESH_INTERPRETER"
    return name in FRESH_INTERPRETER


def case_env(world: Path, extra_env: dict[str, str]) -> dict[str, str | None]:
    """What a case's environment changes: None unsets a variable."""
    return {**dict(HF_TOKEN=None, HF_HUB_OFFLINE=None, RQL_DEBUG=None, HF_HOME=str(world.parent / "hf-home"),
                   HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_XET="1",
                   RQL_CHECKPOINTS=str(world.parent / "no-bundled"), MUJOCO_GL="egl"), **extra_env}


# The console script's entry, which also says at exit whether torch was imported: a refusal of a Hub command
# needs none of it (importing it is about two seconds before the message).
SAYS_IF_TORCH_WAS_IMPORTED = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('torch ' + ('imported' if 'torch' in sys.modules else 'not imported'),\n"
    "                               file=sys.stderr))\n"
    "sys.argv[0] = 'rql'\n"
    "from rql_cli.cli.app import main\n"
    "main()\n"
)


def run_case(world: Path, args: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """One case in a fresh `python -m rql_cli`, run in the world's parent folder."""
    env = dict(os.environ)
    for key, value in case_env(world, extra_env).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    argv = [arg.replace("{W}", str(world)) for arg in args]
    try:
        return subprocess.run([sys.executable, "-c", SAYS_IF_TORCH_WAS_IMPORTED, *argv], env=env, capture_output=True,
                              text=True, timeout=CASE_TIMEOUT_S, cwd=world.parent)
    except subprocess.TimeoutExpired:  # a bad input that starts work instead of being refused
        return subprocess.CompletedProcess(argv, -1, "", f"still running after {CASE_TIMEOUT_S} s")


class CaseTimedOut(BaseException):
    """The alarm of a case that started work instead of refusing (not an Exception: no handler in the
    command may take it for its own error)."""


def run_in_process(world: Path, args: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """One case through CliRunner in this process, as a fresh process would see it: the same environment,
    the world's parent as working folder, the same time limit. An exception that escaped the command
    becomes its traceback in the output, as the interpreter would print it."""
    import traceback

    import torch
    from typer.testing import CliRunner

    from rql_cli.cli.app import app

    argv = [arg.replace("{W}", str(world)) for arg in args]

    def time_is_up(signum, frame):  # noqa: ANN001
        raise CaseTimedOut

    cwd, threads = os.getcwd(), torch.get_num_threads()
    previous = signal.signal(signal.SIGALRM, time_is_up)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    try:
        os.chdir(world.parent)
        result = CliRunner().invoke(app, argv, env=case_env(world, extra_env))
    except CaseTimedOut:
        return subprocess.CompletedProcess(argv, -1, "", f"still running after {CASE_TIMEOUT_S} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(cwd)
        torch.set_num_threads(threads)  # a case that got as far as the runtime set up may have changed it
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(argv, result.exit_code, text, "")


def problems_with(world: Path, cases: list[tuple[str, list[str], list[str], dict[str, str]]]) -> list[str]:
    """Run the cases (the fresh-interpreter ones two at a time meanwhile); one line for each that was not
    a clean refusal."""
    fresh = [case for case in cases if needs_a_fresh_interpreter(case)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = [pool.submit(run_case, world, case[1], case[3]) for case in fresh]
        results = {case[0]: run_in_process(world, case[1], case[3]) for case in cases if case not in fresh}
        results.update((case[0], future.result()) for case, future in zip(fresh, pending))
    problems = []
    for name, _, fragments, _ in cases:
        result = results[name]
        text = " ".join((result.stdout + result.stderr).split())
        missing = [f.replace("{W}", str(world)) for f in fragments if f.replace("{W}", str(world)) not in text]
        if result.returncode != 1 or "Traceback" in text or missing:
            problems.append(f"{name}: exit {result.returncode}, missing {missing}: {text[-400:]}")
        elif name in FRESH_INTERPRETER and "torch not imported" not in result.stderr:
            problems.append(f"{name}: imported torch before refusing: {text[-400:]}")
    return problems


def test_every_bad_input_gets_one_clean_message_and_changes_nothing(world):
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)
    before = tree_hash(world)
    problems = problems_with(world, CASES)
    print(f"{len(CASES) - len(problems)} of {len(CASES)} bad inputs answered cleanly")
    assert problems == [], "\n".join(problems)
    assert not (world / "new").exists() and not (world / "gen").exists()
    assert tree_hash(world) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, --device cuda trains instead of refusing")
def test_cuda_asked_for_on_a_machine_without_it_gets_one_clean_message(world):
    before = tree_hash(world)
    assert problems_with(world, [CUDA_ABSENT_CASE]) == []
    assert not (world / "new").exists()
    assert tree_hash(world) == before


# How to reach each command that has --seed, with arguments that would start work if the seed were
# accepted: a checkpoint that does not exist, or a dataset folder with nothing in it. {T} is a fresh folder.
SEED_COMMANDS: dict[str, list[str]] = {
    "eval": ["eval", "--checkpoint", "no-such-checkpoint"],
    "rollout": ["rollout", "--checkpoint", "no-such-checkpoint", "--render", "--out", "{T}/v.mp4"],
    "data generate": ["data", "generate", "cube-single-play-v0", "--episodes", "0", "--out", "{T}/gen"],
    "train": ["train", "--dataset", "cube-single-play-v0", "--dataset-dir", "{T}/nodata", "--out", "{T}/run"],
    # finetune builds its config from the checkpoint's, so it needs one that loads
    "finetune": ["finetune", "--checkpoint", str(Path(__file__).resolve().parents[1] / "checkpoints" / "cube-single-task1-rql-cpu"),
                 "--online-steps", "5", "--out", "{T}/run"],
}


def commands_with_a_seed_option() -> set[str]:
    import typer.main

    from rql_cli.cli.app import app

    found: set[str] = set()

    def walk(command, path: list[str]) -> None:  # noqa: ANN001 (a click command or group)
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        elif any("--seed" in param.opts for param in command.params):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("seed", ["99999999999999999999", "2147483648", "-1"])
def test_every_seed_option_refuses_a_seed_outside_the_config_range_before_any_work(seed, tmp_path):
    from typer.testing import CliRunner

    from rql_cli.cli.app import app
    from rql_cli.config import RANGES

    assert commands_with_a_seed_option() == set(SEED_COMMANDS), "list every command with --seed here"
    assert RANGES["seed"] == (0, 2**31 - 1)
    problems = []
    for name, args in SEED_COMMANDS.items():
        argv = [arg.replace("{T}", str(tmp_path)) for arg in args] + ["--seed", seed]
        result = CliRunner().invoke(app, argv)
        text = " ".join(result.output.split())
        if result.exit_code != 1 or result.exception and not isinstance(result.exception, SystemExit) \
                or "seed must lie in [0, 2,147,483,647]" not in text:
            problems.append(f"rql {name}: exit {result.exit_code}, {result.exception!r}: {text[-300:]}")
    assert problems == []
    assert list(tmp_path.iterdir()) == []
