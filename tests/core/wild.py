"""Models as users bring them (issue 12): trained on real digits, exported by torch's ONNX exporter in eval mode
(BatchNorm folded into the convolutions), with the weight scales other exporters and optimisers leave behind."""

import io

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from squeezer.core.intake.data import load_dataset


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def residual_cnn(width: int = 16, blocks: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *[ResidualBlock(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def train_on_digits(module: nn.Module, *, epochs: int = 8, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Adam on sklearn's digits (the sample:digits split), as a user would have trained it."""
    torch.manual_seed(seed)
    data = load_dataset("sample:digits")
    optimizer = torch.optim.Adam(module.parameters(), lr)
    for _ in range(epochs):
        module.train()
        for idx in torch.randperm(len(data.x_train)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(data.x_train[idx]), data.y_train[idx]).backward()
            optimizer.step()
    return module.eval()


def export_eval(module: nn.Module, *, opset: int = 13, dynamic_batch: bool = True, input_shape=(1, 8, 8)) -> bytes:
    """torch.onnx's legacy exporter in eval mode: BatchNorm is folded into the preceding convolutions."""
    buffer = io.BytesIO()
    axes = {"x": {0: "n"}, "y": {0: "n"}} if dynamic_batch else None
    torch.onnx.export(
        module.eval(),
        torch.zeros(1, *input_shape),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=axes,
    )
    return buffer.getvalue()


def rescaled(onnx_bytes: bytes, factor: float) -> bytes:
    """The same function with other weight scales: the stem convolution and every convolution bias × factor, the
    classifier's weight ÷ factor (ReLU, residual additions and average pooling are positively homogeneous, so the
    outputs do not change). A fixed learning rate that suits the original wrecks this one."""
    proto = onnx.load_model_from_string(onnx_bytes)
    tensors = {t.name: t for t in proto.graph.initializer}

    def scale(name: str, by: float) -> None:
        tensor = tensors[name]
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(by), name))

    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    scale(convs[0].input[1], factor)
    for conv in convs:
        scale(conv.input[2], factor)
    scale(next(node for node in proto.graph.node if node.op_type == "Gemm").input[1], 1 / factor)
    return proto.SerializeToString()
