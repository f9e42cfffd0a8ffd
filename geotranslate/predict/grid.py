"""The tile grid of a prediction: column chunks, tile rows, and which rows each one finishes.

Tiles come from :func:`geotranslate.raster.windows.tile_offsets` (the one windowing module)
with a margin of ``overlap`` beyond every edge. Splitting the grid into column chunks bounds
memory for arbitrarily wide rasters; tiles at a chunk border are computed by both chunks, so
the blended result is exactly that of one pass over the whole width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geotranslate.errors import GeotranslateError
from geotranslate.raster.windows import tile_offsets

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
    height: int,
    width: int,
    tile: int,
    overlap: int,
    chunk_width: int,
    rows_out: tuple[int, int] | None = None,
    align: int = 1,
) -> list[Strip]:
    """Every tile row of every column chunk, in processing order, with the rows it finishes.

    Rows above the next tile row's top are touched by no later tile, so they can be written.
    ``rows_out`` restricts the output to a band of rows of the grid (``--rank``): only the
    tile rows touching it are planned, on the same grid as a whole run, so the parts of a
    split run are exactly the corresponding rows of the whole run.

    ``align`` (the generator's total stride): when the tile stride and the overlap are
    multiples of it, the last tile is not moved flush with the edge but reaches beyond it
    (into the mirrored margin), so every tile starts on the ``align`` lattice and a network
    that is equivariant only to shifts by its total stride sees every tile in the same phase.
    """
    out_start, out_stop = rows_out or (0, height)
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


def rank_window(
    region: tuple[int, int, int, int], rank: int, world_size: int
) -> tuple[int, int, int, int]:
    """The ``rank``-th of ``world_size`` horizontal bands of ``region``, block-aligned rows."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise GeotranslateError(f"rank {rank} / world size {world_size}: need 0 <= rank < size")
    row0, col0, height, width = region
    blocks = math.ceil(height / OUT_BLOCK)
    if world_size > blocks:
        raise GeotranslateError(
            f"world size {world_size} is more than the {blocks} bands of {OUT_BLOCK} rows "
            f"this raster has; use at most {blocks} processes"
        )
    start = rank * blocks // world_size * OUT_BLOCK
    stop = min(height, (rank + 1) * blocks // world_size * OUT_BLOCK)
    return row0 + start, col0, stop - start, width
