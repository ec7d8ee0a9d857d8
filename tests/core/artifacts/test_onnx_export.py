import types

import numpy as np
import onnx
import onnxruntime as ort
import torch

from squeezer.core.artifacts.onnx_export import export_onnx, integer_codes
from squeezer.core.artifacts.sqz import round_for_storage


def test_exported_onnx_matches_torch_at_any_batch_size(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10)
    ).eval()
    # Stand-in for core.intake.models.LoadedModel: export_onnx reads only .module and .input_shape.
    model = types.SimpleNamespace(module=module, input_shape=(1, 8, 8), onnx_graph=None)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")))
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        (onnx_logits,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(onnx_logits, module(x).detach().numpy(), atol=1e-5)


def _initializer_types(path) -> dict[str, int]:
    return {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}


def test_ternary_and_float16_weights_are_stored_compactly_and_decode_exactly(tmp_path):
    torch.manual_seed(0)
    conv, norm, linear = torch.nn.Conv2d(4, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Linear(576, 10)
    module = torch.nn.Sequential(conv, norm, torch.nn.ReLU(), torch.nn.Flatten(), linear).eval()
    with torch.no_grad():
        conv.weight.copy_(0.3 * torch.sign(conv.weight) * (torch.rand_like(conv.weight) > 0.5))  # ternary, one σ
        norm.running_var.uniform_(0.5, 2.0)  # folded into the conv, it makes σ differ per output channel
        linear.weight.copy_(linear.weight.half().float())  # exact in float16
    model = types.SimpleNamespace(module=module, input_shape=(4, 8, 8), onnx_graph=None)
    compact = export_onnx(model, tmp_path / "compact.onnx")
    dense = export_onnx(model, tmp_path / "dense.onnx", compact=False)
    types_by_name = _initializer_types(compact)
    assert onnx.TensorProto.INT4 in types_by_name.values() and onnx.TensorProto.FLOAT16 in types_by_name.values()
    assert compact.stat().st_size < dense.stat().st_size / 1.6
    x = torch.randn(4, 4, 8, 8)
    (logits,) = ort.InferenceSession(str(compact)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, module(x).detach().numpy(), atol=1e-5)
    # onnxruntime folds the decoding into constants when the session starts: the graph it runs is the float one's
    assert _optimized_ops(compact, tmp_path) == _optimized_ops(dense, tmp_path)


def _optimized_ops(path, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_integer_codes_only_when_exact():
    sigma = np.float32(0.123)
    ternary = sigma * np.array([[1, 0, -1, 1], [0, 0, 0, 0], [-1, -1, 0, 1]], np.float32)
    codes, scales, kind = integer_codes(ternary)
    assert kind == onnx.TensorProto.INT4 and scales.tolist() == [sigma] and set(codes.flatten()) == {-1, 0, 1}
    assert integer_codes(np.array([[0.1, 0.25, 0.7]], np.float32)) is None  # not multiples of one scale, exactly
    wide = np.arange(-100, 100, dtype=np.float32).reshape(2, 100) * np.float32(0.5)
    assert integer_codes(wide)[2] == onnx.TensorProto.INT8


def test_pruned_layers_store_only_their_nonzeros(tmp_path):
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(8, 16, 3), torch.nn.Linear(576, 10)
    module = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), linear).eval()
    with torch.no_grad():  # 95 % pruned float16 weights; the linear one has gaps longer than a byte holds
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.95).copy_(conv.weight.half().float())
        linear.weight.mul_(torch.rand_like(linear.weight) > 0.99).copy_(linear.weight.half().float())
    model = types.SimpleNamespace(module=module, input_shape=(8, 8, 8), onnx_graph=None)
    compact = export_onnx(model, tmp_path / "compact.onnx")
    dense = export_onnx(model, tmp_path / "dense.onnx", compact=False)
    assert "ScatterElements" in {node.op_type for node in onnx.load(str(compact)).graph.node}
    assert compact.stat().st_size * 8 < dense.stat().st_size
    x = torch.randn(3, 8, 8, 8)
    (logits,) = ort.InferenceSession(str(compact)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, module(x).detach().numpy(), atol=1e-5)
    assert _optimized_ops(compact, tmp_path) == _optimized_ops(dense, tmp_path)


def test_int8_grid_with_one_scale_is_found_when_no_code_is_one():
    scale = np.float32(0.0123)
    grid = np.array([[127, -64, 0, 3], [-2, 90, 5, -127]], np.float32) * scale
    codes, scales, kind = integer_codes(grid)
    assert kind == onnx.TensorProto.INT8 and len(scales) == 1
    np.testing.assert_array_equal(codes.astype(np.float32) * scales[0], grid)


def test_an_int4_grid_of_the_grid_search_exports_as_int4_codes():
    weight = torch.randn(16, 40)
    grid = round_for_storage(weight, "int4").numpy()
    codes, scales, kind = integer_codes(grid)
    assert kind == onnx.TensorProto.INT4 and len(scales) == 1 and np.abs(codes).max() == 7
    np.testing.assert_array_equal(codes.astype(np.float32) * scales[0], grid)


def test_sparse_ternary_packs_gap_and_sign_in_one_byte(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(400, 120)
    with torch.no_grad():  # 90 % zeros, the rest ±σ: one byte per nonzero instead of a gap byte and an int4 code
        linear.weight.copy_(0.05 * torch.sign(linear.weight) * (torch.rand_like(linear.weight) > 0.9))
    model = types.SimpleNamespace(
        module=torch.nn.Sequential(torch.nn.Flatten(), linear).eval(), input_shape=(400,), onnx_graph=None
    )
    compact = export_onnx(model, tmp_path / "compact.onnx")
    ops = {node.op_type for node in onnx.load(str(compact)).graph.node}
    assert {"Gather", "Mod", "ScatterElements"} <= ops
    nonzeros = int((linear.weight != 0).sum())
    weight_bytes = sum(init.ByteSize() for init in onnx.load(str(compact)).graph.initializer if "weight" in init.name)
    assert weight_bytes < nonzeros * 1.1 + 200
    x = torch.randn(5, 400)
    (logits,) = ort.InferenceSession(str(compact)).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(logits, model.module(x).detach().numpy(), atol=1e-5)
