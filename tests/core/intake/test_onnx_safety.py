"""Every place an ONNX model can hold a tensor, marked EXTERNAL and pointing at a real file beside the process: the
real loader refuses each with `onnx_external_data`, names the tensor, and never reads the file."""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from squeezer.core.intake.models import load_model
from squeezer.core.intake.onnx_safety import ExternalDataError

SECRET = b"SECRET-BYTES-OF-ANOTHER-TENANT"
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])


def external(name: str, location: str = "secret.bin"):
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def sparse(name: str):
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), f"{name}_idx")
    return helper.make_sparse_tensor(external(name), indices, [4])


def identity_graph(name: str, nodes=(), initializer=(), sparse_initializer=()):
    return helper.make_graph(
        [*nodes, helper.make_node("Identity", ["x"], ["y"])],
        name,
        [X],
        [Y],
        list(initializer),
        sparse_initializer=list(sparse_initializer),
    )


def node_with(attribute) -> object:
    node = helper.make_node("Identity", ["x"], ["unused"], name="carrier")
    node.attribute.append(attribute)
    return node


def tensor_attribute(name, **value):
    return helper.make_attribute(name, next(iter(value.values())))


def if_node(then_graph, else_graph=None, name="branch"):
    return helper.make_node(
        "If", ["cond"], ["unused"], name=name, then_branch=then_graph, else_branch=else_graph or identity_graph("e")
    )


def nested(graph, depth: int):
    for level in range(depth):
        graph = identity_graph(f"level{level}", nodes=[if_node(graph, name=f"if{level}")])
    return graph


def model_with(graph, functions=(), training=None):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], functions=list(functions))
    if training is not None:
        model.training_info.append(training)
    return model


def function_with(node):
    return helper.make_function("custom", "f", ["x"], ["y"], [node], [helper.make_opsetid("", 17)])


def training_with(graph):
    from onnx import TrainingInfoProto

    info = TrainingInfoProto()
    info.initialization.CopyFrom(graph)
    info.algorithm.CopyFrom(identity_graph("algorithm"))
    return info


PLACES = {
    "initializer": lambda: model_with(identity_graph("main", initializer=[external("w_init")])),
    "sparse_initializer": lambda: model_with(identity_graph("main", sparse_initializer=[sparse("w_sparse")])),
    "constant_value": lambda: model_with(
        identity_graph("main", nodes=[helper.make_node("Constant", [], ["c"], name="k", value=external("w_const"))])
    ),
    "constant_sparse_value": lambda: model_with(
        identity_graph(
            "main", nodes=[helper.make_node("Constant", [], ["c"], name="k", sparse_value=sparse("w_const_sparse"))]
        )
    ),
    "attribute_t": lambda: model_with(
        identity_graph("main", nodes=[node_with(tensor_attribute("t", t=external("w_t")))])
    ),
    "attribute_tensors": lambda: model_with(
        identity_graph("main", nodes=[node_with(helper.make_attribute("ts", [external("ok0"), external("w_ts")]))])
    ),
    "attribute_sparse_tensor": lambda: model_with(
        identity_graph("main", nodes=[node_with(helper.make_attribute("st", sparse("w_st")))])
    ),
    "attribute_sparse_tensors": lambda: model_with(
        identity_graph("main", nodes=[node_with(helper.make_attribute("sts", [sparse("w_sts")]))])
    ),
    "if_then_initializer": lambda: model_with(
        identity_graph("main", nodes=[if_node(identity_graph("then", initializer=[external("w_then")]))])
    ),
    "if_else_constant": lambda: model_with(
        identity_graph(
            "main",
            nodes=[
                if_node(
                    identity_graph("then"),
                    identity_graph("else", nodes=[helper.make_node("Constant", [], ["c"], value=external("w_else"))]),
                )
            ],
        )
    ),
    "loop_body": lambda: model_with(
        identity_graph(
            "main",
            nodes=[
                helper.make_node(
                    "Loop", ["n", "cond"], ["unused"], body=identity_graph("body", initializer=[external("w_loop")])
                )
            ],
        )
    ),
    "scan_body_sparse": lambda: model_with(
        identity_graph(
            "main",
            nodes=[
                helper.make_node(
                    "Scan",
                    ["x"],
                    ["unused"],
                    num_scan_inputs=1,
                    body=identity_graph("body", sparse_initializer=[sparse("w_scan")]),
                )
            ],
        )
    ),
    "graphs_attribute": lambda: model_with(
        identity_graph(
            "main",
            nodes=[node_with(helper.make_attribute("gs", [identity_graph("g0", initializer=[external("w_gs")])]))],
        )
    ),
    "subgraph_depth_6": lambda: model_with(nested(identity_graph("deep", initializer=[external("w_deep")]), 6)),
    "function_body_constant": lambda: model_with(
        identity_graph("main"),
        functions=[function_with(helper.make_node("Constant", [], ["y"], value=external("w_func")))],
    ),
    "function_body_subgraph": lambda: model_with(
        identity_graph("main"),
        functions=[function_with(if_node(identity_graph("then", initializer=[external("w_func_if")])))],
    ),
    "training_initialization": lambda: model_with(
        identity_graph("main"), training=training_with(identity_graph("init", initializer=[external("w_train")]))
    ),
    "external_data_entries_without_flag": lambda: model_with(
        identity_graph("main", initializer=[_entries_only("w_entries")])
    ),
}


def _entries_only(name: str):
    """DEFAULT data_location but external_data entries: no reader should be trusted to ignore them."""
    tensor = external(name)
    tensor.data_location = TensorProto.DEFAULT
    return tensor


EXPECTED_NAME = {
    "initializer": "w_init",
    "sparse_initializer": "w_sparse",
    "constant_value": "w_const",
    "constant_sparse_value": "w_const_sparse",
    "attribute_t": "w_t",
    "attribute_tensors": "ok0",
    "attribute_sparse_tensor": "w_st",
    "attribute_sparse_tensors": "w_sts",
    "if_then_initializer": "w_then",
    "if_else_constant": "w_else",
    "loop_body": "w_loop",
    "scan_body_sparse": "w_scan",
    "graphs_attribute": "w_gs",
    "subgraph_depth_6": "w_deep",
    "function_body_constant": "w_func",
    "function_body_subgraph": "w_func_if",
    "training_initialization": "w_train",
    "external_data_entries_without_flag": "w_entries",
}


@pytest.fixture
def beside_secret(tmp_path, monkeypatch):
    """The process's working directory holds the file the tensors name, as a server's data dir would."""
    (tmp_path / "secret.bin").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("place", sorted(PLACES))
def test_external_tensor_is_refused_wherever_it_sits(place, beside_secret):
    path = beside_secret / "upload.onnx"
    path.write_bytes(PLACES[place]().SerializeToString())
    before = os.stat(beside_secret / "secret.bin").st_atime_ns
    with pytest.raises(ExternalDataError) as caught:
        load_model(path)
    assert caught.value.code == "onnx_external_data"
    assert f"'{EXPECTED_NAME[place]}'" in caught.value.message
    assert "secret.bin" not in caught.value.message and str(beside_secret) not in caught.value.message
    assert SECRET.decode() not in caught.value.message
    assert os.stat(beside_secret / "secret.bin").st_atime_ns == before


def test_an_embedded_model_of_the_same_shape_passes_the_check():
    from squeezer.core.intake.onnx_safety import refuse_external_data

    embedded = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    refuse_external_data(model_with(nested(identity_graph("deep", initializer=[embedded]), 3)), "fine.onnx")
