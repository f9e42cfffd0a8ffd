"""Raster mode's two inputs: PRED and REF opened, their bands picked, REF read on PRED's grid.

REF is read as it is when the grids are the same, shifted by whole pixels when neither raster
has a CRS, and warped onto PRED's grid otherwise. The compared part of PRED's grid is the
common window (the part REF covers), cut to the AOI's bounding window; the scored pixels are
those whose centres lie inside the AOI's polygons and outside the excluded ones. The window is
read in tiles with a margin of context, so memory stays bounded and SSIM windows see across
tile borders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geotranslate.errors import GeotranslateError, InputError, OptionError
from geotranslate.log import show_progress
from geotranslate.raster.io import open_raster, parse_bands, read_window
from geotranslate.raster.warp import GridReader
from geotranslate.raster.windows import Grid, own_extents, tile_offsets


class RasterPair:
    """PRED and REF, aligned on PRED's grid over the scored region; a context manager that
    closes both (and the warping reader).

    ``bands``/``bands_ref``: PRED's and REF's bands compared, in order (1-based; default:
    every band but alpha). ``aoi``/``exclude``: vector files (any CRS) restricting the scored
    pixels; ``aoi_where`` keeps only the AOI's features with those values.
    """

    def __init__(
        self,
        pred_path: str | os.PathLike,
        ref_path: str | os.PathLike,
        *,
        resampling: str = "bilinear",
        allow_no_crs: bool = False,
        bands: str | Sequence[int] | None = None,
        bands_ref: str | Sequence[int] | None = None,
        aoi: str | os.PathLike | None = None,
        exclude: str | os.PathLike | None = None,
        aoi_where: str | None = None,
    ):
        self.pred_path, self.ref_path = pred_path, ref_path
        self.resampling = resampling
        self.aoi, self.exclude, self.aoi_where = aoi, exclude, aoi_where
        self.pred = open_raster(pred_path, allow_no_crs=allow_no_crs)
        try:
            self.ref = open_raster(ref_path, allow_no_crs=allow_no_crs)
        except GeotranslateError:
            self.pred.close()
            raise
        self.warper = None
        try:
            self._align(bands, bands_ref)
        except BaseException:
            self.close()
            raise

    def _align(self, bands, bands_ref) -> None:
        pred, ref = self.pred, self.ref
        self.pred_bands, self.ref_bands = parse_bands(bands, pred), parse_bands(bands_ref, ref)
        if len(self.pred_bands) != len(self.ref_bands):
            hint = ("pick them with --bands / --bands-ref" if bands is None and bands_ref is None
                    else "give as many with --bands as with --bands-ref")
            raise InputError(
                f"{self.pred_path}: {len(self.pred_bands)} bands compared but {self.ref_path} "
                f"has {len(self.ref_bands)}: band counts must match ({hint})"
            )
        if (pred.crs is None) != (ref.crs is None):
            raise InputError(
                f"{self.pred_path if pred.crs is None else self.ref_path}: has no CRS while the "
                "other raster has one, so they cannot be aligned"
            )
        common = _common_window(pred, ref)
        self.region = _Region(pred, self.aoi, self.exclude, self.aoi_where)
        self.window = self.region.clip(common)
        self.read_reference, self.warper = _reference_reader(pred, ref, self.ref_bands,
                                                             self.resampling)

    @property
    def band_count(self) -> int:
        return len(self.pred_bands)

    @property
    def warped(self) -> bool:
        """Whether REF is warped onto PRED's grid."""
        return self.warper is not None

    def tiles(self, tile_size: int, margin: int, progress: bool | None = None) -> Iterator:
        """(PRED, REF, valid in both and scored, core slices) of each tile of the window;
        reads add ``margin`` pixels of context, the core is each pixel's one tile."""
        tiles = list(_tiles(self.window, tile_size, margin))
        if show_progress(progress):
            from tqdm import tqdm

            tiles = tqdm(tiles, desc="evaluate", unit="tile", leave=False)
        for read, core in tiles:
            p, p_valid = read_window(self.pred, read, self.pred_bands)
            r, r_valid = self.read_reference(read)
            yield p, r, p_valid & r_valid & self.region.inside(read), core

    def descriptions(self) -> list[str | None]:
        """Each compared band's description: PRED's, else REF's band of the same number."""
        return [self.pred.descriptions[b - 1] or self.ref.descriptions[b - 1]
                for b in self.pred_bands]

    def nothing_valid(self) -> GeotranslateError:
        return InputError(
            f"{self.pred_path} and {self.ref_path}: no pixel of the common area is valid in "
            "both (all nodata)"
        )

    def settings(self) -> dict:
        """The inputs and how they were aligned, as the report's settings hold them."""
        window = self.window
        return {
            "prediction": str(self.pred_path),
            "reference": str(self.ref_path),
            "bands": self.pred_bands,
            "bands_ref": self.ref_bands,
            "aoi": None if self.aoi is None else str(self.aoi),
            "aoi_where": self.aoi_where,
            "exclude": None if self.exclude is None else str(self.exclude),
            "grid": "prediction",
            "reference_warped": self.warped,
            "resampling": self.resampling if self.warped else None,
            "common_window": {
                "col_off": int(window.col_off), "row_off": int(window.row_off),
                "width": int(window.width), "height": int(window.height),
            },
            "crs": self.pred.crs.to_string() if self.pred.crs else None,
        }

    def close(self) -> None:
        if self.warper is not None:
            self.warper.close()
        self.pred.close()
        self.ref.close()

    def __enter__(self) -> RasterPair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_grid(a: rasterio.DatasetReader, b: rasterio.DatasetReader) -> bool:
    return (
        a.crs == b.crs
        and (a.width, a.height) == (b.width, b.height)
        and a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a)))
    )


