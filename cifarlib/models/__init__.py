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
_USERS: set[str] = set()  # names registered from outside the package (a notebook cell, the user's own file)


def register(name: str, description: str):
    """Decorator: register a builder ``fn(**kw) -> nn.Module`` under ``name``; ``description`` (one
    line) documents it at the place of registration. A builder from outside the package is registered
    as a user's (:func:`register_user`), so that its runs are keyed by its own code."""

    def deco(fn):
        if not getattr(fn, "__module__", "").startswith("cifarlib."):  # a user's (a notebook, their own file)
            register_user(name, fn)
            return fn
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def register_user(name: str, builder: Callable[..., nn.Module]) -> None:
    """Register a builder defined outside the package (an ``nn.Module`` class or a function returning
    one). Registering the same name again replaces the entry (a notebook cell run again); a name that
    one of the package's models has is refused."""
    if name in _REGISTRY and name not in _USERS:
        raise CifarlibError(f"model name {name!r} belongs to one of the report's models; pass another name=")
    _REGISTRY[name] = (builder, "defined outside cifarlib")
    _USERS.add(name)


def stand_in(name: str) -> None:
    """Register a stand-in for a user's model that this process has not defined, so that the run records
    of ``name`` (made in a notebook) can be read and listed here; building it is a one-line error until
    its definition is run or imported, which replaces the stand-in."""
    if name in _REGISTRY:
        return

    def unavailable(**_):
        raise CifarlibError(f"model {name!r} was defined outside cifarlib (a notebook cell or a file of your own); "
                            "run that definition (or import its module) in this session, then load the run again")

    register_user(name, unavailable)


def is_user_model(name: str) -> bool:
    """Whether ``name`` was registered with :func:`register_user`."""
    return name in _USERS


def builder_of(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise CifarlibError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return _REGISTRY[name][0]


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
