"""Pairing a B raster with an A raster: footprint overlap, and reading B on A's pixel grid.

Paired chips must cover exactly the same ground with the same grid, so B is resampled onto
A's grid on the fly with a rasterio ``WarpedVRT`` (never materialised: windows are warped as
they are read), unless B already lies on A's pixel grid, when it is read directly. Validity
of warped pixels comes from an alpha band the VRT carries (the source's own alpha, or one
added by the warper), because the area outside B's footprint has no nodata value to mark it
when B declares none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geotranslate.errors import InputError, OptionError, first_line
from geotranslate.raster.io import read_window
from geotranslate.raster.opening import alpha_index
from geotranslate.raster.windows import Grid, grid_offset

RESAMPLING_NAMES = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")


def _bounds_area(bounds: Sequence[float]) -> float:
    left, bottom, right, top = bounds
    return max(0.0, right - left) * max(0.0, top - bottom)


def overlap_fraction(a_ds: rasterio.DatasetReader, b_ds: rasterio.DatasetReader) -> float:
    """Fraction of A's bounding box covered by B's bounding box, compared in A's CRS."""
    a_left, a_bottom, a_right, a_top = a_ds.bounds
    a_box = (min(a_left, a_right), min(a_bottom, a_top), max(a_left, a_right), max(a_bottom, a_top))
    try:
        b_box = transform_bounds(b_ds.crs, a_ds.crs, *b_ds.bounds, densify_pts=21)
    except Exception as e:  # pyproj/rasterio errors of several types
        raise InputError(
            f"{b_ds.name}: cannot transform its bounds to the CRS of {a_ds.name} ({e})"
        ) from None
    b_box = (
        min(b_box[0], b_box[2]),
        min(b_box[1], b_box[3]),
        max(b_box[0], b_box[2]),
        max(b_box[1], b_box[3]),
    )
    inter = (
        max(a_box[0], b_box[0]),
        max(a_box[1], b_box[1]),
        min(a_box[2], b_box[2]),
        min(a_box[3], b_box[3]),
    )
    area = _bounds_area(a_box)
    return _bounds_area(inter) / area if area > 0 else 0.0


def pair_sources(
    a_datasets: Sequence[rasterio.DatasetReader], b_datasets: Sequence[rasterio.DatasetReader]
) -> list[list[int]]:
    """For each A raster, the indexes of the B rasters overlapping it, most coverage first.

    Rasters without a CRS (``--allow-no-crs``) cannot be compared on the ground: they are
    paired by position in the lists, pixel (0, 0) on pixel (0, 0).
    """
    no_crs_a = [ds.crs is None for ds in a_datasets]
    no_crs_b = [ds.crs is None for ds in b_datasets]
    if any(no_crs_a) or any(no_crs_b):
        if not (all(no_crs_a) and all(no_crs_b)):
            raise InputError(
                "cannot pair rasters with a CRS and rasters without one; give all or none a CRS"
            )
        if len(a_datasets) != len(b_datasets):
            raise InputError(
                f"rasters without a CRS are paired by position: got {len(a_datasets)} A and "
                f"{len(b_datasets)} B rasters"
            )
        return [[i] for i in range(len(a_datasets))]
    pairs = []
    for a_ds in a_datasets:
        cover = [(overlap_fraction(a_ds, b_ds), j) for j, b_ds in enumerate(b_datasets)]
        overlapping = [j for frac, j in sorted(cover, key=lambda t: -t[0]) if frac > 0]
        if not overlapping:
            names = ", ".join(str(ds.name) for ds in b_datasets)
            raise InputError(f"{a_ds.name}: does not overlap any B raster ({names})")
        pairs.append(overlapping)
    return pairs


class GridReader:
    """Reads B's bands on A's grid, mosaicking several B rasters (first valid pixel wins).

    The B rasters are ordered by how much of A they cover; a pixel invalid (or outside) in
    the first is taken from the next that has it. A B raster on A's own pixel grid is read
    directly; any other is warped.
    """

    def __init__(
        self,
        b_datasets: Sequence[rasterio.DatasetReader],
        bands: Sequence[int],
        grid: Grid,
        resampling: str = "bilinear",
    ):
        if resampling not in RESAMPLING_NAMES:
            raise OptionError(
                f"resampling {resampling!r} unknown; choose from {', '.join(RESAMPLING_NAMES)}"
            )
        self.bands = list(bands)
        self.sources = list(b_datasets)
        self._vrts: list[WarpedVRT] = []
        # per source: (dataset, row offset, col offset, direct) - a direct read of a raster
        # on the grid, or a VRT warping it onto the grid (offset 0)
        self._readers: list[tuple[rasterio.DatasetReader | WarpedVRT, int, int, bool]] = []
        for b_ds in self.sources:
            # rasters without a CRS are paired pixel for pixel
            offset = (0, 0) if grid.crs is None else grid_offset(b_ds, grid)
            if offset is not None:
                self._readers.append((b_ds, *offset, True))
                continue
            kwargs = dict(
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling[resampling],
            )
            if b_ds.nodata is not None:
                kwargs.update(src_nodata=b_ds.nodata, nodata=b_ds.nodata)
            if alpha_index(b_ds) is None:
                kwargs["add_alpha"] = True
            try:
                vrt = WarpedVRT(b_ds, **kwargs)
            except RasterioError as e:
                raise InputError(
                    f"{b_ds.name}: cannot warp onto the common grid ({first_line(e)})"
                ) from None
            self._vrts.append(vrt)
            self._readers.append((vrt, 0, 0, False))

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """B's selected bands and validity in ``window`` of the grid."""
        data = valid = None
        for source, row_off, col_off, direct in self._readers:
            # a VRT marks the pixels B does not cover by its nodata or its (added) alpha
            # band; a direct read marks those past B's edges invalid
            shifted = Window(window.col_off - col_off, window.row_off - row_off,
                             window.width, window.height)
            part, part_valid = read_window(source, shifted, self.bands, boundless=direct)
            if data is None:
                data, valid = part, part_valid
            else:
                fill = part_valid & ~valid
                data[:, fill] = part[:, fill]
                valid |= fill
            if valid.all():
                break
        return data, valid

    def close(self) -> None:
        for vrt in self._vrts:
            vrt.close()
        self._vrts, self._readers = [], []
