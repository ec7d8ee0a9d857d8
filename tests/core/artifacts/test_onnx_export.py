import types

import numpy as np
import onnxruntime as ort
import torch

from core.artifacts.onnx_export import export_onnx


def test_exported_onnx_matches_torch_at_any_batch_size(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10)
    ).eval()
    # Stand-in for core.intake.models.LoadedModel: export_onnx reads only .module and .input_shape.
    model = types.SimpleNamespace(module=module, input_shape=(1, 8, 8))
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")))
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        (onnx_logits,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(onnx_logits, module(x).detach().numpy(), atol=1e-5)
