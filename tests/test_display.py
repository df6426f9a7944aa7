"""What the CLI draws: result tables, success text, plain progress lines when stdout is no terminal."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from rql_cli.cli import display
from rql_cli.io.metrics import EvaluationReport
from rql_cli.results import EvalResult

RESULT = EvalResult(task=2, success_rate=0.25, success_ci95=(0.1, 0.5), mean_return=-150.0,
                    return_ci95=(-170.0, -130.0), episodes=8)


def render(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text()


def first_cells(text: str) -> list[str]:
    """The first cell of each body row of a table drawn with a rule under its header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"─"}) + 1
    return [line.split()[0] for line in lines[start:] if line.strip()]


def test_success_text_carries_the_interval_and_the_episode_count():
    assert display.success_text(RESULT) == "25.0% [10.0%, 50.0%] over 8 episodes"


def test_eval_table_has_a_row_per_task_and_a_mean_row_for_several():
    report = EvaluationReport(checkpoint="runs/x/checkpoints/step_00000040", dataset="cube-single-play-v0", step=40,
                              device="cpu", tasks=[RESULT, replace(RESULT, task=3, success_rate=0.75)])
    assert report.mean_success_rate == 0.5
    text = render(display.eval_table(report))
    assert "step_00000040: cube-single-play-v0 @ step 40" in text
    assert first_cells(text) == ["2", "3", "mean"] and "75.0%" in text and "50.0%" in text
    single = render(display.eval_table(replace(report, tasks=[RESULT])), width=80)
    assert first_cells(single) == ["2"]
    assert "[10.0%, 50.0%]" in single and "[-170, -130]" in single  # no interval split at 80 columns


def test_progress_prints_plain_lines_when_stdout_is_not_a_terminal(capsys):
    progress = display.make_progress(quiet=False)  # under pytest stdout is not a terminal
    with progress:
        task = progress.add_task("train", total=10, rate="", info="")
        progress.update(task, completed=4, rate="3.0 it/s", info="V 0.1")
        progress.update(task, completed=10, rate="3.0 it/s", info="V 0.1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "train: 4/10 3.0 it/s V 0.1" and lines[-1] == "train: 10/10 3.0 it/s V 0.1"


def test_status_lines_wrap_at_words_on_a_terminal_and_stay_whole_off_one():
    import io

    from rql_cli.cli.display import make_console

    line = ("Training on cube-single-play-singletask-task2-v0: 1,000,000 transitions in 1000 episodes; 645,403 "
            "parameters; device cpu; run folder runs/cube-single-play-v0-seed0-20261203-101010")
    words = set(line.split())
    terminal = make_console(file=io.StringIO(), force_terminal=True, width=110, color_system=None)
    terminal.print(line)
    lines = terminal.file.getvalue().splitlines()
    assert len(lines) == 2 and all(len(text) <= 110 for text in lines)
    assert all(set(text.split()) <= words for text in lines)  # no word cut in two
    piped = make_console(file=io.StringIO(), force_terminal=False, width=110)
    piped.print(line)
    assert piped.file.getvalue() == line + "\n"
