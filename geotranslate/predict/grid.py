"""The tile grid of a prediction: its extent, column chunks, tile rows, and the rows each finishes.

Regions are :class:`rasterio.windows.Window` in the raster's pixels; ``--window`` spells one
row first (``ROW_OFF,COL_OFF,HEIGHT,WIDTH``) and becomes a Window as soon as it is parsed
(:func:`parse_region`).

Tiles come from :func:`geotranslate.raster.windows.tile_offsets` (the one windowing module)
with a margin of ``overlap`` beyond every edge. Splitting the grid into column chunks bounds
memory for arbitrarily wide rasters; tiles at a chunk border are computed by both chunks, so
the blended result is exactly that of one pass over the whole width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

from geotranslate.errors import OptionError
from geotranslate.raster.windows import parse_pixel_window, tile_offsets

#: widest column chunk processed at once: bounds memory for arbitrarily wide rasters.
CHUNK_WIDTH = 2048
#: GeoTIFF block size of the output (chunk and rank borders are aligned to it).
OUT_BLOCK = 256


@dataclass(frozen=True)
class Strip:
    """One tile row of one column chunk; coordinates relative to the output region."""

    chunk: int
    row: int  # top of the tiles (may be negative: margin)
    chunk_cols: tuple[int, int]  # output columns this chunk owns
    tile_cols: tuple[int, ...]  # left edges of the tiles it computes
    finish: tuple[int, int]  # output rows final after this strip


def default_overlap(tile: int, receptive_field: int, stride: int = 1) -> int:
    """The overlap ``predict-raster`` uses unless told: enough context for the generator.

    The receptive field (so pixels with more than a small blending weight see their whole
    field, not the padding beyond the tile),
    at least a quarter of the tile and at most half of it; rounded up to a multiple of the
    generator's total ``stride`` when that stays within half the tile, so tiles start on the
    stride lattice and see the scene with the same phase.
    """
    want = min(max(tile // 4, receptive_field), tile // 2)
    aligned = math.ceil(want / stride) * stride
    return aligned if aligned <= tile // 2 else want


def plan_strips(
    grid: Window,
    region: Window,
    tile: int,
    overlap: int,
    chunk_width: int,
    align: int = 1,
) -> list[Strip]:
    """Every tile row of every column chunk of ``grid``, in processing order, with the rows it
    finishes (relative to the grid).

    Rows above the next tile row's top are touched by no later tile, so they can be written.
    Only the tile rows touching ``region`` (the output: the grid, or a band of its rows for
    ``--rank``) are planned, on the same grid as a whole run, so the parts of a split run are
    exactly the corresponding rows of the whole run.

    ``align`` (the generator's total stride): when the tile stride and the overlap are
    multiples of it, the last tile is not moved flush with the edge but reaches beyond it
    (into the mirrored margin), so every tile starts on the ``align`` lattice and a network
    that is equivariant only to shifts by its total stride sees every tile in the same phase.
    """
    height, width = grid.height, grid.width
    out_start = region.row_off - grid.row_off
    out_stop = out_start + region.height
    stride = tile - overlap
    if align > 1 and stride % align == 0 and overlap % align == 0:
        rows = _lattice_offsets(height + overlap, tile, stride, -overlap)
        cols = _lattice_offsets(width + overlap, tile, stride, -overlap)
    else:
        rows = tile_offsets(height + overlap, tile, stride, start=-overlap)
        cols = tile_offsets(width + overlap, tile, stride, start=-overlap)
    chunk_width = max(OUT_BLOCK, chunk_width // OUT_BLOCK * OUT_BLOCK)
    bounds = list(range(0, width, chunk_width)) + [width]
    strips = []
    for chunk, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        tile_cols = tuple(c for c in cols if c < b and c + tile > a)
        done = 0
        for i, r in enumerate(rows):
            last = i == len(rows) - 1
            end = height if last else min(max(rows[i + 1], 0), height)
            finish = (max(done, out_start), min(max(done, end), out_stop))
            if r < out_stop and r + tile > out_start:
                strips.append(Strip(chunk, r, (a, b), tile_cols, finish))
            done = max(done, end)
    return strips


def _lattice_offsets(length: int, tile: int, stride: int, start: int) -> list[int]:
    """Offsets ``start + k * stride`` until a tile reaches ``length``."""
    offsets = [start]
    while offsets[-1] + tile < length:
        offsets.append(offsets[-1] + stride)
    return offsets


def rank_window(region: Window, rank: int, world_size: int) -> Window:
    """The ``rank``-th of ``world_size`` horizontal bands of ``region``, block-aligned rows."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(f"rank {rank} / world size {world_size}: need 0 <= rank < size")
    blocks = math.ceil(region.height / OUT_BLOCK)
    if world_size > blocks:
        raise OptionError(
            f"world size {world_size} is more than the {blocks} bands of {OUT_BLOCK} rows "
            f"this raster has; use at most {blocks} processes"
        )
    start = rank * blocks // world_size * OUT_BLOCK
    stop = min(region.height, (rank + 1) * blocks // world_size * OUT_BLOCK)
    return Window(region.col_off, region.row_off + start, region.width, stop - start)


def row_first(window: Window) -> tuple[int, int, int, int]:
    """``(row_off, col_off, height, width)``: a window as ``--window`` spells it."""
    return window.row_off, window.col_off, window.height, window.width


def parse_region(spec: str | tuple[int, int, int, int] | Window | None) -> Window | None:
    """``--window``'s ``"ROW_OFF,COL_OFF,HEIGHT,WIDTH"`` (or such a tuple, or a Window) as a
    Window with offsets >= 0 and sizes > 0; None (or "") stays None."""
    values = row_first(spec) if isinstance(spec, Window) else parse_pixel_window(spec)
    if values is None:
        return None
    row, col, height, width = values
    if height <= 0 or width <= 0 or row < 0 or col < 0:
        raise OptionError(f"window {values}: offsets must be >= 0 and sizes > 0")
    return Window(col, row, width, height)


def grid_window(window: Window | None, height: int, width: int, name: str) -> Window:
    """The tile grid's extent: ``window`` inside the raster ``name`` of ``height`` rows and
    ``width`` columns, or (None) the whole raster."""
    if window is None:
        return Window(0, 0, width, height)
    if window.row_off + window.height > height or window.col_off + window.width > width:
        raise OptionError(f"window {row_first(window)} reaches outside {name} "
                          f"({height} rows x {width} cols)")
    return window
