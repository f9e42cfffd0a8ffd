"""geotranslate: translate georeferenced rasters between imaging domains with GANs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["GeotranslateError", "__version__", "load_model"]

from geotranslate.errors import GeotranslateError


def load_model(path, device="cpu"):
    """Load a trained model (run directory or model.json); see :mod:`geotranslate.modelfile`."""
    from geotranslate.modelfile import load_model as _load

    return _load(path, device=device)
