"""No string from an upload becomes code: ONNX names reach torch.fx's generated `forward` only as generated
identifiers, and names in result files (.sqz headers, model directories) are looked up or refused, never run.

Every payload tries to create a canary file; the first test shows that the payload runs when a graph reaches
onnx2torch with its names, so the others would see the canary if a name slipped through."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file
from torch import nn

from squeezer.core.artifacts.sqz import encode_state, load_sqz, pack_encoded, pack_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.errors import ModelFormatError, UnsupportedLayerError
from squeezer.core.intake.models import load_model, save_model_dir
from squeezer.core.intake.names import SHOWN_CHARS
from squeezer.core.intake.onnx_names import rename_onnx
from squeezer.core.pipeline import ModelSource, compress_files, evaluate_file
from tests.helpers import own_options

# Templates: {c} is the canary path (a folder without dots, so torch.fx's "." → "/" does not defuse them).
PAYLOADS = {
    "quote_concat": 'a"+str(open("{c}","w"))[:0]+"',
    "single_quote_concat": "a'+str(open('{c}','w'))[:0]+'",
    "close_call": '")(input_1)\nopen("{c}", "w")\n#',
    "import_os": "'); import os; os.system('touch {c}')#",
    "dunder_import": "__import__('os').system('touch {c}')",
    "backslash": '\\"); open("{c}", "w")#\\',
    "nul": 'a\x00"+str(open("{c}","w"))[:0]+"',
    "newline": 'a\nopen("{c}", "w")\n',
    "parentheses": "f(open('{c}', 'w'))",
    "cyrillic_lookalike": "conv_\u0430",
    "fullwidth": "\uff43\uff4f\uff4e\uff56",
    "dunder_class": "__class__",
    "dunder_init": "__init__",
    "forward": "forward",
    "training": "training",
    "modules": "_modules",
    "weight": "weight",
    "state_dict": "state_dict",
    "empty": "",
    "one_mebibyte": "A" * 2**20 + '"+str(open("{c}","w"))[:0]+"',
}
PLACES = ("nodes", "edges", "initializers", "io", "value_info")
DATA = "sample:digits"  # 1×8×8 images, 10 classes


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("canary") / "canary"
    assert "." not in str(path)
    return path


@pytest.fixture(autouse=True)
def never_runs(canary):
    """Every test ends with no canary: a payload that ran fails the test that ran it."""
    yield
    assert not canary.exists(), "a payload from a name ran"


def payload(name: str, canary: Path) -> str:
    return PAYLOADS[name].replace("{c}", str(canary))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


@pytest.fixture(scope="module")
def plain_onnx() -> bytes:
    return tiny_onnx()


def tiny_onnx() -> bytes:
    """TinyNet as torch's exporter writes it (with its names: `/conv1/Conv`, `onnx::Conv_…`)."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(
        TinyNet().eval(),
        torch.zeros(1, 1, 8, 8),
        buffer,
        dynamo=False,
        opset_version=13,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    return onnx.shape_inference.infer_shapes(onnx.load_model_from_string(buffer.getvalue())).SerializeToString()


def hostile(plain: bytes, text: str, places=PLACES) -> onnx.ModelProto:
    """`plain` with `text` as every node's name (duplicates included) and, suffixed to stay unique, as the name of
    every value in `places`."""
    model = onnx.load_model_from_string(plain)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    io_names = {v.name for v in (*graph.input, *graph.output)}
    values = {name for node in graph.node for name in (*node.input, *node.output) if name}
    chosen = {
        "initializers": initializers,
        "io": io_names,
        "edges": values - initializers - io_names,
        "value_info": {v.name for v in graph.value_info},
    }
    targets = sorted(set().union(*(chosen.get(place, set()) for place in places)))
    new = {name: f"{text}#{index}" for index, name in enumerate(targets)}
    for node in graph.node:
        if "nodes" in places:
            node.name = text
        node.input[:] = [new.get(v, v) for v in node.input]
        node.output[:] = [new.get(v, v) for v in node.output]
    for item in (*graph.initializer, *graph.input, *graph.output, *graph.value_info):
        item.name = new.get(item.name, item.name)
    return model


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def outputs(module: nn.Module) -> torch.Tensor:
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return module.eval()(x)


