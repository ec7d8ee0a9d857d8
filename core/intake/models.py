"""Model intake: every accepted format becomes a LoadedModel (a trainable torch module plus what the engine needs to
know about it); everything that would need unpickling is refused.

Accepted: a Squeezer model directory (architecture.json + model.safetensors, graph.onnx for converted ONNX models)
or a .zip of one; .safetensors or a plain .pt/.pth state_dict plus an architecture name (read with
`weights_only=True`); .onnx of any CNN, converted with onnx2torch and checked against onnxruntime.
"""

import copy
import dataclasses
import json
import math
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from squeezer.core.config import Normalization
from squeezer.core.errors import (
    ModelFormatError,
    UnsafeFormatError,
    UnsupportedLayerError,
    short_description,
    unforeseen_as,
)
from squeezer.core.intake.archives import safe_extract
from squeezer.core.intake.names import shown, shown_list
from squeezer.core.intake.onnx_names import Renamed, compose, legacy_module_names, rename_onnx
from squeezer.core.intake.onnx_normalize import (
    Normalised,
    agrees_at,
    declare_unknown_ranks,
    declared_sizes,
    normalize_onnx,
    unconvertible_nodes,
)
from squeezer.core.intake.onnx_safety import refuse_external_data
from squeezer.core.intake.registry import build_architecture, default_input_shape
from squeezer.core.intake.torch_zip import check_torch_zip

SAFE_FORMATS = (
    "a Squeezer model directory or .zip (architecture.json + model.safetensors), "
    ".safetensors or a .pt/.pth state_dict with --arch, or .onnx"
)
MODEL_FORMAT = "squeezer-model"
ONNX_ARCHITECTURE = "onnx"
SOURCE_FORMATS = ("squeezer", "safetensors", "state_dict", "onnx")  # LoadedModel.source_format
# Converted ONNX graphs are stored with large float weights zeroed (the weights live in model.safetensors).
_ZEROED_MIN_ELEMENTS = 16
_PARITY_TOLERANCE = 1e-3


@dataclasses.dataclass
class LoadedModel:
    module: nn.Module
    architecture: dict  # {"name": ..., "args": {...}}
    source_format: str  # one of SOURCE_FORMATS
    input_shape: tuple[int, ...] | None  # (C, H, W) without the batch axis; None when only the data can tell
    num_classes: int | None
    preprocessing: Normalization | None
    onnx_graph: bytes | None  # the converted ONNX graph (weights zeroed) for models that came as ONNX
    # An uploaded ONNX graph with free spatial axes, normalised: checked against onnxruntime once the data gives
    # their size (`check_pending_parity`); None once checked, and for every other model.
    pending_parity: Normalised | None = None
    # Generated ONNX name → the uploaded one (cut to 200 characters): data for the report, never a module name.
    onnx_names: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def built(
        cls, module: nn.Module, architecture: dict, input_shape: tuple[int, ...], num_classes: int
    ) -> "LoadedModel":
        """A model this process built from the registry (samples, benchmarks, tests): nothing was uploaded, so no
        preprocessing and no ONNX graph."""
        return cls(module, architecture, "squeezer", tuple(input_shape), num_classes, None, None)

    def with_module(self, module: nn.Module) -> "LoadedModel":
        """The same model description around other weights (a compressed or shrunk module)."""
        return dataclasses.replace(self, module=module)


def load_model(path: Path | str, *, architecture: str | None = None, arch_args: dict | None = None) -> LoadedModel:
    """The model at `path`. Every failure is an InputError; one no check foresaw (a library's own exception on a
    malformed file) is invalid_model naming the exception."""
    with unforeseen_as(ModelFormatError, f"the model {Path(path).name}"):
        return _load_model(Path(path), architecture, arch_args)


def _load_model(path: Path, architecture: str | None, arch_args: dict | None) -> LoadedModel:
    if not path.exists():
        raise ModelFormatError(f"model file {path.name} does not exist")
    if path.is_dir():
        return _load_model_dir(path)
    suffix = path.suffix.lower()
    with path.open("rb") as file:
        head = file.read(8)
    if suffix == ".pt2":
        raise UnsafeFormatError(f"{path.name}: torch.export .pt2 programs need unpickling; use {SAFE_FORMATS}")
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix == ".safetensors":
        return _from_state(_read_safetensors(path), "safetensors", architecture, arch_args, path.name)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _from_state(_read_state_dict(path), "state_dict", architecture, arch_args, path.name)
    if suffix in (".pkl", ".pickle") or head[:1] == b"\x80":
        raise UnsafeFormatError(f"{path.name} is a Python pickle; use {SAFE_FORMATS}")
    if suffix == ".zip" or head.startswith(b"PK"):
        return _load_zip(path)
    raise ModelFormatError(f"{path.name}: unknown model format; accepted are {SAFE_FORMATS}")


