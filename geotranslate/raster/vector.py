"""Vector files that select chips (``--aoi``, ``--exclude``) and chip footprints as polygons.

A user's AOI may be in any format geopandas reads and in any CRS; chips are tested in their
own CRS, so the polygons are reprojected once per chip CRS and kept as a prepared geometry.
Every layer of the file counts (a chip folder's index.gpkg has one layer per CRS), and a
``where`` filter ("COLUMN=VALUE[,VALUE...]", e.g. ``split=val``) keeps only some features.
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

from geotranslate.errors import InputError, OptionError, StorageError, first_line


class VectorFilter:
    """The union of a vector file's geometries, reprojected on demand to each chip CRS."""

    def __init__(self, path: str | os.PathLike, option: str = "--aoi", where: str | None = None):
        self.path = Path(path)
        self.option = option
        self.frame = read_vector(self.path, option, where)
        self._by_crs: dict[str, BaseGeometry] = {}

    def geometry_in(self, crs: CRS | None) -> BaseGeometry:
        """The union of the file's geometries in ``crs`` (prepared for fast intersects tests)."""
        if crs is None:
            raise InputError(
                f"{self.path}: {self.option} needs rasters with a CRS (the raster has none)"
            )
        key = crs.to_wkt()
        if key not in self._by_crs:
            try:
                reprojected = self.frame.to_crs(crs)
            except Exception as e:  # pyproj errors have many types
                raise InputError(
                    f"{self.path}: cannot reproject {self.option} to {crs.to_string()} ({e})"
                ) from None
            union = shapely.union_all(reprojected.geometry.values)
            shapely.prepare(union)
            self._by_crs[key] = union
        return self._by_crs[key]

    def intersects(self, footprint: Polygon, crs: CRS | None) -> bool:
        return bool(self.geometry_in(crs).intersects(footprint))


def read_vector(path: Path, option: str, where: str | None = None) -> gpd.GeoDataFrame:
    """Read a vector file's layers with geopandas (in the first layer's CRS), keeping the
    features ``where`` selects; refuses what cannot select chips (one-line errors)."""
    import pandas as pd
    import pyogrio

    if not path.exists():
        raise StorageError(f"{path}: no such file ({option})")
    try:
        names = [name for name, _ in pyogrio.list_layers(path)]
        frames = [gpd.read_file(path, layer=name, engine="pyogrio") for name in names]
    except Exception as e:  # pyogrio raises DataSourceError, DataLayerError, …
        raise InputError(f"{path}: cannot read as a vector file ({first_line(e)})") \
            from None
    frames = [f for f in frames if "geometry" in f] or frames[:1]
    if len(frames) > 1 and all(f.crs is not None for f in frames):
        frames = [f.to_crs(frames[0].crs) for f in frames]
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs) \
        if len(frames) > 1 else frames[0]
    if where is not None:
        frame = _select(frame, where, path, option)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if len(frame) == 0:
        picked = f" matching {where}" if where is not None else ""
        raise InputError(f"{path}: {option} file holds no geometries{picked}")
    kinds = sorted(set(frame.geometry.geom_type) - {"Polygon", "MultiPolygon"})
    if kinds:
        # a point or a line covers no area: it would select (or exclude) almost nothing
        raise InputError(
            f"{path}: {option} needs polygons, but the file holds {', '.join(kinds)} "
            "geometries (buffer them into polygons first, e.g. with geopandas .buffer())"
        )
    if frame.crs is None:
        raise InputError(f"{path}: {option} file has no CRS; assign one (ogr2ogr -a_srs)")
    return frame


def _select(frame: gpd.GeoDataFrame, where: str, path: Path, option: str) -> gpd.GeoDataFrame:
    """The features whose COLUMN (as text) is one of the VALUEs of ``COLUMN=VALUE[,VALUE...]``."""
    column, sep, values = where.partition("=")
    column = column.strip()
    if not sep or not column or not values.strip():
        raise OptionError(f"{option}-where {where!r}: expected COLUMN=VALUE, e.g. split=val")
    if column not in frame.columns or column == frame.geometry.name:
        have = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
        raise OptionError(
            f"{path}: no column {column!r} for {option}-where (its columns: {have})"
        )
    wanted = {v.strip() for v in values.split(",")}
    return frame[frame[column].astype(str).isin(wanted)]


def window_footprint(transform: Affine, window: Window) -> Polygon:
    """The ground polygon of a window (four corners, so rotated grids stay exact)."""
    col0, row0 = window.col_off, window.row_off
    col1, row1 = col0 + window.width, row0 + window.height
    corners = [
        transform @ (c, r) for c, r in ((col0, row0), (col1, row0), (col1, row1), (col0, row1))
    ]
    return Polygon(corners)
