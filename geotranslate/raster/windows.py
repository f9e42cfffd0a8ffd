"""Pixel grids, windows over them and padding of reads at their edges.

One module serves export (chips on a regular grid) and prediction (overlapping tiles that are
blended), so both cut a raster the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from geotranslate.errors import OptionError
from geotranslate.settings import split_list


def tile_offsets(length: int, tile: int, stride: int, *, start: int = 0) -> list[int]:
    """Offsets of tiles of size ``tile`` every ``stride`` pixels covering ``[start, length)``.

    The last tile is moved flush with the end, so the edge is covered without a partial tile.
    When ``length - start <= tile`` there is one tile at ``start`` (the caller pads it).
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    end = length - tile
    if end <= start:
        return [start]
    offsets = list(range(start, end + 1, stride))
    if offsets[-1] < end:
        offsets.append(end)
    return offsets


def own_extents(offsets: list[int], length: int, tile: int) -> dict[int, int]:
    """For each tile offset, the end of the pixels that tile alone owns.

    Tiles overlap where the stride is shorter than the tile or the last tile was moved flush
    with the end; a pixel then belongs to the first tile covering it, so statistics that sum
    over tiles count every pixel once.
    """
    ends = {}
    for i, off in enumerate(offsets):
        nxt = offsets[i + 1] if i + 1 < len(offsets) else length
        ends[off] = min(off + tile, nxt, length)
    return ends


def tile_windows(height: int, width: int, tile: int, stride: int | None = None) -> Iterator[Window]:
    """Square windows row by row covering a ``height`` x ``width`` grid (export's chips)."""
    stride = stride or tile
    rows = tile_offsets(height, tile, stride)
    cols = tile_offsets(width, tile, stride)
    for row in rows:
        for col in cols:
            yield Window(col, row, tile, tile)


def reflect_pad(
    data: np.ndarray, valid: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror (bands, rows, cols) data and its (rows, cols) validity by ``pads`` pixels.

    Prediction pads tiles at the raster's edges this way, so the network sees plausible
    context rather than a black border. numpy repeats the mirroring when a pad is longer than
    the raster, and repeats the pixel of a 1-pixel axis, so tiny rasters work too.
    """
    return np.pad(data, ((0, 0), *pads), mode="reflect"), np.pad(valid, pads, mode="reflect")


def parse_pixel_window(
    spec: str | tuple[int, int, int, int] | None,
) -> tuple[int, int, int, int] | None:
    """``"ROW_OFF,COL_OFF,HEIGHT,WIDTH"`` -> a tuple of four ints (None stays None).

    The one spelling of a pixel window on the command line (predict-raster, preview).
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        try:
            values = split_list(spec, int)
        except ValueError:
            values = ()
        if len(values) != 4:
            raise OptionError(
                f"window {spec!r}: expected ROW_OFF,COL_OFF,HEIGHT,WIDTH (four integers)"
            )
        return values  # type: ignore[return-value]
    return tuple(int(v) for v in spec)  # type: ignore[return-value]


@dataclass(frozen=True)
class Grid:
    """A pixel grid: where chips are cut (A's grid, padded up to the tile size if smaller)."""

    crs: rasterio.crs.CRS | None
    transform: Affine
    width: int
    height: int


def grid_offset(ds: rasterio.DatasetReader, grid: Grid) -> tuple[int, int] | None:
    """(rows, cols) of ``ds``'s pixel (0, 0) on ``grid`` when ``ds`` lies on that same pixel
    grid (same CRS, pixel size and orientation, origin a whole number of pixels away); else
    None. Such a raster is read directly: resampling it would only cost time (and, at its
    edges, pixels)."""
    if ds.crs is None or grid.crs is None or ds.crs != grid.crs:
        return None
    t, g = ds.transform, grid.transform
    scale = max(abs(g.a), abs(g.b), abs(g.d), abs(g.e))
    linear = zip((t.a, t.b, t.d, t.e), (g.a, g.b, g.d, g.e), strict=True)
    if any(abs(p - q) > 1e-9 * scale for p, q in linear):
        return None
    col, row = ~g * (t.c, t.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)
