"""Refuses ONNX models whose tensors point at external data files.

A tensor with `data_location: EXTERNAL` names a file by path; onnx, onnx2torch and onnxruntime resolve it against the
working directory and read whatever is there into the model, and the compressed result would hand those bytes back.
An upload must be self-contained, so every tensor the format can carry is visited: graph initializers, sparse
initializers, tensor-valued node attributes (`Constant` values included), the subgraphs of control-flow nodes
(`If`/`Loop`/`Scan` bodies, at any depth), function bodies and training graphs.
"""

from collections.abc import Iterator
from typing import Any

from squeezer.core.errors import ModelFormatError
from squeezer.core.intake.names import quoted


class ExternalDataError(ModelFormatError):
    """An ONNX tensor is stored outside the file (data_location EXTERNAL)."""

    code = "onnx_external_data"


def _tensors_of_sparse(sparse, where: str) -> Iterator[tuple[object, str]]:
    yield sparse.values, f"{where} values"
    yield sparse.indices, f"{where} indices"


def _attribute_tensors(attribute, where: str) -> Iterator[tuple[object, str]]:
    """The tensors an attribute holds, subgraphs included (recursively)."""
    from onnx import AttributeProto

    here = f"{where} attribute '{attribute.name}'"
    kind = attribute.type
    if kind == AttributeProto.TENSOR or attribute.HasField("t"):
        yield attribute.t, here
    for i, tensor in enumerate(attribute.tensors):
        yield tensor, f"{here}[{i}]"
    if kind == AttributeProto.SPARSE_TENSOR or attribute.HasField("sparse_tensor"):
        yield from _tensors_of_sparse(attribute.sparse_tensor, here)
    for i, sparse in enumerate(attribute.sparse_tensors):
        yield from _tensors_of_sparse(sparse, f"{here}[{i}]")
    if kind == AttributeProto.GRAPH or attribute.HasField("g"):
        yield from _graph_tensors(attribute.g, f"{here} > graph '{attribute.g.name}'")
    for i, graph in enumerate(attribute.graphs):
        yield from _graph_tensors(graph, f"{here}[{i}] > graph '{graph.name}'")


def _node_tensors(nodes, where: str) -> Iterator[tuple[object, str]]:
    for index, node in enumerate(nodes):
        label = f"{where} node '{node.name or index}' ({node.op_type})"
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute, label)


def _graph_tensors(graph, where: str) -> Iterator[tuple[object, str]]:
    for tensor in graph.initializer:
        yield tensor, f"{where} initializer"
    for sparse in graph.sparse_initializer:
        yield from _tensors_of_sparse(sparse, f"{where} sparse initializer")
    yield from _node_tensors(graph.node, where)


def model_tensors(model) -> Iterator[tuple[Any, str]]:
    """Every TensorProto of a ModelProto with a human-readable place: main graph, functions, training graphs."""
    yield from _graph_tensors(model.graph, f"graph '{model.graph.name}'")
    for function in model.functions:
        yield from _node_tensors(function.node, f"function '{function.domain}.{function.name}'")
    for i, training in enumerate(model.training_info):
        yield from _graph_tensors(training.initialization, f"training_info[{i}] initialization")
        yield from _graph_tensors(training.algorithm, f"training_info[{i}] algorithm")


def refuse_external_data(model, filename: str) -> None:
    """Raises ExternalDataError naming the first tensor stored outside the file (its path is never echoed)."""
    from onnx import TensorProto

    for tensor, where in model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ExternalDataError(
                f"{filename}: tensor {quoted(tensor.name)} ({quoted(where)}) references external data; "
                "embed every tensor in the .onnx file"
            )
