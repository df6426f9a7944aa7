"""Push and pull times of a paper-sized checkpoint (4x512, K=10) against the local test Hub.

Starts tests/hub_server.py on 127.0.0.1, saves a checkpoint with RQLConfig's defaults (obs 28,
action 5, horizon 5), pushes it with `rql push`'s code path (one commit, inline content: the test
Hub asks for no LFS or Xet), then pulls it into an empty cache and verifies it as `rql pull` does.
Prints sizes and seconds. Example:

    python benchmarks/hub_push_pull.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# huggingface_hub reads these when it is first imported, so they are set before anything imports it.
WORK = Path(tempfile.mkdtemp(prefix="rql-hub-bench-"))
os.environ.update(HF_HOME=str(WORK / "hf"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
os.environ.pop("HF_HUB_OFFLINE", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hub_server import HubServer


def make_checkpoint(folder: Path) -> Path:
    import torch

    from rql_cli.config import RQLConfig
    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint import save_checkpoint, software_versions
    from rql_cli.io.checkpoint_meta import CheckpointMeta

    config = RQLConfig(horizon=5)
    torch.manual_seed(0)
    agent = RQLAgent(config, 28, 5, torch.device("cpu"))
    meta = CheckpointMeta(config=config, dataset="cube-single-play-v0", env_id="cube-single-play-singletask-v0",
                          obs_dim=28, action_dim=5, step=1_000_000, versions=software_versions())
    return save_checkpoint(folder, agent, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=1, help="Pushes of the same checkpoint (each one commit).")
    args = parser.parse_args()

    with HubServer() as hub:
        os.environ.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token)
        from rql_cli.io.hub import pull_checkpoint, push_checkpoint, verify_checkpoint

        folder = make_checkpoint(WORK / "paper")
        size = sum(p.stat().st_size for p in folder.iterdir() if p.name != "train_state.safetensors")
        print(f"checkpoint: actor 4x512, value 4x512 x K=10, horizon 5; {size / 1e6:.1f} MB published "
              f"(velocity {(folder / 'velocity.safetensors').stat().st_size / 1e6:.1f} MB, "
              f"value {(folder / 'value.safetensors').stat().st_size / 1e6:.1f} MB)")
        for index in range(args.pushes):
            started = time.perf_counter()
            meta = verify_checkpoint(folder)  # what `rql push` does first: load it, so it is never broken
            result = push_checkpoint(folder, meta, "bench/rql-paper", commit_message=f"push {index + 1}")
            total = time.perf_counter() - started
            print(f"push {index + 1}: {result.size_bytes / 1e6:.1f} MB in {result.seconds:.2f} s upload "
                  f"({result.size_bytes / 1e6 / result.seconds:.0f} MB/s); {total:.2f} s with the load check "
                  f"before it; commit {result.commit_oid[:10]}")
        started = time.perf_counter()
        pulled = pull_checkpoint("bench/rql-paper", verify=False)
        download = time.perf_counter() - started
        started = time.perf_counter()
        verify_checkpoint(pulled)
        check = time.perf_counter() - started
        got = sum(p.stat().st_size for p in pulled.iterdir())
        print(f"pull (cold cache): {got / 1e6:.1f} MB in {download:.2f} s download ({got / 1e6 / download:.0f} MB/s) "
              f"+ {check:.2f} s verify (load on CPU, dims against config.json)")


if __name__ == "__main__":
    try:
        main()
    finally:
        import shutil

        shutil.rmtree(WORK, ignore_errors=True)
