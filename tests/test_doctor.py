"""`rql doctor`: each failing check made to fail for real (a GL backend that does not exist, a closed
port, an ffmpeg that is not there, a data folder that is a file), and the truth about this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECK_NAMES = {"gpu", "render", "ffmpeg", "threads", "hub", "minari-data", "ogbench-data", "disk-memory"}


def env_with(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def rql_doctor_json(env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    """Exit code and the checks by name of `rql doctor --json`, in a fresh process with ``env``."""
    done = subprocess.run(
        [sys.executable, "-m", "rql_cli", "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    payload = json.loads(done.stdout)
    assert payload["versions"][0].startswith("rql ")
    return done.returncode, {check["name"]: check for check in payload["checks"]}


def one_check(function: str, env: dict[str, str]) -> dict[str, Any]:
    """One check of rql_cli.doctor run in a fresh process (libraries read their env vars at import)."""
    code = f"import json; from rql_cli.doctor import {function}; print(json.dumps({function}().to_dict()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_doctor_passes_what_default_commands_need_on_this_machine_and_json_lists_every_check():
    code, checks = rql_doctor_json(env_with())
    assert set(checks) == CHECK_NAMES
    needed = [check for check in checks.values() if check["needed_by_default"]]
    assert needed and all(check["ok"] for check in needed), needed
    assert code == 0
    for check in checks.values():
        assert check["verdict"] and (check["ok"] or check["fix"])


def test_unknown_mujoco_gl_backend_fails_render_with_its_fix_and_exit_1():
    code, checks = rql_doctor_json(env_with(MUJOCO_GL="nonexistent-backend", HF_HUB_OFFLINE="1"))
    render = checks["render"]
    assert not render["ok"] and render["needed_by_default"]
    assert "nonexistent-backend" in render["verdict"] and "MUJOCO_GL=egl" in render["fix"]
    assert code == 1


def test_hub_endpoint_on_a_closed_port_fails_quickly_without_printing_the_token():
    secret = "hf_doctorTestTokenNeverShown"
    hub = one_check("check_hub", env_with(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HUB_OFFLINE=None, HF_TOKEN=secret,
    ))
    assert not hub["ok"] and "unreachable" in hub["verdict"] and "HF_HUB_OFFLINE=1" in hub["fix"]
    assert "a token found" in hub["verdict"] and secret not in json.dumps(hub)


def test_ffmpeg_that_is_not_there_fails_the_video_check():
    ffmpeg = one_check("check_ffmpeg", env_with(IMAGEIO_FFMPEG_EXE="/nonexistent/ffmpeg"))
    assert not ffmpeg["ok"] and "imageio-ffmpeg" in ffmpeg["fix"]


def test_minari_folder_that_is_a_file_fails(tmp_path: Path):
    not_a_folder = tmp_path / "datasets"
    not_a_folder.write_text("")
    minari = one_check("check_minari_folder", env_with(MINARI_DATASETS_PATH=str(not_a_folder)))
    assert not minari["ok"] and "not a folder" in minari["verdict"] and "MINARI_DATASETS_PATH" in minari["fix"]


def test_ogbench_folder_that_is_a_file_fails_a_check_default_commands_need(tmp_path: Path):
    (tmp_path / ".ogbench").write_text("")
    ogbench = one_check("check_ogbench_folder", env_with(HOME=str(tmp_path)))
    assert not ogbench["ok"] and ogbench["needed_by_default"] and "cannot be written" in ogbench["verdict"]


def test_the_threads_check_says_whether_medium_precision_gets_bf16_products_here():
    from rql_cli.training.matmul_route import cpu_has_bf16

    verdict = one_check("check_threads", env_with())["verdict"]
    assert ("bf16 products yes" if cpu_has_bf16() else "bf16 products no") in verdict, verdict
