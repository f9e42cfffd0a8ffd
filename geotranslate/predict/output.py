"""The output GeoTIFF: profile, nodata rules, the COG conversion and the default name.

Nodata: the target domain's nodata; when the domain has none, 0 for unsigned integers, the
dtype's minimum for signed integers and NaN for floats. Valid outputs that would equal the
nodata value are moved one step away from it (e.g. 0 -> 1 for uint16 with nodata 0), so no
real pixel is lost as nodata.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.control import GroundControlPoint
from rasterio.errors import RasterioError
from rasterio.rpc import RPC
from rasterio.windows import Window

from geotranslate.errors import GeotranslateError, first_line
from geotranslate.predict.grid import OUT_BLOCK
from geotranslate.raster.io import GDAL_CACHE_BYTES
from geotranslate.raster.sources import RasterSource, parse_source


def output_nodata(dtype: str, declared: float | None) -> float:
    """The target domain's nodata, else 0 (unsigned), the minimum (signed) or NaN (floats)."""
    if declared is not None:
        return float(declared)
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.unsignedinteger):
        return 0.0
    if np.issubdtype(np_dtype, np.integer):
        return float(np.iinfo(np_dtype).min)
    return float("nan")


def apply_nodata(values: np.ndarray, valid: np.ndarray, nodata: float) -> np.ndarray:
    """Invalid pixels -> nodata; valid pixels that equal nodata are moved one step off it."""
    all_valid = bool(valid.all())
    if not math.isnan(nodata):
        fill = np.asarray(nodata).astype(values.dtype)
        clash = values == fill
        if not all_valid:
            clash &= valid
        if clash.any():
            if np.issubdtype(values.dtype, np.integer):
                step = -1 if fill == np.iinfo(values.dtype).max else 1
                values[clash] = fill + step
            else:
                values[clash] = np.nextafter(fill, np.asarray(np.inf, dtype=values.dtype))
    if not all_valid:  # copyto with a broadcast mask: several times faster than values[:, ~v]
        np.copyto(values, np.asarray(nodata).astype(values.dtype), where=~valid[None])
    return values


def georeference(ds, region: tuple[int, int, int, int]) -> dict:
    """The input's georeference for the output region: CRS + transform, or its GCPs / RPCs.

    A raster referenced only by GCPs or RPCs keeps them (shifted to the region), so it can
    still be warped or orthorectified afterwards.
    """
    row0, col0, height, width = region
    gcps, gcp_crs = ds.gcps
    if ds.crs is None and gcps:
        shifted = [
            GroundControlPoint(row=g.row - row0, col=g.col - col0, x=g.x, y=g.y, z=g.z,
                               id=g.id, info=g.info)
            for g in gcps
        ]
        return {"gcps": shifted, "crs": gcp_crs}
    if ds.crs is None and ds.rpcs is not None:
        rpcs = ds.rpcs.to_dict()
        rpcs["line_off"] -= row0
        rpcs["samp_off"] -= col0
        return {"rpcs": RPC(**rpcs)}
    return {"crs": ds.crs, "transform": ds.window_transform(Window(col0, row0, width, height))}


def output_profile(ds, region, target, nodata: float, cog: bool) -> dict:
    """GeoTIFF creation options: tiled, ZSTD with a predictor, BIGTIFF when needed."""
    _, _, height, width = region
    dtype = target.dtype
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": target.band_count,
        "dtype": dtype,
        **georeference(ds, region),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": OUT_BLOCK,
        "blockysize": OUT_BLOCK,
        # a COG is re-encoded at the end: keep the intermediate cheap to write
        "compress": "zstd",
        "zstd_level": 1 if cog else 3,
        "predictor": 3 if floating else 2,
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }


def to_cog(src: Path, dst: Path, profile: dict) -> None:
    """Re-encode the finished GeoTIFF as a Cloud-Optimized GeoTIFF with overviews."""
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            rasterio.shutil.copy(
                str(src), str(dst), driver="COG", compress="ZSTD", level=9,
                predictor="YES", blocksize=OUT_BLOCK, overviews="AUTO",
                overview_resampling="AVERAGE", bigtiff="IF_SAFER",
            )
    except RasterioError as e:
        raise GeotranslateError(f"{dst}: writing the COG failed ({first_line(e)})") from None


def default_output(
    in_path: str | os.PathLike | RasterSource, rank: int | None = None, world: int = 1
) -> Path:
    """``<IN stem>_translated.tif`` beside the input, or in the working directory for a URL or
    band files (``.partRofN`` added for a rank)."""
    source = in_path if isinstance(in_path, RasterSource) else parse_source(in_path)
    part = f".part{rank}of{world}" if rank is not None and world > 1 else ""
    name = f"{source.stem}_translated{part}.tif"
    return Path(source.name).with_name(name) if source.local else Path(name)
