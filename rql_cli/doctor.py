"""`rql doctor`: what this machine gives rql, one check at a time, each with its verdict and its fix.

Every check is a function returning a ``Check``; none raises. The checks that could hang (a GL backend
that never answers, a Hub endpoint that accepts and stays silent) run in a subprocess or a thread with
a timeout. No check prints or returns the Hub token: only whether one is found.

torch (and the modules that load it) are imported inside the checks that use them, so one check run
alone (the tests run each in a fresh process) does not pay for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rql_cli import minari_store
from rql_cli.io import hub_client

RENDER_TASK = "cube-single-play-v0"
RENDER_TIMEOUT_S = 60.0
HUB_TIMEOUT_S = 3.0
MIN_FREE_BYTES = 2 * 2**30
"""Below this much free disk or memory a run (checkpoints, a dataset in memory) is likely to fail."""


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``fix`` is empty when ``ok``; ``needed_by_default`` marks what the default
    commands (data generate, train, eval) cannot work without: its failure makes `rql doctor` exit 1."""

    name: str
    ok: bool
    verdict: str
    fix: str = ""
    needed_by_default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_gpu() -> Check:
    """Whether torch sees the NVIDIA GPUs that ``nvidia-smi`` lists (none on a machine without one is fine)."""
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only wheel"
    torch_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if torch_count:
            return Check("gpu", True, f"torch ({build}) sees {torch_count} GPU(s); no nvidia-smi on PATH")
        return Check("gpu", True, f"no NVIDIA GPU (no nvidia-smi on PATH, no driver); torch ({build}) runs on CPU")
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        smi_count = listed.stdout.count("GPU ") if listed.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError):
        smi_count = 0
    if smi_count == 0:
        return Check("gpu", True, f"nvidia-smi lists no GPU (driver not loaded?); torch ({build}) runs on CPU")
    if torch_count == smi_count:
        return Check("gpu", True, f"torch ({build}) sees the {smi_count} GPU(s) nvidia-smi lists")
    why = "torch is a CPU-only wheel" if not torch.version.cuda else "torch's CUDA build and the driver disagree"
    return Check(
        "gpu", False, f"nvidia-smi lists {smi_count} GPU(s) but torch ({build}) sees {torch_count}: {why}",
        "Install a CUDA build of torch matching the driver (see https://pytorch.org/get-started/locally/), "
        "or check CUDA_VISIBLE_DEVICES.",
    )


def render_probe() -> None:
    """Run in a subprocess by ``check_render``: build the render env, time one 64x64 frame, print JSON."""
    from rql_cli.envs.render import make_render_env, render_frame

    outcome: dict[str, Any] = {"ok": False}
    try:
        env = make_render_env(RENDER_TASK, width=64, height=64)
        start = time.perf_counter()
        frame = render_frame(env)
        outcome = {"ok": frame.shape == (64, 64, 3), "seconds": time.perf_counter() - start}
        env.close()
    except Exception as error:  # GL failures surface as many types; the message carries the fix
        outcome["error"] = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(json.dumps(outcome))


def check_render(timeout: float = RENDER_TIMEOUT_S) -> Check:
    """``MUJOCO_GL`` and whether a headless 64x64 frame renders, in a subprocess a hang cannot escape."""
    backend = os.environ.get("MUJOCO_GL")
    shown = f"MUJOCO_GL={backend}" if backend is not None else "MUJOCO_GL unset (rql renders with egl)"
    fix = "Set MUJOCO_GL=egl for headless rendering (needs libEGL, e.g. `apt-get install libegl1`), or osmesa."
    code = "from rql_cli.doctor import render_probe; render_probe()"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("render", False, f"{shown}: no frame within {timeout:.0f} s (the backend hangs)", fix, True)
    lines = done.stdout.strip().splitlines()
    try:
        outcome = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("render", False, f"{shown}: the render probe crashed ({tail})", fix, True)
    if outcome.get("ok"):
        return Check("render", True, f"{shown}: one 64x64 frame in {outcome['seconds'] * 1000:.0f} ms", "", True)
    return Check("render", False, f"{shown}: {outcome.get('error', 'no frame')}", fix, True)


def check_ffmpeg() -> Check:
    """The ffmpeg that imageio-ffmpeg hands imageio for .mp4 videos (IMAGEIO_FFMPEG_EXE, its own binary, PATH)."""
    fix = "pip install imageio-ffmpeg (it ships ffmpeg), or unset IMAGEIO_FFMPEG_EXE; .gif videos need no ffmpeg."
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        ran = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=10)
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as error:
        return Check("ffmpeg", False, f"no ffmpeg for .mp4 videos: {error}", fix)
    if ran.returncode != 0:
        return Check("ffmpeg", False, f"{exe} -version failed (exit {ran.returncode})", fix)
    version = (ran.stdout.splitlines() or ["ffmpeg"])[0].split(" Copyright")[0]
    return Check("ffmpeg", True, f"{version} at {exe}")