def test_the_payloads_run_when_a_graph_reaches_the_converter_with_its_names(plain_onnx, canary):
    """The reason for all of this: onnx2torch pastes node names into the source torch.fx executes."""
    from onnx2torch import convert

    module = convert(hostile(plain_onnx, payload("quote_concat", canary), ("nodes",)))
    with pytest.raises(AttributeError):
        module(torch.zeros(1, 1, 8, 8))
    assert canary.exists()
    canary.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("name", PAYLOADS)
def test_an_uploaded_graph_with_hostile_names_loads_as_the_plain_one(name, plain_onnx, canary, tmp_path):
    plain = load_model(write(onnx.load_model_from_string(plain_onnx), tmp_path / "plain.onnx"))
    text = payload(name, canary)
    loaded = load_model(write(hostile(plain_onnx, text), tmp_path / "hostile.onnx"))
    assert loaded.onnx_graph == plain.onnx_graph  # the same generated names: the same graph, byte for byte
    assert list(loaded.module.state_dict()) == list(plain.module.state_dict())
    torch.testing.assert_close(outputs(loaded.module), outputs(plain.module), rtol=0, atol=0)
    assert all(len(original) <= SHOWN_CHARS for original in loaded.onnx_names.values())
    if text:
        assert text[:SHOWN_CHARS] in loaded.onnx_names.values()
    reloaded = load_model(save_model_dir(loaded, tmp_path / "model"))
    torch.testing.assert_close(outputs(reloaded.module), outputs(plain.module), rtol=0, atol=0)


@pytest.mark.parametrize("place", PLACES)
def test_each_place_a_name_can_sit_is_renamed(place, plain_onnx, canary, tmp_path):
    model = hostile(plain_onnx, payload("quote_concat", canary), (place,))
    loaded = load_model(write(model, tmp_path / "hostile.onnx"))
    assert str(canary).encode() not in loaded.onnx_graph
    outputs(loaded.module)


def test_duplicate_value_names_are_refused(plain_onnx, canary, tmp_path):
    model = onnx.load_model_from_string(plain_onnx)
    first, second = model.graph.node[0], model.graph.node[1]
    second.output[0] = first.output[0]  # two producers of one value: not a graph
    with pytest.raises(ModelFormatError):
        load_model(write(model, tmp_path / "twice.onnx"))


