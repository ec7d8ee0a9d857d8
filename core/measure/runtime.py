"""Latency of an exported file in onnxruntime on CPU: what a user deploying model.onnx gets, measured like the torch
latency next to it (median of repeated runs, one thread)."""

import statistics
import time
from pathlib import Path

import numpy as np


def onnx_session(path: Path):
    """A single-threaded CPU session: multi-threaded timings of small models swing with every other process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_latency_ms(path: Path, input_shape: tuple[int, ...], *, batch: int = 1, repeats: int = 30,
                    warmup: int = 5) -> float:
    """Median wall time of one onnxruntime run of `path` at `batch`, in milliseconds."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
