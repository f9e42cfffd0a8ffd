"""Vector files that select chips (``--aoi``, ``--exclude``) and chip footprints as polygons.

A user's AOI may be in any format geopandas reads and in any CRS; chips are tested in their
own CRS, so the polygons are reprojected once per chip CRS and kept as a prepared geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from geotranslate.errors import GeotranslateError, first_line


class VectorFilter:
    """The union of a vector file's geometries, reprojected on demand to each chip CRS."""

    def __init__(self, path: str | os.PathLike, option: str = "--aoi"):
        self.path = Path(path)
        self.option = option
        self.frame = read_vector(self.path, option)
        self._by_crs: dict[str, BaseGeometry] = {}

    def geometry_in(self, crs: CRS | None) -> BaseGeometry:
        """The union of the file's geometries in ``crs`` (prepared for fast intersects tests)."""
        if crs is None:
            raise GeotranslateError(
                f"{self.path}: {self.option} needs rasters with a CRS (the raster has none)"
            )
        key = crs.to_wkt()
        if key not in self._by_crs:
            try:
                reprojected = self.frame.to_crs(crs)
            except Exception as e:  # pyproj errors have many types
                raise GeotranslateError(
                    f"{self.path}: cannot reproject {self.option} to {crs.to_string()} ({e})"
                ) from None
            union = shapely.union_all(reprojected.geometry.values)
            shapely.prepare(union)
            self._by_crs[key] = union
        return self._by_crs[key]

    def intersects(self, footprint: Polygon, crs: CRS | None) -> bool:
        return bool(self.geometry_in(crs).intersects(footprint))


def read_vector(path: Path, option: str) -> gpd.GeoDataFrame:
    """Read a vector file with geopandas, refusing what cannot select chips (one-line errors)."""
    if not path.exists():
        raise GeotranslateError(f"{path}: no such file ({option})")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as e:  # pyogrio raises DataSourceError, DataLayerError, …
        raise GeotranslateError(f"{path}: cannot read as a vector file ({first_line(e)})") \
            from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if len(frame) == 0:
        raise GeotranslateError(f"{path}: {option} file holds no geometries")
    kinds = sorted(set(frame.geometry.geom_type) - {"Polygon", "MultiPolygon"})
    if kinds:
        # a point or a line covers no area: it would select (or exclude) almost nothing
        raise GeotranslateError(
            f"{path}: {option} needs polygons, but the file holds {', '.join(kinds)} "
            "geometries (buffer them into polygons first, e.g. with geopandas .buffer())"
        )
    if frame.crs is None:
        raise GeotranslateError(f"{path}: {option} file has no CRS; assign one (ogr2ogr -a_srs)")
    return frame


def window_footprint(transform: Affine, window: Window) -> Polygon:
    """The ground polygon of a window (four corners, so rotated grids stay exact)."""
    col0, row0 = window.col_off, window.row_off
    col1, row1 = col0 + window.width, row0 + window.height
    corners = [
        transform @ (c, r) for c, r in ((col0, row0), (col1, row0), (col1, row1), (col0, row1))
    ]
    return Polygon(corners)
