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


#: ``--compress`` codecs; zstd and deflate take a level as ``zstd:9``, ``deflate:6``
COMPRESS_CODECS = ("zstd", "deflate", "lzw", "none")
#: zstd at level 3 (9 in a COG)
DEFAULT_COMPRESS = "zstd"
_LEVELS = {"zstd": (1, 22), "deflate": (1, 12)}


def parse_compress(compress: str) -> tuple[str, int | None]:
    """``zstd``, ``zstd:LEVEL``, ``deflate[:LEVEL]``, ``lzw`` or ``none`` -> (codec, level)."""
    codec, _, level = compress.lower().partition(":")
    if codec not in COMPRESS_CODECS or (level and codec not in _LEVELS):
        raise GeotranslateError(f"compress {compress!r}: choose from zstd[:1-22], "
                                "deflate[:1-12], lzw, none")
    if not level:
        return codec, None
    low, high = _LEVELS[codec]
    if not level.isdigit() or not low <= int(level) <= high:
        raise GeotranslateError(f"compress {compress!r}: the {codec} level is {low} to {high}")
    return codec, int(level)


def parse_threads(threads: int | str | None) -> str | None:
    """GDAL's NUM_THREADS for compression: None or 1 (none), a count, or ``all`` (ALL_CPUS)."""
    if threads is None or str(threads) == "1":
        return None
    if str(threads).lower() == "all":
        return "ALL_CPUS"
    if not str(threads).isdigit() or int(threads) < 1:
        raise GeotranslateError(f"compress threads {threads!r}: a count >= 1 or 'all'")
    return str(int(threads))


def compression_options(compress: str, floating: bool, cog: bool,
                        threads: int | str | None = None) -> dict:
    """GTiff creation options of ``compress`` (:func:`parse_compress`) for the written file:
    the codec, its level, a predictor (3 for floats, 2 for integers) and NUM_THREADS.

    The file a COG is re-encoded from is written with LZW: resume checkpoints reopen it in
    update mode, where GDAL keeps the codec but not its level (zstd falls back to level 9,
    which costs 6x level 1); LZW has no level to lose (2.6x zstd level 1's CPU, for all of
    the file instead of a part; measured in docs/benchmarks.md)."""
    codec, level = parse_compress(compress)
    options: dict = {}
    if codec != "none":
        options = {"compress": "lzw" if cog else codec, "predictor": 3 if floating else 2}
    if codec == "zstd" and not cog:
        options["zstd_level"] = level or 3
    elif codec == "deflate" and level and not cog:
        options["zlevel"] = level
    if (num_threads := parse_threads(threads)) is not None and codec != "none":
        options["num_threads"] = num_threads
    return options


def update_options(profile: dict) -> dict:
    """Open options for reopening a file written with ``profile`` in update mode: GDAL reads
    the codec and predictor back from the file, NUM_THREADS must be given again (the codec's
    level cannot: GDAL keeps none on update, and encodes at the codec's default level)."""
    return {"num_threads": profile["num_threads"]} if "num_threads" in profile else {}


def output_profile(ds, region, target, nodata: float, cog: bool,
                   compress: str = DEFAULT_COMPRESS, threads: int | str | None = None) -> dict:
    """GeoTIFF creation options: tiled, ``compress`` (ZSTD with a predictor by default), GDAL's
    NUM_THREADS from ``threads``, BIGTIFF when needed."""
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
        **compression_options(compress, floating, cog, threads),
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }


def to_cog(src: Path, dst: Path, profile: dict, compress: str = DEFAULT_COMPRESS) -> None:
    """Re-encode the finished GeoTIFF as a Cloud-Optimized GeoTIFF with overviews
    (``compress``: zstd at level 9 by default)."""
    codec, level = parse_compress(compress)
    options: dict = {"compress": codec.upper(), "predictor": "NO" if codec == "none" else "YES"}
    if codec == "zstd" or (codec == "deflate" and level):
        options["level"] = level or 9
    if "num_threads" in profile:
        options["num_threads"] = profile["num_threads"]
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            rasterio.shutil.copy(
                str(src), str(dst), driver="COG", **options, blocksize=OUT_BLOCK,
                overviews="AUTO", overview_resampling="AVERAGE", bigtiff="IF_SAFER",
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
