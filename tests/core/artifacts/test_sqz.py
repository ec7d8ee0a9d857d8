import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from squeezer.core.artifacts.sqz import (
    GRID_LEVELS,
    JSON_HEADER_MAGIC,
    MAGIC,
    _rice_parameter,
    _unpack,
    inspect_sqz,
    load_sqz,
    pack_sqz,
    round_for_storage,
    write_sqz,
)
from squeezer.core.errors import ModelFormatError
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import build_architecture
from squeezer.core.methods.results import LayerState

ARCH = {"name": "lenet5", "args": {"input_size": 8, "in_channels": 1, "num_classes": 10}}


def _layer(name, weight, representation, sigma=None):
    return LayerState(
        name=name,
        type="Linear",
        shape=list(weight.shape),
        params=weight.numel(),
        sparsity=float((weight == 0).float().mean()),
        representation=representation,
        sigma=sigma,
        bits=0.0,
        significance_rank=0,
        accepted=representation == "ternary",
    )


def _compressed_lenet(tmp_path, half=False):
    """lenet5 with a dense-ish ternary layer, a very sparse ternary layer, a sparse float layer and dense floats;
    with `half`, every float weight and bias rounded to float16 values (as lwct's float_precision leaves them)."""
    torch.manual_seed(0)
    module = build_architecture(ARCH["name"], ARCH["args"]).eval()
    named = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = []
    with torch.no_grad():
        for (name, layer), (representation, keep) in zip(
            named,
            [("float", 1.0), ("ternary", 0.6), ("ternary", 0.02), ("sparse-float", 0.1), ("float", 1.0)],
            strict=False,
        ):
            mask = torch.rand_like(layer.weight) < keep
            sigma = None
            if representation == "ternary":
                sigma = float(layer.weight[mask].abs().mean())
                layer.weight.copy_(torch.where(mask, torch.sign(layer.weight), 0.0) * torch.tensor(sigma))
            elif representation == "sparse-float":
                layer.weight.copy_(torch.where(mask, layer.weight, 0.0))
                layer.weight[0, 0] = -0.0  # a negative zero must survive the round trip bit for bit
            if half and representation != "ternary":
                layer.weight.copy_(layer.weight.half().float())
                layer.bias.copy_(layer.bias.half().float())
            layers.append(_layer(name, layer.weight, representation, sigma))
    return LoadedModel.built(module, ARCH, (1, 8, 8), 10), layers


def test_round_trip_is_bit_exact_for_every_encoding(tmp_path):
    model, layers = _compressed_lenet(tmp_path)
    path = tmp_path / "model.sqz"
    size = write_sqz(path, model, layers)
    assert size == path.stat().st_size == len(pack_sqz(model, layers))

    header = inspect_sqz(path.read_bytes())
    encodings = {(e["enc"], e.get("index")) for e in header["tensors"].values()}
    assert {("ternary", "bitmap"), ("ternary", "rice"), ("sparse", "rice"), ("raw", None)} <= encodings

    loaded = load_sqz(path)
    original = model.module.state_dict()
    restored = loaded.module.state_dict()
    assert original.keys() == restored.keys()
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype
        assert torch.equal(restored[key].view(torch.int32), tensor.view(torch.int32)), key
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.module(x), model.module.eval()(x))
    assert loaded.architecture["name"] == "lenet5" and loaded.num_classes == 10


