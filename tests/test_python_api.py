"""`from squeezer import compress, evaluate, load` on the bundled sample, as the README shows it."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import squeezer
from squeezer import CompressionResult, compress, evaluate, load
from squeezer.core.errors import InputError
from squeezer.core.samples import ensure_sample_model

# Seconds on two cores: one pruning level, no fine-tuning, a budget it cannot miss.
QUICK = {"lwct": {"sparsity": 0.5, "prune_epochs": 0, "epochs_per_step": 0}}


@pytest.fixture(scope="module")
def sample_model() -> Path:
    return ensure_sample_model("digits")[0]


@pytest.fixture(scope="module")
def result(sample_model, tmp_path_factory) -> CompressionResult:
    out = tmp_path_factory.mktemp("api") / "out"
    return compress(sample_model, "sample:digits", max_drop=100, output_dir=out, device="cpu", options=QUICK)


def test_compress_returns_the_report_and_the_paths_of_what_it_wrote(result):
    assert result.report == json.loads(result.report_json.read_text())
    assert result.target_met and result.report["target"] == {"max_drop": 100, "drop_type": "absolute"}
    assert result.compression_ratio == result.report["compression_ratio"] > 1
    assert result.accuracy_drop == result.report["accuracy_drop"]
    for path in (result.model_sqz, result.model_onnx, result.report_html, result.model_dir / "model.safetensors"):
        assert path.is_file(), path
    assert CompressionResult.from_dir(result.output_dir).report == result.report


def test_evaluate_and_load_reproduce_the_reported_accuracy(result):
    evaluation = evaluate(result.model_sqz, "sample:digits")
    assert (evaluation.metric, evaluation.accuracy) == ("top1", result.report["compressed"]["accuracy"])
    loaded = load(result.model_sqz)
    shape = tuple(loaded.input_shape)
    with torch.no_grad():
        assert loaded.module.eval()(torch.zeros(2, *shape)).shape == (2, loaded.num_classes)
    assert evaluate(result.model_dir, "sample:digits").accuracy == evaluation.accuracy


def test_the_budget_and_the_method_are_keyword_only(sample_model, tmp_path):
    with pytest.raises(TypeError):
        compress(sample_model, "sample:digits", 1.0)  # type: ignore[misc]


def test_bad_options_are_an_input_error_naming_the_field(sample_model, tmp_path):
    with pytest.raises(InputError) as raised:
        compress(sample_model, "sample:digits", max_drop=-1, output_dir=tmp_path, options={"lwct": {"sparsity": 2}})
    assert raised.value.code == "invalid_options"
    assert "target.max_drop" in raised.value.message and "lwct.sparsity" in raised.value.message
    assert not (tmp_path / "report.json").exists()


class _Canary:
    """Unpickled, it would create the file: proof that a loader ran the pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("name", ["model.sqz", "model.pt", "model.pth"])
def test_load_never_unpickles_a_file(tmp_path, name):
    canary = tmp_path / "canary"
    (tmp_path / name).write_bytes(pickle.dumps(_Canary(canary)))
    with pytest.raises(InputError):
        load(tmp_path / name)
    with pytest.raises(InputError):
        evaluate(tmp_path / name, "sample:digits")
    assert not canary.exists()


def test_importing_squeezer_loads_no_engine_until_a_name_is_used():
    code = (
        "import sys, squeezer\n"
        "assert 'torch' not in sys.modules and 'squeezer.library' not in sys.modules\n"
        "assert {'compress', 'evaluate', 'load'} <= set(dir(squeezer))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert squeezer.compress is squeezer.library.compress and squeezer.load is squeezer.library.load
    with pytest.raises(AttributeError):
        squeezer.no_such_name  # noqa: B018
