"""Pieces every training loop shares: the loss window and its NaN check, due steps, stop signals."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from rql_cli.errors import NonFiniteLossError
from rql_cli.training.loop import LOGGED_TERMS, LossWindow, is_due
from rql_cli.training.session import resume_command
from rql_cli.training.signals import StopSignals


def step_metrics(value: float, **special: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(special.get(name, value)) for name in LOGGED_TERMS}


def test_loss_window_averages_the_steps_since_the_last_flush():
    window = LossWindow()
    assert window.flush(0, None) is None
    for value in (1.0, 2.0, 3.0):
        window.add(step_metrics(value))
    row = window.flush(3, None)
    assert row["step"] == 3 and row["steps_per_second"] > 0
    assert all(row[name] == pytest.approx(2.0) for name in LOGGED_TERMS)
    window.add(step_metrics(10.0))
    assert window.flush(4, None)["value"] == pytest.approx(10.0)  # the window starts afresh


def test_non_finite_loss_names_the_first_bad_step_and_term(tmp_path):
    window = LossWindow()
    window.add(step_metrics(1.0))
    window.add(step_metrics(1.0, bc=float("inf"), policy=float("nan")))
    window.add(step_metrics(float("nan")))
    with pytest.raises(NonFiniteLossError) as info:
        window.flush(12, tmp_path / "step_00000010")
    assert (info.value.step, info.value.term) == (11, "bc")
    assert "step_00000010" in str(info.value)


def test_due_steps_are_multiples_of_the_interval_and_the_last_step():
    assert [s for s in range(1, 11) if is_due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if is_due(s, 0, 10)] == [10]


def test_first_stop_signal_asks_to_stop_second_stops_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_command_quotes_the_folder():
    assert resume_command("runs/my run") == "rql train --resume 'runs/my run'"
