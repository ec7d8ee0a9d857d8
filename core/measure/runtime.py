"""Predictions and scores of an exported file in onnxruntime on CPU: what a user deploying model.onnx gets."""

import math
from pathlib import Path

import numpy as np

from squeezer.core.events import StopCheck, stop_point
from squeezer.core.measure import evaluation_batch, score_predictions


def onnx_session(model: Path | bytes):
    """A single-threaded CPU session, for scoring a file held in memory (core.quantize's int8 model)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_predictions(
    session, x: np.ndarray, batch: int | None = None, threshold: float = 0.0, should_stop: StopCheck | None = None
) -> np.ndarray:
    """Class predictions of an onnxruntime session for every sample, batched like `predict` (by default
    `evaluation_batch` of a sample's size; a fixed batch axis in the file sets the batch), each batch after a
    `should_stop` check: argmax over dim 1, or output > `threshold` for one output channel."""
    model_input = session.get_inputs()[0]
    declared = model_input.shape[0] if model_input.shape else None  # no shape, a name, None or 0 and below: free
    if isinstance(declared, int) and declared > 0:
        batch = declared
    elif batch is None:
        batch = evaluation_batch(math.prod(x.shape[1:]))
    outputs = []
    for start in range(0, len(x), batch):
        stop_point(should_stop)
        outputs.append(
            _classes(np.asarray(session.run(None, {model_input.name: x[start : start + batch]})[0]), threshold)
        )
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.int64)


def onnx_score(model: Path | bytes, x, y, metric: str, should_stop: StopCheck | None = None) -> float:
    """`metric` of an ONNX model (a path or its bytes) on already normalized inputs, in onnxruntime on CPU."""
    import torch

    session = onnx_session(model)
    threshold = onnx_binary_threshold(model)
    predictions = onnx_predictions(session, x.numpy(), threshold=threshold, should_stop=should_stop)
    return score_predictions(metric, torch.from_numpy(predictions), y)


def _classes(output: np.ndarray, threshold: float) -> np.ndarray:
    return output.argmax(1) if output.shape[1] > 1 else (output[:, 0] > threshold).astype(np.int64)


def onnx_binary_threshold(model: Path | bytes) -> float:
    """0.5 when the ONNX graph's output comes from a Sigmoid, 0 otherwise (like core.measure.binary_threshold)."""
    import onnx

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    producers = {output: node for node in proto.graph.node for output in node.output}
    node = producers.get(proto.graph.output[0].name)
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    return 0.5 if node is not None and node.op_type == "Sigmoid" else 0.0