def _nested_model(text: str) -> onnx.ModelProto:
    """Hostile names in an If's branches (one nested a level deeper), a local function, a sparse initializer,
    value_info and a Constant's tensor."""

    def branch(name: str, inner=None) -> onnx.GraphProto:
        nodes = [helper.make_node("Identity", [f"{text}x"], [f"{text}{name}out"], name=f"{text}{name}")]
        if inner is not None:
            nodes = [
                helper.make_node(
                    "If", [f"{text}cond"], [f"{text}{name}out"], name=text, then_branch=inner, else_branch=inner
                )
            ]
        out = helper.make_tensor_value_info(f"{text}{name}out", TensorProto.FLOAT, [2])
        return helper.make_graph(nodes, f"{text}{name}graph", [], [out])

    deep = branch("deep")
    nodes = [
        helper.make_node(
            "Constant",
            [],
            [f"{text}cond"],
            name=text,
            value=helper.make_tensor(f"{text}const", TensorProto.BOOL, [], [True]),
        ),
        helper.make_node(
            "If", [f"{text}cond"], [f"{text}y"], name=text, then_branch=branch("then", deep), else_branch=branch("else")
        ),
        helper.make_node(f"{text}fn", [f"{text}y"], [f"{text}z"], name=text, domain="local"),
    ]
    function = helper.make_function(
        "local",
        f"{text}fn",
        [f"{text}a"],
        [f"{text}b"],
        [helper.make_node("Neg", [f"{text}a"], [f"{text}b"], name=text)],
        [helper.make_opsetid("", 17)],
    )
    sparse = helper.make_sparse_tensor(
        helper.make_tensor(f"{text}sv", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor(f"{text}si", TensorProto.INT64, [1], [0]),
        [2],
    )
    graph = helper.make_graph(
        nodes,
        f"{text}main",
        [helper.make_tensor_value_info(f"{text}x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(f"{text}z", TensorProto.FLOAT, [2])],
        value_info=[helper.make_tensor_value_info(f"{text}y", TensorProto.FLOAT, [2])],
        sparse_initializer=[sparse],
    )
    return helper.make_model(
        graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    )


def test_names_are_replaced_everywhere_deterministically_and_renaming_a_renamed_graph_changes_nothing(canary):
    text = "MARK" + payload("quote_concat", canary)
    model = _nested_model(text)
    onnx.checker.check_model(model)
    again = onnx.ModelProto()
    again.CopyFrom(model)
    renamed = rename_onnx(model)
    rename_onnx(again)
    data = model.SerializeToString()
    assert b"MARK" not in data and data == again.SerializeToString()
    onnx.checker.check_model(model)
    assert rename_onnx(model).changed() == {} and model.SerializeToString() == data
    assert any(original.startswith("MARK") for original in renamed.changed().values())
    assert model.functions[0].name == model.graph.node[2].op_type == "f0"


def test_a_refusal_quotes_a_huge_operator_name_capped_and_escaped(plain_onnx, canary, tmp_path):
    model = onnx.load_model_from_string(plain_onnx)
    model.graph.node[1].op_type = payload("one_mebibyte", canary) + "\n"
    model.graph.node[1].domain = "custom"
    model.opset_import.append(helper.make_opsetid("custom", 1))
    with pytest.raises((UnsupportedLayerError, ModelFormatError)) as refusal:
        load_model(write(model, tmp_path / "custom.onnx"))
    assert len(refusal.value.message) < 2000 and "\n" not in refusal.value.message


# -- result files a user edited by hand ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model_dir(plain_onnx, tmp_path_factory):
    directory = tmp_path_factory.mktemp("result")
    loaded = load_model(write(onnx.load_model_from_string(plain_onnx), directory / "plain.onnx"))
    return save_model_dir(loaded, directory / "model"), loaded


def _edited(source: Path, target: Path, **meta_changes) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    meta = json.loads((source / "architecture.json").read_text())
    (target / "architecture.json").write_text(json.dumps({**meta, **meta_changes}))
    return target


@pytest.mark.parametrize("name", ["quote_concat", "dunder_import", "forward", "one_mebibyte", "empty"])
def test_hostile_names_in_a_model_directory_are_refused(name, onnx_model_dir, canary, tmp_path):
    source, _ = onnx_model_dir
    text = payload(name, canary)
    cases = {
        "name": {"name": text},
        "torchvision": {"name": f"torchvision:{text}"},
        "arg": {"name": "lenet5", "args": {text: 1}},
        "channels": {"args": {"channels": {text: 1}}},
    }
    for case, changes in cases.items():
        with pytest.raises(ModelFormatError) as refusal:
            load_model(_edited(source, tmp_path / case, **changes))
        assert refusal.value.code == "invalid_model" and len(refusal.value.message) < 3000, case
    state = load_file(str(source / "model.safetensors"))
    key = next(iter(state))
    state[text] = state.pop(key)
    bad_keys = _edited(source, tmp_path / "keys")
    save_file(state, str(bad_keys / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="does not fit the architecture"):
        load_model(bad_keys)


def test_a_graph_onnx_with_hostile_names_injected_into_a_result_is_renamed(
    onnx_model_dir, plain_onnx, canary, tmp_path
):
    source, loaded = onnx_model_dir
    edited = _edited(source, tmp_path / "edited")
    (edited / "graph.onnx").write_bytes(hostile(plain_onnx, payload("quote_concat", canary)).SerializeToString())
    reloaded = load_model(edited)
    torch.testing.assert_close(outputs(reloaded.module), outputs(loaded.module), rtol=0, atol=0)


def test_hostile_names_in_a_sqz_header_are_refused_or_renamed(onnx_model_dir, plain_onnx, canary, tmp_path):
    _, loaded = onnx_model_dir
    text = payload("quote_concat", canary)
    for architecture in ({"name": text, "args": {}}, {"name": "onnx", "args": {"channels": {text: 2}}}):
        path = tmp_path / "bad.sqz"
        path.write_bytes(pack_sqz(dataclasses.replace(loaded, architecture=architecture), []))
        with pytest.raises(ModelFormatError):
            load_sqz(path)
    encoded = encode_state(loaded.module.state_dict(), {})
    encoded[text] = encoded.pop(next(iter(encoded)))
    path.write_bytes(pack_encoded(loaded, encoded))
    with pytest.raises(ModelFormatError, match="does not fit the architecture"):
        load_sqz(path)
    injected = dataclasses.replace(loaded, onnx_graph=hostile(plain_onnx, text).SerializeToString())
    path.write_bytes(pack_sqz(injected, []))
    torch.testing.assert_close(outputs(load_sqz(path).module), outputs(loaded.module), rtol=0, atol=0)


# -- the whole run --------------------------------------------------------------------------------------------------


def _mixed(plain: bytes, canary: Path) -> onnx.ModelProto:
    """A different payload in each place."""
    model = plain
    for place, name in zip(PLACES, ("quote_concat", "import_os", "dunder_class", "forward", "backslash"), strict=True):
        model = hostile(model, payload(name, canary), (place,)).SerializeToString()
    return onnx.load_model_from_string(model)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lwct", "filter"])
def test_a_hostile_model_compresses_exports_and_evaluates_as_the_plain_one(method, plain_onnx, canary, tmp_path):
    config = CompressConfig(
        method=method,
        device="cpu",
        target=AccuracyTarget(max_drop=100),
        **own_options(
            method,
            lwct=LwctConfig(sparsity=0.5, prune_epochs=0, epochs_per_step=0),
            filter=FilterConfig(init=["l1"], importance_epochs=1, epochs_per_step=0, levels=[0.3], refinements=0),
        ),
    )
    results, names = {}, {}
    for kind, model in (("plain", onnx.load_model_from_string(plain_onnx)), ("hostile", _mixed(plain_onnx, canary))):
        out = tmp_path / kind
        report = compress_files(ModelSource(write(model, tmp_path / f"{kind}.onnx")), DATA, out, config)
        packed = load_sqz(out / "model.sqz")
        names[kind] = report["onnx_layer_names"]
        results[kind] = (
            report["compressed"],
            outputs(packed.module),
            outputs(load_model(out / "model").module),
            (out / "model.onnx").read_bytes(),
            evaluate_file(out / "model.sqz", DATA),
        )
    plain, hostile_run = results["plain"], results["hostile"]
    for key in ("accuracy", "params", "nonzero_params", "macs", "size_bytes"):
        assert hostile_run[0][key] == plain[0][key], key
    for mine, theirs in zip(hostile_run[1:3], plain[1:3], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert str(canary).encode() not in hostile_run[3]
    import onnxruntime

    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    runs = [onnxruntime.InferenceSession(r[3]).run(None, {"input": x})[0] for r in (plain, hostile_run)]
    np.testing.assert_array_equal(*runs)
    assert hostile_run[4] == plain[4]
    assert names["plain"] and names["hostile"].keys() == names["plain"].keys()  # the report names layers as uploaded
    assert payload("quote_concat", canary)[:SHOWN_CHARS] in names["hostile"].values()


def test_a_result_written_before_names_were_replaced_still_loads(plain_onnx, tmp_path):
    """Its graph.onnx holds the uploaded names and its weights are keyed by onnx2torch's module names for them."""
    from onnx2torch import convert

    uploaded = onnx.load_model_from_string(plain_onnx)
    legacy = convert(uploaded).eval()
    assert "conv1/Conv.weight" in legacy.state_dict()  # the old keys
    directory = tmp_path / "old"
    directory.mkdir()
    meta = {"format": "squeezer-model", "version": 1, "name": "onnx", "args": {}, "input_shape": [1, 8, 8]}
    (directory / "architecture.json").write_text(json.dumps(meta))
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "graph.onnx").write_bytes(plain_onnx)
    torch.testing.assert_close(outputs(load_model(directory).module), outputs(legacy), rtol=0, atol=0)
