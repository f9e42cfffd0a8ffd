"""Blending windows and the accumulator that merges overlapping tile outputs.

A tile's outermost ``overlap // 4`` pixels get weight 0: there the network saw its own padding
instead of real neighbours, and a neighbouring tile covers them with real context. Inside,
``hann`` (default) and ``linear`` windows cross-fade neighbouring tiles; ``none`` gives each
pixel to the tile whose centre is nearest (hard seams, for comparison). The accumulator holds
weighted sums for one tile row of one column chunk; rows that no later tile touches are handed
on as (sums, weights, validity) for the writer to divide.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from geotranslate.choices import BLEND_MODES
from geotranslate.errors import OptionError
from geotranslate.predict.grid import Strip
from geotranslate.predict.queues import put


def blend_weights(tile: int, overlap: int, mode: str = "hann") -> np.ndarray:
    """(tile, tile) float32 weights of one tile's output in the weighted mean of overlaps.

    The outer ``overlap // 4`` pixels get 0 (padding artefacts of the network); ``hann`` and
    ``linear`` are strictly positive inside; ``none`` is 1 on the central part that is nearest
    to this tile's centre and 0 elsewhere, so neighbouring tiles meet in a hard seam.
    """
    if mode not in BLEND_MODES:
        raise OptionError(f"blend {mode!r}: choose from {', '.join(BLEND_MODES)}")
    w = np.zeros(tile, dtype=np.float64)
    if mode == "none":
        w[overlap // 2 : tile - (overlap - overlap // 2)] = 1.0
    else:
        dead = overlap // 4
        support = tile - 2 * dead
        window = np.hanning(support + 2) if mode == "hann" else np.bartlett(support + 2)
        w[dead : tile - dead] = window[1:-1]
    return np.outer(w, w).astype(np.float32)


class Blender:
    """Weighted sums of tile outputs over the current tile row of the current column chunk."""

    def __init__(self, row_origin: int, tile, bands, weights, writer_q, stop):
        self.row_origin = row_origin  # grid row of the output file's first row
        self.tile, self.bands, self.weights = tile, bands, weights
        self.writer_q, self.stop = writer_q, stop
        self.strip: Strip | None = None

    def consume(self, pending: list[tuple], outputs: np.ndarray | None) -> None:
        for item in pending:
            if item[0] == "strip":
                self._start(item[1], item[2], item[3])
            else:
                _, strip, c, k = item
                self._add(c, outputs[k])

    def _start(self, strip: Strip, valid: np.ndarray, c_lo: int) -> None:
        if self.strip is not None:
            self._finish(self.strip)
        a, b = strip.chunk_cols
        if self.strip is None or self.strip.chunk != strip.chunk:
            self.acc = np.zeros((self.bands, self.tile, b - a), dtype=np.float32)
            self.wsum = np.zeros((self.tile, b - a), dtype=np.float32)
            self.valid = np.zeros((self.tile, b - a), dtype=bool)
        else:
            shift = strip.row - self.strip.row
            for arr in (self.acc, self.wsum):  # valid is replaced just below
                arr[..., : self.tile - shift, :] = arr[..., shift:, :]  # numpy handles overlap
                arr[..., self.tile - shift :, :] = 0
        self.valid[:] = valid[:, a - c_lo : b - c_lo]
        self.strip = strip

    def _add(self, c: int, y: np.ndarray) -> None:
        a, b = self.strip.chunk_cols
        lo, hi = max(c, a), min(c + self.tile, b)
        w = self.weights[:, lo - c : hi - c]
        if getattr(self, "_product", None) is None:  # one buffer, not one array per tile
            self._product = np.empty((self.bands, self.tile, self.tile), dtype=np.float32)
        product = np.multiply(y[:, :, lo - c : hi - c], w, out=self._product[:, :, : hi - lo])
        self.acc[:, :, lo - a : hi - a] += product
        self.wsum[:, lo - a : hi - a] += w

    def _finish(self, strip: Strip) -> None:
        start, stop = strip.finish
        if stop > start:
            a, b = strip.chunk_cols
            rows = slice(start - strip.row, stop - strip.row)
            item = (
                Window(a, start - self.row_origin, b - a, stop - start),
                self.acc[:, rows].copy(),
                self.wsum[rows].copy(),
                self.valid[rows].copy(),
            )
            put(self.writer_q, item, self.stop)

    def close(self) -> None:
        if self.strip is not None:
            self._finish(self.strip)
