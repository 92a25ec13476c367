"""Model registry. Notebooks and configs name models by string: ``build_model("baseline")``.

Each family lives in its own module and registers its builders with :func:`register`:
``cifar`` (Table-1 baseline, its variants and Model A), ``whitened`` (Model B), ``transfer`` (ResNet18),
``mnist`` (LeNet-style nets).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from cifarlib.errors import CifarlibError

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register(name: str, description: str):
    """Decorator: register a builder ``fn(**kw) -> nn.Module`` under ``name``; ``description`` (one
    line) documents it at the place of registration."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def builder_arguments(name: str) -> tuple[set[str], bool]:
    """The keyword arguments the builder of ``name`` names, and whether it also takes ``**kwargs``."""
    import inspect

    params = inspect.signature(_REGISTRY[name][0]).parameters
    return set(params), any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_model(name: str, **kw) -> nn.Module:
    """Build a registered model. Unknown names raise a one-line error listing the known ones."""
    if name not in _REGISTRY:
        raise CifarlibError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    try:
        return _REGISTRY[name][0](**kw)
    except TypeError as err:
        raise CifarlibError(f"model {name!r} does not take these arguments {sorted(kw)}: {err}") from None


def module_name(name: str) -> str:
    """The file name of the module that defines model ``name`` (e.g. "cifar.py")."""
    import inspect
    from pathlib import Path

    if name not in _REGISTRY:
        raise CifarlibError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return Path(inspect.getsourcefile(_REGISTRY[name][0])).name


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Import the families so that they register themselves.
from cifarlib.models import cifar, mnist, transfer, whitened  # noqa: E402,F401
