"""Architectures a model can name in architecture.json: a few CIFAR-style classics, a small U-Net for segmentation
and torchvision's classifiers.

Every entry takes `num_classes` and `in_channels`; those with a fixed input geometry also take `input_size`, so
the same LeNet serves 8×8 digits and 28×28 Fashion-MNIST. Weights never come from the network: torchvision
models are built with `weights=None` and filled from the user's own file.
"""

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from squeezer.core import limits
from squeezer.core.errors import ModelFormatError
from squeezer.core.intake.names import shown, shown_list


class LeNet5(nn.Module):
    """LeNet-5 (two 5×5 convolutions, three fully connected layers); padding keeps small inputs usable."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        padding = 2 if input_size < 28 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = (input_size // 2 + 2 * padding - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class VggSmall(nn.Module):
    """CIFAR-style VGG: three conv blocks (64, 128, 256 channels) with batch norm, then a small classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"):
            if isinstance(out, str):  # "M": max pooling
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers, 16/32/64 channels), with projection shortcuts."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()  # input_size only documents the expected input: global pooling takes any size
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for index in range(blocks):
                stage.append(BasicBlock(planes, width, stride if index == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.pool(out).flatten(1))


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class UNetSmall(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015): encoder blocks of width, 2·width, a 4·width bottleneck,
    transposed-convolution upsampling and decoder blocks that read the upsampled map concatenated with the encoder's
    skip. Outputs (batch, num_classes, H, W); H and W must be multiples of 4."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.enc1 = _double_conv(in_channels, width)
        self.enc2 = _double_conv(width, 2 * width)
        self.bottleneck = _double_conv(2 * width, 4 * width)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        skip1 = self.enc1(x)
        skip2 = self.enc2(self.pool(skip1))
        out = self.bottleneck(self.pool(skip2))
        out = self.dec2(torch.cat([self.up2(out), skip2], 1))
        out = self.dec1(torch.cat([self.up1(out), skip1], 1))
        return self.head(out)


# Arguments that would make a torchvision builder fetch weights: never taken from a user.
_WEIGHT_ARGUMENTS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress"})


def _torchvision_classifiers() -> dict[str, Callable[..., nn.Module]]:
    """The table a `torchvision:<name>` is looked up in: torchvision's image classifiers, which build from nothing
    (`weights=None`). Detection, segmentation, video, optical-flow and quantized builders are not in it: they build
    backbones with weights of their own or need weights to run at all."""
    from torchvision import models

    return {name: models.get_model_builder(name) for name in models.list_models(module=models)}


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    from torchvision import models

    builder = _torchvision_classifiers().get(name)
    if builder is None:
        if name in models.list_models():
            raise ModelFormatError(
                f"torchvision model {shown(name)} is not an image classifier; only torchvision's classifiers can be "
                "built without downloaded weights"
            )
        raise ModelFormatError(f"unknown torchvision model {shown(name)}; see torchvision.models.list_models()")
    return builder


def _torchvision(
    name: str, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, **kwargs
) -> nn.Module:
    builder = _torchvision_builder(name)
    refused = sorted(_WEIGHT_ARGUMENTS & set(kwargs))
    if refused:
        raise ModelFormatError(f"torchvision:{name} takes no {', '.join(refused)}: weights come from your file only")
    module = builder(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(module, in_channels)
    return module


def _replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """torchvision models hard-code RGB input; swap the stem convolution for one with `in_channels` inputs."""
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                # the stem's kernel, stride, padding and dilation are 2-tuples (torch types them as any length)
                setattr(
                    parent,
                    child_name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,  # type: ignore[arg-type]
                        child.stride,  # type: ignore[arg-type]
                        child.padding,  # type: ignore[arg-type]
                        child.dilation,  # type: ignore[arg-type]
                        child.groups,
                        child.bias is not None,
                    ),
                )
                return


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg-small": VggSmall,
    "resnet20": lambda **kw: CifarResNet(20, **kw),
    "resnet56": lambda **kw: CifarResNet(56, **kw),
    "unet-small": UNetSmall,
}
_DEFAULT_INPUT = {
    "lenet5": (1, 28),
    "vgg-small": (3, 32),
    "resnet20": (3, 32),
    "resnet56": (3, 32),
    "unet-small": (3, 32),
}


def architecture_names() -> list[str]:
    return [*_BUILDERS, "torchvision:<name>"]


def build_architecture(name: str, args: dict | None = None) -> nn.Module:
    """A freshly initialised module; bad names and arguments are the user's error, never a crash. A "channels"
    argument ({layer: width}) shrinks the module to the widths a compressed model was saved with, a "blocks_removed"
    argument ({block: replacement}) removes the residual blocks depth pruning took out (core.methods.depth)."""
    args = dict(args or {})
    _check_name(name)
    channels = args.pop("channels", None)
    blocks = args.pop("blocks_removed", None)
    _check_size(name, args, channels, blocks)
    module = _build(name, args)
    if blocks is not None:
        from squeezer.core.methods.depth import apply_block_removals

        apply_block_removals(module, blocks, default_input_shape(name, args))
    if channels is not None:
        from squeezer.core.graph.surgery import apply_channel_overrides

        apply_channel_overrides(module, channels, default_input_shape(name, args))
    return module


