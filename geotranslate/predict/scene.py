"""Scene statistics for the normalization layers: the same translation whatever the tiling.

Instance norm normalizes every input by its own statistics, so a tiled prediction gives each
tile its own tone, which differs with the tile size and position; blending hides the seams but
not the tone. Before the tiled pass, :func:`scene_generator` reads a bounded sample of tiles
spread evenly over the region (:func:`scene_sample`: at most :data:`SAMPLE_TILES` tiles of the
model's chip size and at most :data:`SAMPLE_PIXELS` pixels, so memory is bounded whatever the
raster's size) and runs it through the generator once as one batch; every instance-norm layer
keeps the statistics of the whole sample (:class:`geotranslate.models.norms.SceneNorm`), and
the tiled pass uses them for every tile. The sample depends on the region and the chip size,
not on ``--tile-size``, ``--overlap`` or ``--rank``, so every tiling and every part of a split
run use the same statistics. Batch norm uses its running statistics (tile-independent
already); a network without normalization needs nothing. What was done is recorded in the
output's ``GEOTRANSLATE_NORM_STATS`` tag (:func:`norm_stats_label`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geotranslate.choices import NORM_STATS_MODES
from geotranslate.errors import OptionError
from geotranslate.modelfile import DomainSpec
from geotranslate.models.norms import norm_layer_kinds, scene_normalized
from geotranslate.raster.io import GDAL_CACHE_BYTES, open_raster, read_window
from geotranslate.raster.sources import RasterSource
from geotranslate.raster.windows import reflect_pad

#: most tiles, and most pixels in all, of the calibration sample
SAMPLE_TILES = 16
SAMPLE_PIXELS = 1 << 20


def sample_offsets(length: int, tile: int, count: int) -> list[int]:
    """``count`` tile offsets spread evenly over ``[0, length)`` (one at 0 if it is short)."""
    if length <= tile or count <= 1:
        return [max(0, (length - tile) // 2)]
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


def sample_tile(chip_size: int, stride: int) -> int:
    """The sample's tile size: the model's chip size, cut to a multiple of the generator's
    total ``stride`` (at least one stride)."""
    if chip_size % stride:
        return max(stride, chip_size // stride * stride)
    return chip_size


def scene_sample(
    source_raster: RasterSource,
    bands: list[int],
    source: DomainSpec,
    region: Window,
    tile: int,
    *,
    max_tiles: int = SAMPLE_TILES,
    max_pixels: int = SAMPLE_PIXELS,
    read: Callable | None = None,
) -> np.ndarray:
    """(N, C, tile, tile) normalized input tiles spread evenly over ``region`` of the raster
    ``source_raster`` (parsed: a file, a URL, band files or a STAC item, raster/sources.py).

    N is at most ``max_tiles`` and N * tile² at most ``max_pixels`` (at least one tile).
    Tiles without any valid pixel are left out (unless no tile has one); a region smaller
    than a tile is mirrored to its size, as the tiled pass does. ``read(ds, window)``: the
    model's input transforms (inputs.py), if any.
    """
    count = max(1, min(max_tiles, max_pixels // (tile * tile)))
    row0, col0, height, width = region.row_off, region.col_off, region.height, region.width
    per_side = max(1, math.isqrt(count))
    rows = sample_offsets(height, tile, per_side)
    cols = sample_offsets(width, tile, per_side)
    tiles, any_valid = [], []
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        open_raster(source_raster, allow_no_crs=True) as ds,
    ):
        for r in rows:
            for c in cols:
                h, w = min(tile, height - r), min(tile, width - c)
                window = Window(col0 + c, row0 + r, w, h)
                if read is not None:
                    data, valid = read(ds, window)
                else:
                    data, valid = read_window(ds, window, bands)
                if h < tile or w < tile:
                    data, valid = reflect_pad(data, valid, ((0, tile - h), (0, tile - w)))
                tiles.append(source.normalizer.to_model(data, valid))
                any_valid.append(bool(valid.any()))
    if any(any_valid):
        tiles = [t for t, ok in zip(tiles, any_valid, strict=True) if ok]
    return np.stack(tiles)


def scene_generator(
    generator: torch.nn.Module,
    mode: str,
    sample: Callable[[], np.ndarray],
    device: torch.device,
    autocast,
    *,
    channels_last: bool = False,
) -> tuple[torch.nn.Module, str]:
    """(the generator to run tiles through, what its normalization layers do: the tag).

    ``mode`` ``"scene"`` calibrates instance norms on ``sample()`` (called only when the
    generator has instance norms); ``"tile"`` keeps per-tile statistics (the old behaviour).
    The sample is one batch, in ``autocast``'s precision and (``channels_last``) the tiles'
    layout: each layer's statistics need every earlier layer's scene statistics, which only
    the whole sample gives, so it cannot be split into the tiles' smaller batches without
    changing them; its size is bounded by :data:`SAMPLE_PIXELS`.
    """
    if mode not in NORM_STATS_MODES:
        raise OptionError(f"norm stats {mode!r}: choose from {', '.join(NORM_STATS_MODES)}")
    kinds = norm_layer_kinds(generator)
    if "instance" not in kinds or mode == "tile":
        return generator, norm_stats_label(kinds, mode, 0, 0)
    tiles = sample()
    x = torch.from_numpy(tiles).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast():
        frozen, _ = scene_normalized(generator, x)
    return frozen, norm_stats_label(kinds, mode, len(tiles), tiles.shape[-1])


def norm_stats_label(kinds: set[str], mode: str, tiles: int, tile: int) -> str:
    """``scene-sample 16 tiles of 256 px`` / ``per-tile`` (instance norm), ``running`` (batch
    norm), ``per-pixel`` (layer norm over each pixel's channels), ``none`` (no normalization
    layer); joined with ``+`` when the network has several."""
    parts = []
    if "instance" in kinds:
        parts.append(f"scene-sample {tiles} tiles of {tile} px" if mode == "scene" else "per-tile")
    if "batch" in kinds:
        parts.append("running")
    if "layer" in kinds:
        parts.append("per-pixel")
    return " + ".join(parts) or "none"