def _load_zip(path: Path) -> LoadedModel:
    if _torch_archive_kind(path) is not None:
        raise UnsafeFormatError(f"{path.name} is a torch archive (TorchScript or a pickled model); use {SAFE_FORMATS}")
    with tempfile.TemporaryDirectory(prefix="squeezer-model-") as tmp:
        root = safe_extract(path, Path(tmp))
        candidates = [p.parent for p in root.rglob("architecture.json") if len(p.relative_to(root).parts) <= 2]
        if len(candidates) != 1:
            raise ModelFormatError(
                f"{path.name} must hold exactly one model directory with architecture.json and model.safetensors"
            )
        return _load_model_dir(candidates[0])


def _torch_archive_kind(path: Path) -> str | None:
    """ "torchscript", "torch.save" (a pickle, perhaps of weights only) or None for any other file."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") and "/" in name for name in names):
        return "torch.save"
    return None


def _load_model_dir(directory: Path) -> LoadedModel:
    meta_path, weights_path = directory / "architecture.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise ModelFormatError("a model directory needs architecture.json and model.safetensors")
    try:
        meta = json.loads(meta_path.read_text())
        name, args = meta["name"], meta.get("args") or {}
        if not isinstance(args, dict):
            raise TypeError("args must be an object")
        preprocessing = Normalization(**meta["preprocessing"]) if meta.get("preprocessing") else None
        input_shape = tuple(int(d) for d in meta["input_shape"]) if meta.get("input_shape") else None
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFormatError(f"architecture.json is invalid: {error}") from None
    state = _read_safetensors(weights_path)
    if name == ONNX_ARCHITECTURE:
        graph_path = directory / "graph.onnx"
        if not graph_path.is_file():
            raise ModelFormatError("a converted ONNX model directory needs graph.onnx")
        graph = graph_path.read_bytes()
        parsed = _parse_onnx(graph, "graph.onnx")[0]
        module = _convert_onnx(parsed)
        state, args = _from_legacy_names(graph, parsed, module, state, args)
        if "channels" in args:  # a shrunk model: the graph holds the original widths
            from squeezer.core.graph.surgery import apply_channel_overrides

            apply_channel_overrides(module, args["channels"], input_shape)
        _load_state(module, state, "model.safetensors")
        model = LoadedModel(
            module.eval(), {"name": name, "args": args}, "squeezer", input_shape, None, preprocessing, graph
        )
        return _with_num_classes(model)
    model = _from_state(state, "squeezer", name, args, "model.safetensors", input_shape)
    model.preprocessing = preprocessing
    return model


def _from_legacy_names(graph: bytes, parsed, module: nn.Module, state: dict, args: dict) -> tuple[dict, dict]:
    """The weights and channel overrides of a converted ONNX model written before its names were replaced (keyed by
    onnx2torch's module names from the uploaded node names), keyed by the generated names; others pass unchanged."""
    import onnx

    modules = {name for name, _ in module.named_modules()}
    if all(key.partition(".")[0] in modules for key in state):
        return state, args
    try:
        legacy = legacy_module_names(onnx.load_model_from_string(graph), parsed)
    except ValueError:  # not the same nodes: the state check names what does not fit
        return state, args

    def renamed(key: str) -> str:
        prefix, dot, rest = key.partition(".")
        return legacy.get(prefix, prefix) + dot + rest

    channels = args.get("channels")
    if isinstance(channels, dict):
        args = {**args, "channels": {renamed(str(name)): count for name, count in channels.items()}}
    return {renamed(key): tensor for key, tensor in state.items()}, args


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFormatError(f"{path.name} is not a valid safetensors file: {error}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if _torch_archive_kind(path) == "torchscript":
        raise UnsafeFormatError(f"{path.name} is TorchScript, which needs unpickling; use {SAFE_FORMATS}")
    check_torch_zip(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # the restricted unpickler raises many types; none of them may escape as a crash
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeFormatError(
                f"{path.name} holds pickled Python objects, not just weights; use {SAFE_FORMATS}"
            ) from None
        raise ModelFormatError(
            f"{path.name} is not a readable state_dict: {(str(error) or type(error).__name__).splitlines()[0][:200]}"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFormatError(f"{path.name} is not a state_dict (a mapping of names to tensors)")
    return state


def _from_state(
    state: dict[str, torch.Tensor],
    source_format: str,
    name: str | None,
    args: dict | None,
    filename: str,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    if not name:
        raise ModelFormatError(
            f"{filename} holds weights only: name its architecture (--arch NAME --arch-arg KEY=VALUE)"
        )
    args = dict(args or {})
    module = build_architecture(name, args)
    _load_state(module, state, filename)
    shape = input_shape or default_input_shape(name, args)
    return _with_num_classes(
        LoadedModel(module.eval(), {"name": name, "args": args}, source_format, shape, None, None, None)
    )


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], filename: str) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFormatError(f"{filename}: tensor {shown(key)} holds NaN or infinite values")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {shown_list(missing)}" if missing else "",
                f"unexpected {shown_list(unexpected)}" if unexpected else "",
                "shape mismatch "
                + ", ".join(f"{shown(k)} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5])
                if wrong
                else "",
            )
            if part
        )
        raise ModelFormatError(f"{filename} does not fit the architecture: {details}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _with_num_classes(model: LoadedModel) -> LoadedModel:
    """Reads the class count from one forward pass, which works for every architecture alike: dim 1 of a
    classifier's (batch, classes) or a segmentation model's (batch, classes, H, W); the data decides which fits."""
    if model.input_shape is not None:
        try:
            with torch.no_grad():
                output = model.module.eval()(torch.zeros(1, *model.input_shape))
        except Exception as error:
            raise ModelFormatError(f"the model does not run on inputs of shape {model.input_shape}: {error}") from None
        if output.ndim not in (2, 4):
            raise ModelFormatError(
                "a model must output (batch, classes) or, for segmentation, (batch, classes, H, W); "
                f"this model outputs {tuple(output.shape)}"
            )
        model.num_classes = int(output.shape[1])
    return model


# -- ONNX -------------------------------------------------------------------------------------------------------


def _parse_onnx(data: bytes, filename: str) -> tuple[Any, Renamed]:
    """The checked ModelProto with every name replaced by a generated one (`core/intake/onnx_names.py`): every
    path that converts a graph, an upload or a stored graph.onnx, reads it through here."""
    import onnx

    try:
        graph = onnx.load_model_from_string(data)
    except Exception as error:
        raise ModelFormatError(f"{filename} is not a valid ONNX model: {shown(str(error))}") from None
    refuse_external_data(graph, filename)
    declare_unknown_ranks(graph)
    try:
        onnx.checker.check_model(graph)
    except Exception as error:
        raise ModelFormatError(
            f"{filename} fails the ONNX checker: {shown((str(error) or type(error).__name__).splitlines()[0])}"
        ) from None
    return graph, rename_onnx(graph)


def _convert_onnx(graph, originals: dict[str, str] | None = None) -> nn.Module:
    """The GraphModule onnx2torch builds from a renamed graph; a refusal names nodes by their `originals`."""
    from onnx2torch import convert

    try:
        return convert(graph)
    except NotImplementedError as error:
        nodes = unconvertible_nodes(graph, originals)
        detail = f"nodes {', '.join(nodes[:5])}" if nodes else shown(str(error))
        raise UnsupportedLayerError(f"the ONNX model uses operators we cannot convert: {detail}") from None
    except Exception as error:
        raise ModelFormatError(f"the ONNX model could not be converted: {shown(str(error))}") from None


def _onnx_input(graph):
    """The graph's one image input, a float32 tensor; and it has one output, the logits."""
    from onnx import TensorProto

    inputs = [i for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}]
    if len(inputs) != 1:
        raise ModelFormatError(f"the ONNX model must take one input tensor; it takes {len(inputs)}")
    if len(graph.graph.output) != 1:
        names = ", ".join(output.name for output in graph.graph.output[:5])
        raise ModelFormatError(
            f"the ONNX model must have one output (the logits); it has {len(graph.graph.output)}: {names}"
        )
    value = inputs[0]
    if value.type.WhichOneof("value") != "tensor_type" or value.type.tensor_type.elem_type != TensorProto.FLOAT:
        kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type) if value.type.HasField("tensor_type") else ""
        raise ModelFormatError(
            f"the ONNX model's input {value.name} is {kind or 'not a tensor'}; Squeezer feeds it float32 images"
        )
    return value


def _onnx_input_shape(graph) -> tuple[int, ...] | None:
    """(C, H, W) as declared; None when an axis is free (a dim_param, no size, 0 or -1) or no rank is declared:
    then the data's sample shape is the input shape."""
    value = _onnx_input(graph)
    sizes = declared_sizes(value)
    if sizes is None:
        return None
    if len(sizes) != 4:
        raise ModelFormatError(
            f"the ONNX model's input {value.name} must be (batch, channels, height, width); it has {len(sizes)} axes"
        )
    shape = sizes[1:]
    return None if None in shape else tuple(size for size in shape if size is not None)


def _load_onnx(path: Path) -> LoadedModel:
    parsed, renamed = _parse_onnx(path.read_bytes(), path.name)
    _onnx_input(parsed)
    normalised = normalize_onnx(parsed)
    graph = normalised.model
    renamed = compose(renamed, rename_onnx(graph))  # the stored graph must be renamed already: reloads keep its names
    data = graph.SerializeToString()
    input_shape = _onnx_input_shape(graph)
    module = _convert_onnx(graph, renamed.originals).eval()
    model = LoadedModel(module, {"name": ONNX_ARCHITECTURE, "args": {}}, "onnx", input_shape, None, None, None)
    model.onnx_names = renamed.changed()
    if input_shape is not None:
        x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
        check_onnx_parity(module, data, x)
        _with_num_classes(model)
    else:
        model.pending_parity = normalised
    model.onnx_graph = _weightless_graph(graph, module, input_shape)
    return model


def check_pending_parity(model: LoadedModel, x: torch.Tensor) -> None:
    """The checks an ONNX model with free axes could not run at load, on inputs of the data's size: the rewritten
    graph against the uploaded one (where no stand-in size could check it) and the converted module against it."""
    pending = model.pending_parity
    if pending is None:
        return
    if not agrees_at(pending, x.numpy()):
        raise UnsupportedLayerError(
            "the ONNX graph, rewritten into the form we convert, disagrees with the uploaded one at the data's size "
            f"{tuple(x.shape[1:])}: {'; '.join(pending.changes)}"
        )
    check_onnx_parity(model.module, pending.serialized(), x)
    model.pending_parity = None


def onnx_outputs(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    """The first output of an ONNX model under onnxruntime on CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]


def check_onnx_parity(module: nn.Module, onnx_bytes: bytes, x: torch.Tensor) -> float:
    """Max absolute difference between the converted module and onnxruntime; raises when they disagree."""
    try:
        expected = onnx_outputs(onnx_bytes, x)
    except Exception as error:
        raise ModelFormatError(f"onnxruntime cannot run the model: {str(error)[:300]}") from None
    try:
        with torch.no_grad():
            actual = module.eval()(x).numpy()
    except Exception as error:
        raise UnsupportedLayerError(
            f"the converted model cannot run on inputs of shape {tuple(x.shape)}, which onnxruntime runs: "
            f"{short_description(error)}"
        ) from None
    if actual.shape != expected.shape:
        raise UnsupportedLayerError(f"converted model outputs {actual.shape}, onnxruntime {expected.shape}")
    scale = max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(actual - expected).max())
    if not math.isfinite(difference) or difference > _PARITY_TOLERANCE * scale:
        raise UnsupportedLayerError(f"the converted model disagrees with onnxruntime (max difference {difference:.3g})")
    return difference


def _weightless_graph(graph, module: nn.Module, input_shape) -> bytes:
    """The ONNX graph with its large float initializers zeroed, so packed models carry the structure once and the
    weights only in their own compressed form. Kept whole when the zeroed graph would not convert back to the same
    module (some converters fold initializers into constants)."""
    import onnx
    from onnx import numpy_helper

    light = copy.deepcopy(graph)
    for tensor in light.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size >= _ZEROED_MIN_ELEMENTS:
            tensor.CopyFrom(numpy_helper.from_array(np.zeros_like(array), tensor.name))
    data = light.SerializeToString()
    try:
        rebuilt = _convert_onnx(onnx.load_model_from_string(data))
        rebuilt.load_state_dict(module.state_dict())
        if input_shape is not None:
            x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                if not torch.allclose(rebuilt.eval()(x), module.eval()(x), atol=1e-5):
                    return graph.SerializeToString()
    except Exception:
        return graph.SerializeToString()
    return data


# -- saving -----------------------------------------------------------------------------------------------------


def save_model_dir(model: LoadedModel, directory: Path) -> Path:
    """Writes the Squeezer model format: architecture.json, model.safetensors and, for ONNX models, graph.onnx."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": MODEL_FORMAT,
        "version": 1,
        "name": model.architecture["name"],
        "args": model.architecture.get("args", {}),
        "input_shape": list(model.input_shape) if model.input_shape else None,
        "num_classes": model.num_classes,
        "preprocessing": model.preprocessing.model_dump() if model.preprocessing else None,
    }
    (directory / "architecture.json").write_text(json.dumps(meta, indent=2) + "\n")
    state = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    if model.onnx_graph:
        (directory / "graph.onnx").write_bytes(model.onnx_graph)
    return directory
