"""Translation methods, one module each over :class:`~geotranslate.methods.base.Method`.

:data:`METHODS` maps a dataset type to its class; :func:`build_method` is the one factory.
"""

from __future__ import annotations

from typing import Any

from geotranslate.errors import GeotranslateError

from .base import GENERATOR_OF, Method, build_generator_for
from .cut import CUT, FastCUT
from .cyclegan import CycleGAN
from .pix2pix import Pix2Pix
from .pix2pixhd import Pix2PixHD

METHODS: dict[str, type[Method]] = {
    "Pix2Pix": Pix2Pix,
    "CycleGAN": CycleGAN,
    "Pix2PixHD": Pix2PixHD,
    "CUT": CUT,
    "FastCUT": FastCUT,
}

__all__ = ["CUT", "GENERATOR_OF", "METHODS", "CycleGAN", "FastCUT", "Method", "Pix2Pix",
           "Pix2PixHD", "build_generator_for", "build_method"]


def build_method(name: str, config: Any, bands: dict[str, int], chip_size: int,
                 **kwargs: Any) -> Method:
    """The method ``name`` (a dataset type) for ``config``; ``kwargs`` go to :class:`Method`."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise GeotranslateError(
            f"dataset type {name!r}: choose from {', '.join(METHODS)}") from None
    return cls(config, bands, chip_size, **kwargs)