def _check_name(name: object) -> None:
    """A name is looked up in our tables before anything else reads it: an unknown one is refused, quoted as data."""
    if not isinstance(name, str):
        raise ModelFormatError("architecture name must be a string")
    if name.startswith("torchvision:"):
        _torchvision_builder(name.split(":", 1)[1])
    elif name not in _BUILDERS:
        raise ModelFormatError(f"unknown architecture {shown(name)}; known: {', '.join(architecture_names())}")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer a module registers moves to the meta device at once, while the other tensors a
    constructor makes stay real: torch.device("meta") alone breaks builders that compute their layout with tensors
    (torchvision's RegNet calls .tolist() on one). A parameter's CPU storage is only reserved, never touched, before it
    moves: the initialisers run on the meta copy."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer  # type: ignore[method-assign]


def _meta_skeleton(name: str, args: dict) -> nn.Module:
    """The module with its parameters on the meta device. Built under torch.device("meta") first, which allocates
    nothing; a builder that computes its layout with tensors (torchvision's RegNet calls .tolist() on one) is retried
    with only parameters and buffers moved to meta, whose CPU storage is reserved but never touched; a build too large
    even to reserve is refused as over the parameter limit."""
    try:
        with torch.device("meta"):
            return _build(name, args)
    except ModelFormatError:
        try:
            with _parameters_on_meta():
                return _build(name, args)
        except MemoryError:
            raise ModelFormatError(
                f"{name} with {shown(args)} is too large to build: over the limit max_model_params "
                f"({limits.current().max_model_params:,}; raise it with SQUEEZER_MAX_MODEL_PARAMS)"
            ) from None


def _check_size(name: str, args: dict, channels: dict | None, blocks: dict | None = None) -> None:
    """Builds the module on the meta device (shapes, no memory) and refuses one whose parameter count, probe input or
    activations (every layer's output for one sample) would not fit, before anything is allocated."""
    shape = default_input_shape(name, args)
    if shape is not None and all(isinstance(d, int) for d in shape):
        limits.check(f"{name}'s input (C×H×W {shape})", math.prod(shape), "max_input_elements", ModelFormatError)
    skeleton = _meta_skeleton(name, args)
    if channels is not None or blocks is not None:
        from squeezer.core.graph.surgery import apply_channel_overrides
        from squeezer.core.methods.depth import apply_block_removals

        try:
            with torch.device("meta"):
                if blocks is not None:
                    apply_block_removals(skeleton, blocks, shape)
                if channels is not None:
                    apply_channel_overrides(skeleton, channels, shape)
        except Exception:  # the real build below reports a bad override with its own message
            return
    params = sum(p.numel() for p in skeleton.parameters())
    limits.check(f"{name}'s parameter count with {shown(args)}", params, "max_model_params", ModelFormatError)
    if shape is None:
        return
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        activations += sum(
            t.numel() for t in (output if isinstance(output, tuple) else (output,)) if torch.is_tensor(t)
        )

    hooks = [module.register_forward_hook(count) for module in skeleton.modules() if not list(module.children())]
    try:
        with torch.no_grad():
            skeleton(torch.empty(1, *shape, device="meta"))
    except Exception:  # the model does not run at this shape: the real probe says so with its own message
        return
    finally:
        for hook in hooks:
            hook.remove()
    limits.check(
        f"{name}'s activations for one {shape} sample", activations, "max_activation_elements", ModelFormatError
    )


def _build(name: str, args: dict) -> nn.Module:
    try:
        if name.startswith("torchvision:"):
            return _torchvision(name.split(":", 1)[1], **args)
        if name not in _BUILDERS:
            raise ModelFormatError(f"unknown architecture {shown(name)}; known: {', '.join(architecture_names())}")
        builder = _BUILDERS[name]
        target = builder.__init__ if inspect.isclass(builder) else None
        if target is not None:
            allowed = set(inspect.signature(target).parameters) - {"self"}
            unknown = set(args) - allowed
            if unknown:
                raise ModelFormatError(
                    f"{name} takes no argument(s) {shown_list(sorted(unknown))}; it takes {sorted(allowed)}"
                )
        return builder(**args)
    except ModelFormatError:
        raise
    except RuntimeError as error:
        if "allocate" in str(error):  # out of memory: the limit of the process that runs it, not the user's input
            raise MemoryError(str(error)) from None
        raise ModelFormatError(f"cannot build {shown(name)} with {shown(args)}: {shown(str(error))}") from None
    except (TypeError, ValueError) as error:
        raise ModelFormatError(f"cannot build {shown(name)} with {shown(args)}: {shown(str(error))}") from None


def default_input_shape(name: str, args: dict | None = None) -> tuple[int, int, int] | None:
    """(C, H, W) the architecture expects, where it has a natural one; torchvision models default to 224×224."""
    args = args or {}
    if name.startswith("torchvision:"):
        size = args.get("input_size", 224)
        return (args.get("in_channels", 3), size, size)
    if name not in _DEFAULT_INPUT:
        return None
    channels, size = _DEFAULT_INPUT[name]
    size = args.get("input_size", size)
    return (args.get("in_channels", channels), size, size)
