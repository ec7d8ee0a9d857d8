"""Every name in an uploaded ONNX model is replaced by a generated identifier before anything converts it.

onnx2torch turns node names into module names of a torch.fx GraphModule, and torch.fx writes `forward` as Python
source with those names pasted between quotes (`getattr(self, "<name>")`) and executes it: a node named `x")...` runs
as code. So no name from an upload reaches the converter. Nodes become `n0, n1, …`; values (edges, initializers,
value_info, sparse initializers) `t0, t1, …`, the main graph's inputs and outputs `input`/`output` (`input0`, … when
there are several); graphs `main` and `g0, …`; local functions `f0, …` (their callers' op_type with them). Subgraphs of
If/Loop/Scan attributes are renamed at any depth with the same value mapping, so outer-scope references still
resolve. The numbering follows positions only, never the names, so renaming is deterministic and a renamed model is
renamed to itself: the state-dict keys of a converted model (`n3.weight`) match when the stored graph is reloaded.

The original names survive only as data (`Renamed.originals`, length-capped), for the report and error messages,
which quote them with `core.intake.names.shown`.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from squeezer.core.intake.names import SHOWN_CHARS


@dataclass
class Renamed:
    """What `rename_onnx` did: every generated name → the original name cut to SHOWN_CHARS. Data for the report and
    messages, quoted with `shown` wherever it is printed."""

    originals: dict[str, str] = field(default_factory=dict)

    def changed(self) -> dict[str, str]:
        """Only the names that differ from their original."""
        return {new: old for new, old in self.originals.items() if new != old}


def _graph_attributes(node) -> Iterator[Any]:
    """The GraphProtos held by a node's attributes (If branches, Loop and Scan bodies)."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _attribute_tensors(node) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in (*sparse_tensors, *attribute.sparse_tensors):
            yield sparse.values
            yield sparse.indices


class _Renamer:
    """Hands out generated names in order of first sight: a value keeps one name wherever it is referenced."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.value_count = self.node_count = self.graph_count = 0
        self.originals: dict[str, str] = {}

    def note(self, generated: str, original: str) -> str:
        self.originals.setdefault(generated, original[:SHOWN_CHARS])
        return generated

    def value(self, original: str) -> str:
        if original == "":  # an absent optional input
            return ""
        if original not in self.values:
            self.values[original] = f"t{self.value_count}"
            self.value_count += 1
        return self.note(self.values[original], original)

    def main_io(self, infos: list, stem: str) -> None:
        """The main graph's inputs and outputs keep readable names: `input`, or `input0`, `input1`, …"""
        for index, info in enumerate(infos):
            if info.name and info.name not in self.values:
                self.values[info.name] = stem if len(infos) == 1 else f"{stem}{index}"

    def graph(self, graph, name: str) -> None:
        graph.name = name
        for tensor in graph.initializer:
            tensor.name = self.value(tensor.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = self.value(sparse.values.name)
            sparse.indices.name = self.value(sparse.indices.name)
        for info in (*graph.input, *graph.output, *graph.value_info):
            info.name = self.value(info.name)
        for annotation in graph.quantization_annotation:
            annotation.tensor_name = self.value(annotation.tensor_name)
        self.nodes(graph.node)

    def nodes(self, nodes) -> None:
        for node in nodes:
            node.name = self.note(f"n{self.node_count}", node.name)
            self.node_count += 1
            node.input[:] = [self.value(v) for v in node.input]
            node.output[:] = [self.value(v) for v in node.output]
            for tensor in _attribute_tensors(node):
                tensor.name = ""  # an attribute's tensor is a constant, not a value of the graph: its name is unused
            for subgraph in _graph_attributes(node):
                self.graph(subgraph, f"g{self.graph_count}")
                self.graph_count += 1

    def functions(self, model) -> None:
        """Local functions become f0, f1, … and their callers' op_type with them; bodies share the value names."""
        callees: dict[tuple[str, str], str] = {}
        for index, function in enumerate(model.functions):
            callees[(function.domain, function.name)] = self.note(f"f{index}", function.name)
            function.name = f"f{index}"
            function.input[:] = [self.value(v) for v in function.input]
            function.output[:] = [self.value(v) for v in function.output]
            for info in function.value_info:
                info.name = self.value(info.name)
            self.nodes(function.node)
        for node in _all_nodes(model):
            node.op_type = callees.get((node.domain, node.op_type), node.op_type)


def _all_nodes(model) -> Iterator[Any]:
    def walk(nodes) -> Iterator[Any]:
        for node in nodes:
            yield node
            for subgraph in _graph_attributes(node):
                yield from walk(subgraph.node)

    yield from walk(model.graph.node)
    for function in model.functions:
        yield from walk(function.node)


def rename_onnx(model) -> Renamed:
    """Renames every name of `model` (an onnx.ModelProto) in place; see the module docstring. Training graphs are
    dropped: inference never reads them."""
    renamer = _Renamer()
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    renamer.main_io([i for i in graph.input if i.name not in initializers], "input")
    renamer.main_io(list(graph.output), "output")
    renamer.graph(graph, "main")
    renamer.functions(model)
    del model.training_info[:]
    return Renamed(renamer.originals)


def compose(first: Renamed, second: Renamed) -> Renamed:
    """The originals of a model renamed, rewritten (which may add names of its own) and renamed again."""
    return Renamed({new: first.originals.get(middle, middle) for new, middle in second.originals.items()})


def _converter_name(node, name: str) -> str:
    """onnx2torch's module name for a node called `name` (OnnxGraph.generate_node_name)."""
    return (f"{node.domain}/" + (name.replace(".", "/") or node.op_type)).lstrip("/")


def legacy_module_names(uploaded, renamed) -> dict[str, str]:
    """Module name onnx2torch gave each main-graph node of `uploaded` (names as they came) → the one it gives the
    same node of `renamed`, matched by position: results written before renaming keyed their weights by the first.
    The uploaded names are only dictionary keys here."""
    counts: dict[str, int] = {}
    names = {}
    for before, after in zip(uploaded.graph.node, renamed.graph.node, strict=True):
        name = _converter_name(before, before.name)
        counts[name] = counts.get(name, 0) + 1
        names[name + (f"_{counts[name] - 1}" if counts[name] > 1 else "")] = _converter_name(after, after.name)
    return names
