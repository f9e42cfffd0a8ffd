"""Raster I/O: opening and validating rasters, validity masks, windows and padding, warping."""

from geotranslate.raster.io import (
    RasterInfo,
    open_raster,
    parse_bands,
    raster_info,
    read_window,
    valid_from_data,
)
from geotranslate.raster.opening import spectral_bands
from geotranslate.raster.windows import (
    parse_pixel_window,
    reflect_pad,
    tile_offsets,
    tile_windows,
)

__all__ = [
    "RasterInfo",
    "open_raster",
    "parse_pixel_window",
    "parse_bands",
    "raster_info",
    "read_window",
    "reflect_pad",
    "spectral_bands",
    "tile_offsets",
    "tile_windows",
    "valid_from_data",
]
