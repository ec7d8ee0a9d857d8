"""`squeezer compress` with options of a method it does not run: exit 2, one line naming them."""

from typer.testing import CliRunner

from squeezer.cli.main import app

runner = CliRunner()


def test_options_of_another_method_exit_2_with_one_line_naming_them(tmp_path):
    result = runner.invoke(
        app,
        [
            "compress",
            str(tmp_path / "never-read.onnx"),  # the options are refused before the model is opened
            "--data",
            "sample:digits",
            "--method",
            "filter",
            "--option",
            "lwct.sparsity=0.5",
            "--option",
            "group.penalties=[0.1]",
            "--option",
            "filter.levels=[0.3]",
        ],
    )
    assert result.exit_code == 2, result.output + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: invalid_options: ") and "\n" not in line
    assert "lwct.sparsity" in line and "group.penalties" in line and "filter.levels" not in line


def test_the_epochs_option_goes_to_every_method_auto_trains(tmp_path):
    result = runner.invoke(
        app,
        ["compress", str(tmp_path / "missing.onnx"), "--data", "sample:digits", "--method", "auto"]
        + ["--epochs-per-step", "1", "--drop-type", "relative"],
    )
    # the config is valid (epochs set on lwct, filter and group only): the missing model is what stops it
    assert result.exit_code == 2 and "invalid_options" not in result.stderr, result.stderr
