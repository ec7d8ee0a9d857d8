"""`squeezer compress` refuses an option past its bound the way the API does: exit 2, one line naming the option and
the bound (the bounds are core.config's, shared by the CLI, the API and the worker)."""

import pytest
from typer.testing import CliRunner

from squeezer.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--option", "lwct.batch_size=16385"], "lwct.batch_size: Input should be less than or equal to 16384"),
        (
            ["--option", "lwct.sparsity_grid=[" + ",".join(["0.5"] * 3000) + "]"],
            "lwct.sparsity_grid: List should have at most 64",
        ),
        (["--option", "lwct.epochs_per_step=1001"], "lwct.epochs_per_step: Input should be less than or equal to 1000"),
        (["--seed", "4294967296"], "seed: Input should be less than or equal to 4294967295"),
    ],
)
def test_an_option_past_its_bound_exits_2_with_one_line(tmp_path, flags, named):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"never read: the options are checked first")
    result = runner.invoke(
        app, ["compress", str(model), "--data", "sample:digits", "--out", str(tmp_path / "out"), *flags]
    )
    assert result.exit_code == 2, result.output + result.stderr
    assert result.stderr.startswith("error: invalid_options: ") and result.stderr.strip().count("\n") == 0
    assert named in result.stderr
    assert not (tmp_path / "out").exists()
