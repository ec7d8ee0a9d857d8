"""The compression methods, one registration each: the config class of its own options and its handler, the function
that runs it (torchao's config + handler). Every list of methods is read from here: the CLI's choices, the API's enum,
the pipeline's dispatch, auto's stages and the options a job of each method may set.

A method registers with `register_method` on its options class in core.config, where CompressConfig gives each
method a field of that class under the method's name. Handlers are named by module and function and imported when
a method first runs, so the CLI and the API, which list and validate methods, never import torch.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel


class MethodName(StrEnum):
    LWCT = "lwct"
    FILTER = "filter"
    GROUP = "group"
    AUTO = "auto"
    INT8 = "int8"


# A handler's signature: handler(model, data, config, **hooks) -> MethodResult (core.methods.harness.MethodHooks).
MethodHandler = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    """One compression method."""

    name: MethodName
    options: type[BaseModel]  # its own options: CompressConfig's field of the same name
    handler_path: str  # "squeezer.core.methods.<module>:<function>", imported on first use
    summary: str  # one line for the CLI's help and the API's description
    structural: bool = False  # it removes whole channels: auto may run it before lwct (auto.structural)
    combines: tuple[MethodName, ...] = field(default=())  # the methods it runs, whose options it reads (auto)

    @property
    def reads(self) -> tuple[MethodName, ...]:
        """The option sections a job of this method may set: its own and those of the methods it combines."""
        return (self.name, *self.combines)

    @property
    def trains(self) -> bool:
        """Whether its options hold the shared training settings (core.config.StructuredTraining)."""
        return "epochs_per_step" in self.options.model_fields

    def handler(self) -> MethodHandler:
        module, _, function = self.handler_path.partition(":")
        handler: MethodHandler = getattr(importlib.import_module(module), function)
        return handler

    def run(self, model: Any, data: Any, config: Any, **hooks: Any) -> Any:
        """Runs the method: its handler's MethodResult."""
        return self.handler()(model, data, config, **hooks)


_METHODS: dict[MethodName, Method] = {}
OptionsT = TypeVar("OptionsT", bound=type[BaseModel])


def register_method(
    name: MethodName,
    handler: str,
    summary: str,
    *,
    structural: bool = False,
    combines: tuple[MethodName, ...] = (),
) -> Callable[[OptionsT], OptionsT]:
    """Class decorator of a method's options class: registers the method under `name` with its handler
    ("module:function")."""

    def decorate(options: OptionsT) -> OptionsT:
        if name in _METHODS:
            raise ValueError(f"method {name} is registered twice")
        _METHODS[name] = Method(name, options, handler, summary, structural, combines)
        return options

    return decorate


def _registered() -> dict[MethodName, Method]:
    import squeezer.core.config  # noqa: F401  # its option classes register every method

    return _METHODS


def method(name: str) -> Method:
    """The registration of method `name` (KeyError for an unknown one)."""
    return _registered()[MethodName(name)]


def methods() -> list[Method]:
    """Every method, in MethodName's order."""
    registered = _registered()
    return [registered[name] for name in MethodName]


def summaries() -> str:
    """Every method with its summary, for the CLI's help and the API's description."""
    return "; ".join(f"{m.name}: {m.summary}" for m in methods())


def structural_names() -> list[MethodName]:
    """The methods auto may run before lwct, registered so far (core.config's AutoConfig asks while it loads)."""
    return [name for name in MethodName if name in _METHODS and _METHODS[name].structural]


def check_complete(config_class: type[BaseModel]) -> None:
    """Fails the import of core.config unless every MethodName is registered and `config_class` (CompressConfig)
    has a field of each method's options class under its name."""
    for name in MethodName:
        registered = _METHODS.get(name)
        if registered is None:
            raise RuntimeError(f"method {name} has no registration (register_method on its options class)")
        annotation = config_class.model_fields[name].annotation if name in config_class.model_fields else None
        if annotation is not registered.options:
            raise RuntimeError(f"{config_class.__name__}.{name} must be a field of type {registered.options.__name__}")
