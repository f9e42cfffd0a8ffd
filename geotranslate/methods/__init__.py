"""Translation methods, one module each over :class:`~geotranslate.methods.base.Method`.

The registry is this folder: every module here (but base.py) is imported, and each
:class:`Method` subclass with a ``name`` that it defines is a method. :data:`METHODS` maps the
name (``train --dataset-type``) to the class, paired methods first; :func:`build_method` is the
one factory. A new method is one new module: its class declares its networks, losses, options
(:attr:`Method.OPTIONS`) and one training step, and the ``train`` command, config.json and the
model file take it from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from geotranslate.errors import OptionError

from .base import GENERATOR_OF, Method, build_generator_for


def _discover() -> dict[str, type[Method]]:
    """Every method defined in this package's modules: paired first, then by module name,
    then in the order a module defines them."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Method) and obj.name
                    and obj.__module__ == module.__name__):
                found.append(obj)
    found.sort(key=lambda m: not m.paired)  # stable: module and definition order kept
    methods: dict[str, type[Method]] = {}
    for method in found:
        if method.name in methods:
            raise TypeError(f"two methods are named {method.name!r}: "
                            f"{methods[method.name].__module__}, {method.__module__}")
        methods[method.name] = method
    return methods


METHODS: dict[str, type[Method]] = _discover()

__all__ = ["GENERATOR_OF", "METHODS", "Method", "build_generator_for", "build_method"]


def build_method(name: str, config: Any, bands: dict[str, int], chip_size: int,
                 **kwargs: Any) -> Method:
    """The method ``name`` (a dataset type) for ``config``; ``kwargs`` go to :class:`Method`."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise OptionError(
            f"dataset type {name!r}: choose from {', '.join(METHODS)}") from None
    return cls(config, bands, chip_size, **kwargs)