def check_threads() -> Check:
    """The CPU threads and float32 matmul precision `rql train` would start with here (on CPU)."""
    import torch

    from rql_cli.training.matmul_route import cpu_has_bf16
    from rql_cli.training.runtime import configure_threads

    settings, governor = configure_threads(0, torch.device("cpu"))
    adapt = "adapting to other processes' load" if governor is not None else "fixed"
    bf16 = ("yes: --set matmul_precision=medium multiplies between hidden layers in bf16" if cpu_has_bf16()
            else "no: --set matmul_precision=medium gains nothing here")
    return Check(
        "threads", True,
        f"rql train on CPU: {settings.threads} threads of {settings.usable_cores} usable cores, {adapt}; "
        f"float32 matmul precision {torch.get_float32_matmul_precision()}; bf16 products {bf16}",
    )


def _reach(url: str, timeout: float) -> str | None:
    """None when ``url`` answers over HTTP (any status), else why not; a thread bounds DNS too."""
    import urllib.error
    import urllib.request

    result: list[str | None] = ["no answer"]

    def probe() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            result[0] = None
        except urllib.error.HTTPError:
            result[0] = None  # it answered
        except Exception as error:  # refused, unknown host, timeout: the reason is the verdict
            result[0] = str(getattr(error, "reason", error))

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 1)
    return f"no answer within {timeout:.0f} s" if worker.is_alive() else result[0]


def check_hub(timeout: float = HUB_TIMEOUT_S) -> Check:
    """The Hub endpoint, whether it answers, a token's presence (never its value), the cache, offline mode."""
    from huggingface_hub import constants, get_token

    endpoint = hub_client.hub_endpoint()
    token = "a token found" if get_token() else "no token (push needs `hf auth login` or HF_TOKEN)"
    about = f"{token}; cache {constants.HF_HUB_CACHE}"
    if hub_client.is_offline():
        return Check("hub", True, f"offline (HF_HUB_OFFLINE): {endpoint} not contacted; {about}")
    failure = _reach(urllib.parse.urljoin(endpoint.rstrip("/") + "/", "api/models?limit=1"), timeout)
    if failure is None:
        return Check("hub", True, f"{endpoint} answers; {about}")
    return Check(
        "hub", False, f"{endpoint} unreachable ({failure}); {about}",
        "Check the network or HF_ENDPOINT; without a Hub set HF_HUB_OFFLINE=1 (push, pull and minari "
        "downloads need it; local data and checkpoints do not).",
    )


def _folder_check(name: str, folder: Path, how: str, needed: bool) -> Check:
    """A data folder rql writes into: fine if missing (made on first use) or a writable directory."""
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), None)
    if folder.exists() and not folder.is_dir():
        return Check(name, False, f"{folder} ({how}) is not a folder", f"Move that file away, or {_set_hint(name)}",
                     needed)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        return Check(name, False, f"{folder} ({how}) cannot be written", f"Make it writable, or {_set_hint(name)}",
                     needed)
    state = "exists" if folder.is_dir() else "will be made on first use"
    return Check(name, True, f"{folder} ({how}) {state}", "", needed)


def _set_hint(name: str) -> str:
    if name == "minari-data":
        return "set MINARI_DATASETS_PATH to a writable folder."
    return "pass --dataset-dir / --out to a writable folder."


def check_minari_folder() -> Check:
    folder = minari_store.dataset_folder("x").parent
    how = "MINARI_DATASETS_PATH" if os.environ.get("MINARI_DATASETS_PATH") else "Minari's default"
    return _folder_check("minari-data", folder, how, needed=False)


def check_ogbench_folder() -> Check:
    from rql_cli.data.sources import DEFAULT_DATASET_DIR

    return _folder_check("ogbench-data", DEFAULT_DATASET_DIR.expanduser(), "--dataset-dir's default", needed=True)


def check_disk_and_memory(folder: Path = Path(".")) -> Check:
    """Free disk where runs are written (the working folder) and available memory."""
    import torch

    from rql_cli.device import available_bytes

    disk = shutil.disk_usage(folder).free
    memory = available_bytes(torch.device("cpu"))
    shown = "unknown" if memory is None else f"{memory / 2**30:,.1f} GiB"
    verdict = f"{disk / 2**30:,.1f} GiB free disk in {folder.resolve()}; {shown} memory available"
    if disk < MIN_FREE_BYTES or (memory is not None and memory < MIN_FREE_BYTES):
        return Check("disk-memory", False, verdict, "Free disk or memory: runs save checkpoints and hold "
                     "their dataset in memory.", True)
    return Check("disk-memory", True, verdict, "", True)


CHECKS: tuple[Callable[[], Check], ...] = (
    check_gpu, check_render, check_ffmpeg, check_threads, check_hub,
    check_minari_folder, check_ogbench_folder, check_disk_and_memory,
)


def run_checks() -> list[Check]:
    """Every check, in the order `rql doctor` prints them."""
    return [check() for check in CHECKS]


def default_commands_fail(checks: list[Check]) -> bool:
    """Whether a check the default commands need failed (`rql doctor` then exits 1)."""
    return any(check.needed_by_default and not check.ok for check in checks)