def _reference_reader(pred, ref, bands: list[int], resampling: str):
    """(read(window) of REF's bands on PRED's grid, the warping reader or None if not warped)."""
    if _same_grid(pred, ref):
        return (lambda window: read_window(ref, window, bands)), None
    if pred.crs is None or ref.crs is None:
        shift = _pixel_shift(pred, ref)
        if shift is None:
            raise InputError(
                f"{ref.name}: cannot align with {pred.name} without a CRS on both "
                "(rasters without CRS must share pixel size and orientation, shifted by whole "
                "pixels at most)"
            )
        d_row, d_col = shift

        def read_shifted(window: Window):
            return read_window(ref, Window(window.col_off + d_col, window.row_off + d_row,
                                           window.width, window.height), bands)

        return read_shifted, None
    warper = GridReader([ref], bands, Grid(pred.crs, pred.transform, pred.width, pred.height),
                        resampling)
    return warper.read, warper


def _pixel_shift(pred, ref) -> tuple[int, int] | None:
    """(rows, cols) from a PRED pixel to the same pixel of REF, for grids that differ by a
    whole-pixel shift only (same pixel size and orientation); None otherwise."""
    p, r = pred.transform, ref.transform
    if not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
               for x, y in zip((p.a, p.b, p.d, p.e), (r.a, r.b, r.d, r.e), strict=True)):
        return None
    col, row = ~r * (p.c, p.f)  # PRED's origin in REF's pixels
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _common_window(pred, ref) -> Window:
    """Part of PRED's grid that REF covers; error when they do not overlap.

    Computed in PRED's pixel coordinates, so any axis orientation works: north-up maps, and
    the identity transform (south-up) of PNGs and GeoTIFFs without georeference.
    """
    r_left, r_bottom, r_right, r_top = ref.bounds
    if pred.crs is not None and ref.crs is not None and ref.crs != pred.crs:
        r_left, r_bottom, r_right, r_top = transform_bounds(ref.crs, pred.crs, *ref.bounds)
    inverse = ~pred.transform
    corners = [inverse * (x, y) for x in (r_left, r_right) for y in (r_bottom, r_top)]
    c0, c1 = min(c for c, _ in corners), max(c for c, _ in corners)
    r0, r1 = min(r for _, r in corners), max(r for _, r in corners)
    c0, r0 = max(0, math.floor(c0 + 1e-6)), max(0, math.floor(r0 + 1e-6))
    c1, r1 = min(pred.width, math.ceil(c1 - 1e-6)), min(pred.height, math.ceil(r1 - 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise InputError(f"{pred.name} and {ref.name}: the rasters do not overlap")
    return Window(c0, r0, c1 - c0, r1 - r0)


def _tiles(window: Window, tile: int, margin: int):
    """(read window, core slices within it) covering ``window``; reads add ``margin`` context."""
    c0, r0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    rows = tile_offsets(h, min(tile, h), min(tile, h))
    cols = tile_offsets(w, min(tile, w), min(tile, w))
    # the last tile is flush with the edge and overlaps its neighbour: count each pixel once
    row_ends, col_ends = own_extents(rows, h, min(tile, h)), own_extents(cols, w, min(tile, w))
    for row in rows:
        for col in cols:
            th, tw = row_ends[row] - row, col_ends[col] - col
            top, left = max(0, row - margin), max(0, col - margin)
            bottom, right = min(h, row + th + margin), min(w, col + tw + margin)
            read = Window(c0 + left, r0 + top, right - left, bottom - top)
            core = (slice(row - top, row - top + th), slice(col - left, col - left + tw))
            yield read, core


class _Region:
    """The scored part of PRED's grid: inside ``aoi``'s polygons (pixel centres) and outside
    ``exclude``'s, both reprojected to PRED's CRS; everything when neither is given."""

    def __init__(self, pred, aoi, exclude, aoi_where: str | None):
        from geotranslate.raster.vector import VectorFilter

        if aoi_where is not None and aoi is None:
            raise OptionError("--aoi-where needs --aoi (the file whose features it picks)")
        self.transform = pred.transform
        self.aoi = (VectorFilter(aoi, "--aoi", where=aoi_where).geometry_in(pred.crs)
                    if aoi is not None else None)
        self.exclude = (VectorFilter(exclude, "--exclude").geometry_in(pred.crs)
                        if exclude is not None else None)
        self.aoi_path = aoi
        parts = []
        if aoi is not None:
            parts.append(f"inside --aoi {aoi}" + (f" ({aoi_where})" if aoi_where else ""))
        if exclude is not None:
            parts.append(f"outside --exclude {exclude}")
        self.label = (", " + " and ".join(parts)) if parts else ""

    def clip(self, window: Window) -> Window:
        """``window`` cut to the pixels whose centres may lie in the AOI's bounding box."""
        if self.aoi is None:
            return window
        left, bottom, right, top = self.aoi.bounds
        inverse = ~self.transform
        corners = [inverse * (x, y) for x in (left, right) for y in (bottom, top)]
        # pixel i is in when its centre i + 0.5 is: i >= c0 - 0.5 and i <= c1 - 0.5
        c0 = max(int(window.col_off), math.ceil(min(c for c, _ in corners) - 0.5))
        r0 = max(int(window.row_off), math.ceil(min(r for _, r in corners) - 0.5))
        c1 = min(int(window.col_off + window.width),
                 math.floor(max(c for c, _ in corners) + 0.5))
        r1 = min(int(window.row_off + window.height),
                 math.floor(max(r for _, r in corners) + 0.5))
        if c1 <= c0 or r1 <= r0:
            raise InputError(
                f"{self.aoi_path}: --aoi does not overlap the area both rasters cover"
            )
        return Window(c0, r0, c1 - c0, r1 - r0)

    def inside(self, window: Window) -> np.ndarray | bool:
        """Which pixels of ``window`` are scored (True: all of them)."""
        if self.aoi is None and self.exclude is None:
            return True
        from rasterio.features import geometry_mask
        from rasterio.windows import transform as window_transform

        shape = (int(window.height), int(window.width))
        transform = window_transform(window, self.transform)
        keep = np.ones(shape, dtype=bool)
        if self.aoi is not None and not self.aoi.is_empty:
            keep &= geometry_mask([self.aoi], shape, transform, invert=True)
        if self.exclude is not None and not self.exclude.is_empty:
            keep &= geometry_mask([self.exclude], shape, transform)
        return keep
