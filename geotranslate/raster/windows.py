"""Windows over a raster grid and padding of reads at its edges.

One module serves export (chips on a regular grid) and prediction (overlapping tiles that are
blended), so both cut a raster the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from rasterio.windows import Window


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


def tile_windows(
    height: int, width: int, tile: int, stride: int | None = None, *, margin: int = 0
) -> Iterator[Window]:
    """Square windows row by row covering a ``height`` x ``width`` grid.

    ``margin`` extends the covered area by that many pixels beyond every edge (the windows then
    reach outside the raster and the reads are padded), which prediction uses so that every
    raster pixel lies inside some tile's well-weighted centre.
    """
    stride = stride or tile
    rows = tile_offsets(height + margin, tile, stride, start=-margin)
    cols = tile_offsets(width + margin, tile, stride, start=-margin)
    for row in rows:
        for col in cols:
            yield Window(col, row, tile, tile)


def pad_window_data(
    data: np.ndarray, valid: np.ndarray, window: Window, height: int, width: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the part of a boundless read that lies outside the raster.

    ``mode="reflect"`` mirrors the raster's edge pixels (prediction: the network sees
    plausible context rather than a hard black border) and marks them valid; ``"nodata"``
    leaves the read as it is (the invalid padding is already marked in ``valid``).
    """
    if mode == "nodata":
        return data, valid
    if mode != "reflect":
        raise ValueError(f"unknown padding mode {mode!r}")
    row0, col0 = int(window.row_off), int(window.col_off)
    h, w = data.shape[-2:]
    top, left = max(0, -row0), max(0, -col0)
    bottom, right = max(0, row0 + h - height), max(0, col0 + w - width)
    if not (top or left or bottom or right):
        return data, valid
    inner = data[..., top : h - bottom, left : w - right]
    inner_valid = valid[top : h - bottom, left : w - right]
    pads = ((top, bottom), (left, right))
    # numpy's reflect cannot pad by more than the array's size minus one; "symmetric" tiling
    # repeated through np.pad(mode="reflect") covers tiny rasters too.
    padded = _reflect(inner, pads)
    padded_valid = _reflect(inner_valid, pads)
    return padded, padded_valid


def _reflect(array: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    lead = ((0, 0),) * (array.ndim - 2)
    mode = "reflect" if min(array.shape[-2:]) > 1 else "edge"
    out = array
    (top, bottom), (left, right) = pads
    # pad in steps no larger than what reflect allows, for rasters smaller than the padding
    while top or bottom or left or right:
        h, w = out.shape[-2:]
        step = (
            (min(top, max(h - 1, 0)), min(bottom, max(h - 1, 0))),
            (min(left, max(w - 1, 0)), min(right, max(w - 1, 0))),
        )
        if mode == "edge" or step == ((0, 0), (0, 0)):
            step = ((top, bottom), (left, right))
            out = np.pad(out, lead + step, mode="edge")
        else:
            out = np.pad(out, lead + step, mode=mode)
        top, bottom = top - step[0][0], bottom - step[0][1]
        left, right = left - step[1][0], right - step[1][1]
    return out
