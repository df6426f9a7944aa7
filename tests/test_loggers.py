"""`--log tensorboard`: event files that TensorBoard's own reader reads back with the logged numbers and\nthe rollout video."""

from __future__ import annotations

import csv

import pytest
from cli_checks import assert_refused, invoke
from conftest import TINY_NAME

SMALL = ["--set", "actor_hidden_dims=[32,32]", "--set", "value_hidden_dims=[32,32]", "--set", "horizon=5",
         "--set", "batch_size=8", "--set", "flow_steps=4", "--set", "log_interval=2", "--device", "cpu"]


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


def test_tensorboard_holds_the_logged_scalars_at_the_logged_steps(tiny_dataset_dir, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--dataset", TINY_NAME, "--dataset-dir", str(tiny_dataset_dir), "--steps", "6",
                    "--eval-interval", "6", "--eval-episodes", "1", "--log", "tensorboard", "--out", str(run), "--quiet",
                    *SMALL)
    assert result.exit_code == 0, result.output
    logged, events = scalars(run / "tensorboard")
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [step for step, _ in logged["loss/value"]] == [int(r["step"]) for r in rows] == [2, 4, 6]
    for term in ("value", "bc", "policy", "total"):
        assert [v for _, v in logged[f"loss/{term}"]] == pytest.approx([float(r[term]) for r in rows], rel=1e-5)
    with open(run / "eval.csv") as handle:
        (evaluation,) = list(csv.DictReader(handle))
    assert logged["eval/success_rate"] == [(6, pytest.approx(float(evaluation["success_rate"])))]
    assert "run/train_config/text_summary" in events.Tags()["tensors"]

    # a rendered rollout of the run's checkpoint goes into the same log, at the checkpoint's step
    video = tmp_path / "rollout.mp4"
    result = invoke("rollout", "--checkpoint", str(run), "--render", "--episodes", "1", "--max-steps", "7",
                    "--size", "64x48", "--out", str(video), "--quiet")
    assert result.exit_code == 0, result.output
    assert "tensorboard log at step 6" in result.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    (image,) = events.Images("rollout/video")
    import imageio.v3 as iio

    frames = iio.imread(image.encoded_image_string, extension=".gif", index=None)
    assert (image.step, image.width, image.height) == (6, 64, 48)
    assert frames.shape[0] == iio.imread(video, index=None).shape[0] == 8  # the reset frame and one per step


def test_an_unknown_logger_is_refused_before_any_work(tmp_path):
    assert_refused(invoke("train", "--dataset", TINY_NAME, "--log", "neptune", "--out", str(tmp_path / "x")),
                   "log_to takes tensorboard, wandb")
    assert not (tmp_path / "x").exists()
