"""Progress that pipelines can see (issue 12): with stdout not a terminal, `compress` (and `submit --wait`) print a
plain line at every stage change and every few seconds; `--log-format json` prints one JSON object per line."""

import io
import json

import pytest
from typer.testing import CliRunner

from squeezer.cli.main import app
from squeezer.cli.output import ProgressLines
from squeezer.core.samples import ensure_sample_model

runner = CliRunner()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_each_stage_change_and_every_interval_within_a_stage():
    stream, clock = io.StringIO(), Clock()
    lines = ProgressLines("text", metric="top1", interval=5.0, stream=stream, clock=clock)
    lines.update("baseline", 0.02)
    lines.update("baseline", 0.03)  # same stage, too soon: nothing
    clock.now = 1.0
    lines.update("prune", 0.10, best_accuracy=97.5, best_ratio=2.0)  # a new stage: at once
    clock.now = 4.0
    lines.update("prune", 0.15, best_accuracy=97.5, best_ratio=2.0)
    clock.now = 6.5
    lines.update("prune", 0.20, best_accuracy=97.1, best_ratio=4.25)
    assert stream.getvalue().splitlines() == [
        "baseline 2%",
        "prune 10%  best top1 97.50% ×2.0",
        "prune 20%  best top1 97.10% ×4.2",
    ]


def test_a_change_of_the_jobs_status_is_a_line_at_once():
    stream, clock = io.StringIO(), Clock()
    lines = ProgressLines("text", interval=5.0, stream=stream, clock=clock)
    lines.update("done", 1.0, status="running")
    clock.now = 1.0
    lines.update("done", 1.0, status="succeeded")  # same stage, too soon for a repeat, but the job ended
    assert stream.getvalue().splitlines() == ["[running] done 100%", "[succeeded] done 100%"]


def test_text_lines_stay_off_a_terminal_and_json_lines_do_not():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    ProgressLines("text", stream=terminal).update("train", 0.5)
    assert terminal.getvalue() == ""
    ProgressLines("json", metric="top1", stream=terminal).update("train", 0.5, status="running")
    assert json.loads(terminal.getvalue()) == {
        "stage": "train",
        "progress": 0.5,
        "best_accuracy": None,
        "best_compression_ratio": None,
        "metric": "top1",
        "status": "running",
    }


@pytest.mark.slow
def test_compress_prints_json_progress_lines(tmp_path):
    model = ensure_sample_model("digits")[0]
    result = runner.invoke(
        app,
        [
            "compress",
            str(model),
            "--data",
            "sample:digits",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--epochs-per-step",
            "0",
            "--option",
            "lwct.sparsity=0.5",
            "--option",
            "lwct.prune_epochs=0",
            "--max-drop",
            "100",
            "--log-format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    stages = [record["stage"] for record in records]
    assert stages[0] == "intake" and stages[-1] == "done" and "step" in stages
    assert records[-1]["progress"] == 1.0 and records[-1]["best_compression_ratio"] > 1