def test_float16_exact_weights_are_stored_in_half_precision_and_restored_bit_exact(tmp_path):
    model, layers = _compressed_lenet(tmp_path, half=True)
    header = inspect_sqz(pack_sqz(model, layers))
    tensors = header["tensors"]
    assert tensors["features.0.weight"]["enc"] == "dense" and tensors["features.0.weight"]["values"] == "float16"
    assert tensors["classifier.3.weight"]["enc"] == "sparse" and tensors["classifier.3.weight"]["values"] == "float16"
    assert tensors["features.0.bias"]["values"] == tensors["classifier.3.bias"]["values"] == "float16"  # exact: halved
    assert all(
        entry["enc"] == "raw"
        for key, entry in inspect_sqz(pack_sqz(*_compressed_lenet(tmp_path)))["tensors"].items()
        if key.endswith(".bias")
    )  # not exact in float16: float32
    path = tmp_path / "model.sqz"
    full = len(pack_sqz(*_compressed_lenet(tmp_path)))
    assert write_sqz(path, model, layers) < full
    restored = load_sqz(path).module.state_dict()
    for key, tensor in model.module.state_dict().items():
        assert restored[key].dtype == torch.float32
        assert torch.equal(restored[key].view(torch.int32), tensor.view(torch.int32)), key


def test_int8_rounded_layers_are_stored_as_q8_codes_and_restored_bit_exact(tmp_path):
    """A dense and a sparse float layer on an int8 grid (lwct's float_precision=int8) are stored as q8 codes, smaller
    than float16, and load back bit for bit."""
    model, layers = _compressed_lenet(tmp_path)
    with torch.no_grad():
        for name in ("features.0", "classifier.3"):
            layer = model.module.get_submodule(name)
            layer.weight.copy_(round_for_storage(layer.weight, "int8"))
    header = inspect_sqz(pack_sqz(model, layers))["tensors"]
    assert header["features.0.weight"] == {**header["features.0.weight"], "enc": "dense", "values": "q8"}
    assert header["classifier.3.weight"]["enc"] == "sparse" and header["classifier.3.weight"]["values"] == "q8"
    q8_bytes = sum(header[f"{name}.weight"]["sizes"][-1] for name in ("features.0", "classifier.3"))
    assert q8_bytes < 2 * (150 + header["classifier.3.weight"]["nnz"])  # under float16's bytes
    path = tmp_path / "model.sqz"
    write_sqz(path, model, layers)
    restored = load_sqz(path).module.state_dict()
    for key, tensor in model.module.state_dict().items():
        assert torch.equal(restored[key].view(torch.int32), tensor.view(torch.int32)), key


@pytest.mark.parametrize("precision", ["float16", *GRID_LEVELS])
def test_a_weight_rounded_to_zero_is_a_positive_zero_the_sparse_index_drops(tmp_path, precision):
    """Rounding a small negative weight gives −0.0, which the pack keeps as a value (it is bit-exact): stored
    rounding returns +0.0, so a sparse layer packs only the weights that stayed nonzero."""
    model, layers = _compressed_lenet(tmp_path)
    layer = model.module.get_submodule("classifier.3")
    with torch.no_grad():
        layer.weight[0, :4] = torch.tensor([-1e-9, -0.0, 1.0, 0.0])
        layer.weight.copy_(round_for_storage(layer.weight, precision))
    assert not (layer.weight.view(torch.int32) == torch.tensor(-0.0).view(torch.int32)).any()
    header = inspect_sqz(pack_sqz(model, layers))["tensors"]["classifier.3.weight"]
    assert header["nnz"] == int((layer.weight != 0).sum())


@pytest.mark.parametrize("grid", ["int7", "int6", "int5", "int4"])
def test_coarser_grids_are_q8_codes_smaller_than_int8_and_restored_bit_exact(tmp_path, grid):
    """lwct's grid search leaves float layers on coarser grids (largest code 63 … 7): the same q8 layout stores them,
    in fewer bytes than int8's grid, and they load back bit for bit."""
    model, layers = _compressed_lenet(tmp_path)
    layer = model.module.get_submodule("classifier.3")
    sizes = {}
    for precision in ("int8", grid):
        with torch.no_grad():
            layer.weight.copy_(round_for_storage(layer.weight, precision))
        entry = inspect_sqz(pack_sqz(model, layers))["tensors"]["classifier.3.weight"]
        assert entry["values"] == "q8"
        sizes[precision] = entry["sizes"][-1]
    assert len(torch.unique(layer.weight.abs())) <= GRID_LEVELS[grid] + 1
    assert sizes[grid] < sizes["int8"]
    path = tmp_path / "model.sqz"
    write_sqz(path, model, layers)
    assert torch.equal(load_sqz(path).module.get_submodule("classifier.3").weight, layer.weight)


