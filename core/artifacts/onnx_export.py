"""ONNX export of a compressed model, so it runs anywhere onnxruntime does."""

from pathlib import Path

import torch

OPSET = 17


def export_onnx(model, path: Path) -> Path:
    """Writes `model.module` (a LoadedModel) to `path` with a dynamic batch axis.

    Preprocessing is not baked in: it lives in architecture.json, and `squeezer evaluate`
    applies it to .onnx inputs the same way it does for model.sqz and model/.
    """
    if model.input_shape is None:
        raise ValueError("export_onnx needs the model's input_shape")
    example = torch.zeros(1, *model.input_shape)
    torch.onnx.export(
        model.module.eval(), (example,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET, dynamo=False,
    )
    return Path(path)
