"""metrics.json: one schema, one reader (which migrates format 1's layout), one writer."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rql_cli.errors import CheckpointError
from rql_cli.io.metrics import EvaluationReport, read_metrics, write_metrics
from rql_cli.results import EvalResult

RESULT = EvalResult(success_rate=0.25, success_ci95=(0.1, 0.5), episodes=8, task=2, seeds=list(range(8)))


def test_written_report_reads_back_equal(tmp_path):
    report = EvaluationReport(checkpoint="ckpt", dataset="cube-single-play-v0", step=40, device="cpu",
                              tasks=[RESULT, replace(RESULT, task=3, success_rate=0.75)])
    path = write_metrics(tmp_path, report)
    payload = json.loads(path.read_text())
    assert payload["format_version"] == 2 and payload["mean_success_rate"] == pytest.approx(0.5)
    assert read_metrics(tmp_path) == report
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_format1_training_layout_is_read_as_one_task(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({**RESULT.to_dict(), "dataset_name": "cube-single-play-v0"}))
    report = read_metrics(tmp_path)
    assert report.tasks == [replace(RESULT, dataset_name="cube-single-play-v0")]
    assert report.dataset == "cube-single-play-v0" and report.mean_success_rate == 0.25


def test_missing_file_is_none_and_broken_files_name_the_file(tmp_path):
    assert read_metrics(tmp_path) is None
    path = tmp_path / "metrics.json"
    for text, fragment in [("{not json", "is not valid JSON"), ("[1]", "does not hold an evaluation"),
                           ('{"tasks": [{"success_rate": "high"}]}', "numeric success_rate")]:
        path.write_text(text)
        with pytest.raises(CheckpointError, match=fragment) as info:
            read_metrics(tmp_path)
        assert str(path) in str(info.value)


def test_a_task_whose_interval_is_not_a_pair_names_the_file(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"tasks": [{"success_rate": 0.5, "success_ci95": [0.1]}]}))
    with pytest.raises(CheckpointError, match="interval is not a pair of numbers") as info:
        read_metrics(tmp_path)
    assert str(tmp_path / "metrics.json") in str(info.value)


def test_every_bundled_metrics_file_reads_into_results_that_write_it_back_unchanged():
    from rql_cli.io.bundled import bundled_checkpoint_folders

    folders = bundled_checkpoint_folders()
    if not folders:
        pytest.skip("no bundled agents")
    for name, folder in folders.items():
        payload = json.loads((folder / "metrics.json").read_text())
        assert json.loads(json.dumps(EvaluationReport.from_dict(payload).to_dict())) == payload, name