def test_packed_file_is_much_smaller_than_float32(tmp_path):
    model, layers = _compressed_lenet(tmp_path)
    float_bytes = 4 * sum(p.numel() for p in model.module.parameters())
    assert len(pack_sqz(model, layers)) * 4 < float_bytes


def test_ternary_layer_with_other_values_is_refused(tmp_path):
    model, layers = _compressed_lenet(tmp_path)
    ternary = next(layer for layer in layers if layer.representation == "ternary")
    ternary.sigma *= 1.5
    with pytest.raises(ValueError):
        pack_sqz(model, layers)


@pytest.mark.parametrize("data", [b"PK\x03\x04not an sqz", b"SQZ1\x02garbage", b"SQZ1"])
def test_corrupt_files_give_a_clear_error(tmp_path, data):
    path = tmp_path / "bad.sqz"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError):
        load_sqz(path)


def test_buffers_of_every_stored_dtype_round_trip():
    """Buffers besides float32 weights (counters, int8/bfloat16 constants of converted graphs) are stored raw."""
    module = nn.Linear(3, 2)
    values = torch.tensor([[1.5, -2.0], [0.0, 3.0]])
    for dtype in (torch.float16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8, torch.bfloat16):
        module.register_buffer(f"as_{str(dtype).removeprefix('torch.')}", values.to(dtype))
    module.register_buffer("flags", values > 0)
    module.register_buffer("count", torch.tensor(7, dtype=torch.uint8))  # 0-d
    model = LoadedModel.built(module, {"name": "linear", "args": {}}, (3,), 2)
    restored = _unpack(pack_sqz(model, []))[1]
    for key, tensor in module.state_dict().items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key


def test_a_file_of_the_first_layout_loads_bit_exact(tmp_path):
    """data/lenet8_sqz1.sqz was packed by the build before the binary header (3586bf0) from this file's
    `_compressed_lenet(half=True)`: it still loads, to the same weights and the same header as a fresh pack."""
    old = (Path(__file__).parent / "data" / "lenet8_sqz1.sqz").read_bytes()
    assert old.startswith(JSON_HEADER_MAGIC)
    model, layers = _compressed_lenet(tmp_path, half=True)
    new = pack_sqz(model, layers)
    assert new.startswith(MAGIC) and len(new) < len(old)
    assert inspect_sqz(old) == inspect_sqz(new)
    path = tmp_path / "old.sqz"
    path.write_bytes(old)
    restored = load_sqz(path).module.state_dict()
    for key, tensor in model.module.state_dict().items():
        assert torch.equal(restored[key].view(torch.uint8), tensor.view(torch.uint8)), key


def test_header_carries_architecture_and_no_pickle(tmp_path):
    model, layers = _compressed_lenet(tmp_path)
    header = inspect_sqz(pack_sqz(model, layers))
    assert header["architecture"]["args"] == ARCH["args"] and header["architecture"]["input_shape"] == [1, 8, 8]
    json.dumps(header)


def test_the_rice_parameter_is_the_cheapest_of_all_24():
    rng = np.random.default_rng(0)
    for trial in range(600):
        mean = float(rng.choice([0.3, 2, 9, 60, 700, 5e4, 3e6]))
        size = int(rng.integers(1, 300))
        gaps = rng.geometric(1 / (1 + mean), size) - 1 if trial % 2 else rng.integers(0, int(mean) + 1, size)
        costs = [int((gaps >> k).sum()) + size * (k + 1) for k in range(24)]
        assert _rice_parameter(gaps) == costs.index(min(costs))
