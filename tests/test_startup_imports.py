"""The console script and the API start without torch: `squeezer --help`, `status` or an API process that only
serves stored jobs pay no second of torch import, and the engine's libraries load where a job runs."""

import subprocess
import sys

import pytest

ENGINE_LIBRARIES = ("torch", "onnxruntime", "onnx2torch", "torchvision")


@pytest.mark.parametrize("module", ["squeezer.cli.main", "squeezer.api.app"])
def test_entry_points_import_no_engine_library(module, tmp_path):
    probe = (
        f"import sys, {module}; print(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(ENGINE_LIBRARIES)}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
