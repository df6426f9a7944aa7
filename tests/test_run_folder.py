"""The run folder's files: train_config.json (and format 1's config.json), CSV logs, checkpoint listing."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from rql_cli.config import RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.run_checkpoints import (
    list_checkpoints,
    prune_checkpoints,
    remove_unfinished_writes,
)
from rql_cli.io.run_layout import RUN_FILE, checkpoint_dir, is_run_dir
from rql_cli.io.run_logs import CsvLog
from rql_cli.io.run_record import RunRecord, read_run_record, write_run_record

FORMAT1_RUN = Path(__file__).parent / "data" / "format1-run"


def make_record(**changes) -> RunRecord:
    values = dict(dataset="cube-single-play-v0", data={"dataset_dir": "data", "dataset_path": None, "task": 3},
                  env_id="cube-single-play-singletask-task3-v0", obs_dim=28, action_dim=5,
                  config=RunConfig.of(alpha=3.0), versions={"rql": "0.1.0"})
    return RunRecord(**{**values, **changes})


def test_run_record_round_trips_through_train_config_json(tmp_path):
    record = make_record(parent="alice/agent", history=[{"step": 0, "event": "start"}])
    path = write_run_record(tmp_path / "run", record)
    assert path.name == RUN_FILE and json.loads(path.read_text())["format_version"] == 3
    assert read_run_record(tmp_path / "run") == record


def test_format1_run_record_is_read_from_the_run_folders_config_json(tmp_path):
    record = read_run_record(FORMAT1_RUN)
    assert record.dataset == "cube-single-play-v0" and record.obs_dim == 28
    assert record.config.agent.ensemble_size == 2 and record.history == [] and record.parent is None


def test_broken_run_records_are_clean_errors(tmp_path):
    with pytest.raises(RQLError, match="not a run folder"):
        read_run_record(tmp_path)
    (tmp_path / RUN_FILE).write_text("{oops")
    with pytest.raises(RQLError, match="not valid JSON"):
        read_run_record(tmp_path)
    (tmp_path / RUN_FILE).write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(RQLError, match="lacks the field 'config'"):
        read_run_record(tmp_path)


def test_run_folders_and_checkpoint_folders_are_told_apart(tmp_path):
    run = shutil.copytree(FORMAT1_RUN, tmp_path / "old")
    checkpoint = run / "checkpoints" / "step_00000003"
    assert is_run_dir(run) and not is_run_dir(checkpoint)
    write_run_record(tmp_path / "new", make_record())
    assert not is_run_dir(tmp_path / "new")  # no checkpoints/ yet
    (tmp_path / "new" / "checkpoints" / ".step_00000005.tmp").mkdir(parents=True)
    assert is_run_dir(tmp_path / "new") and list_checkpoints(tmp_path / "new") == []
    assert list_checkpoints(run) == [checkpoint] == [checkpoint_dir(run, 3)]


def test_csv_log_appends_reads_and_drops_rows_after_a_resume_point(tmp_path):
    log = CsvLog(tmp_path / "metrics.csv", ["step", "value"])
    for step in (2, 4, 6):
        log.append({"step": step, "value": step / 3})
    assert [row["value"] for row in log.read()] == ["0.666667", "1.33333", "2"]
    log.truncate_after(4)
    assert [row["step"] for row in CsvLog(tmp_path / "metrics.csv", ["step", "value"]).read()] == ["2", "4"]


def test_retention_keeps_the_newest_and_the_best_evaluated(tmp_path):
    from rql_cli.io.metrics import EvaluationReport, write_metrics
    from rql_cli.results import EvalResult

    run = tmp_path / "run"
    for step, rate in [(1, 0.2), (2, 0.9), (3, None), (4, 0.9), (5, 0.1), (6, None), (7, None)]:
        folder = checkpoint_dir(run, step)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        if rate is not None:
            write_metrics(folder, EvaluationReport("x", "d", step, "cpu", tasks=[EvalResult(success_rate=rate)]))
    assert prune_checkpoints(run, keep=0) == []
    removed = prune_checkpoints(run, keep=2)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002", "step_00000003", "step_00000005"]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000006", "step_00000007"]
    (run / "checkpoints" / ".step_00000008.tmp").mkdir()
    assert [p.name for p in remove_unfinished_writes(run)] == [".step_00000008.tmp"]


def test_a_run_keeps_exactly_its_newest_checkpoints_and_its_best(tiny_dataset_dir, tmp_path):
    from rql_cli.training.offline import DataSpec, train

    config = RunConfig.of(actor_hidden_dims=[16], value_hidden_dims=[16], ensemble_size=2, flow_steps=2, horizon=2,
                       batch_size=4, eval_episodes=0, steps=9, save_interval=1, keep_checkpoints=3, device="cpu")
    outcome = train(config, DataSpec(name="cube-single-play-v0", dataset_dir=str(tiny_dataset_dir)), tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000007", "step_00000008", "step_00000009"]
    assert outcome.last_checkpoint == tmp_path / "run" / "checkpoints" / "step_00000009"


def test_a_run_folder_in_use_refuses_a_second_process_and_a_stale_lock_is_taken_over(tiny_run_dir, tmp_path):
    import subprocess
    import sys

    from rql_cli.io.run_layout import LOCK_FILE
    from rql_cli.io.run_lock import RunLock
    from rql_cli.io.run_record import read_run_record
    from rql_cli.training.offline import DataSpec, train

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    before = (run / "metrics.csv").read_bytes()
    record = read_run_record(run)
    with RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RQLError, match=f"in use by another rql process \\(pid {os.getpid()}\\)"):
            train(record.config.replace(steps=4), DataSpec(name=record.dataset, **record.data), run, resume=True)
        assert (run / "metrics.csv").read_bytes() == before  # the second resume touched nothing
    assert not (run / LOCK_FILE).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with RunLock(run):  # its process has exited: stale, taken over
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    fresh = tmp_path / "never-written"
    with RunLock(fresh) as lock:
        assert not fresh.exists()  # a new run's folder waits until its inputs are checked
        lock.make_folder()
        assert json.loads((fresh / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RQLError, match="in use by another rql process"), RunLock(fresh) as second:
            second.make_folder()  # a second new run into the same --out, racing the first
    assert not fresh.exists()  # a lock alone leaves no folder behind
