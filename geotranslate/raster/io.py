"""Open and validate rasters, read windows with their validity mask, check written GeoTIFFs.

Every reader in geotranslate (export, training data, prediction, evaluation, preview) goes
through :func:`open_raster` and :func:`read_window`, so a bad file gets the same one-line
error everywhere and "valid pixel" means the same thing everywhere: not nodata, not NaN,
not masked by an alpha band or an internal mask, in every selected band.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geotranslate.errors import (
    GeotranslateError,
    InputError,
    OptionError,
    StorageError,
    first_line,
)
from geotranslate.files import write_failed
from geotranslate.raster.opening import alpha_index, open_dataset, spectral_bands
from geotranslate.raster.sources import RasterSource, parse_source
from geotranslate.settings import split_list

#: GDAL block cache for export and prediction: small and fixed, because GDAL's default (5 %
#: of RAM) would make memory grow with the raster's size.
GDAL_CACHE_BYTES = 32 * 2**20

#: dtypes a network can be trained on; others are refused with a hint to convert.
REFUSED_DTYPES = {
    "complex64": "complex data: convert to amplitude or intensity (dB) first",
    "complex128": "complex data: convert to amplitude or intensity (dB) first",
    "complex_int16": "complex data: convert to amplitude or intensity (dB) first",
    "cint16": "complex data: convert to amplitude or intensity (dB) first",
    "cint32": "complex data: convert to amplitude or intensity (dB) first",
    "int64": "64-bit integers: convert to int32 or float32 (gdal_translate -ot Int32)",
    "uint64": "64-bit integers: convert to uint32 or float32 (gdal_translate -ot UInt32)",
}


@dataclass(frozen=True)
class RasterInfo:
    """What the rest of the toolkit needs to know about a raster, as plain values."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    band_descriptions: tuple[str | None, ...]
    spectral_bands: tuple[int, ...]
    pixel_size: tuple[float, float]


def open_raster(
    path: str | os.PathLike | RasterSource, *, allow_no_crs: bool = False
) -> rasterio.DatasetReader:
    """Open a raster for reading, refusing what the toolkit cannot use, with a one-line error.

    ``path`` is any source of :mod:`geotranslate.raster.sources`: a local file, a URL, a GDAL
    dataset name, ``stack:`` band files or a STAC item with asset keys; the dataset's ``name``
    is the source as given. Refused: a missing or unreadable source, complex and 64-bit
    integer dtypes, and (unless ``allow_no_crs``) a raster without a CRS or georeferenced
    only by GCPs or RPCs.
    """
    source = path if isinstance(path, RasterSource) else parse_source(path)
    ds = open_dataset(source)
    try:
        _validate(ds, source.name, allow_no_crs)
    except GeotranslateError:
        ds.close()
        raise
    return ds


def source_of(ds: rasterio.DatasetReader) -> RasterSource:
    """The source a dataset was opened from (a plain rasterio dataset: its file)."""
    source = getattr(ds, "source", None)
    return source if source is not None else parse_source(str(ds.name))


def _validate(ds: rasterio.DatasetReader, p: str, allow_no_crs: bool) -> None:
    dtype = ds.dtypes[0]
    if dtype in REFUSED_DTYPES:
        raise InputError(f"{p}: dtype {dtype} is not supported ({REFUSED_DTYPES[dtype]})")
    if len(set(ds.dtypes)) > 1:
        raise InputError(f"{p}: bands have different dtypes {sorted(set(ds.dtypes))}")
    if ds.crs is None and not allow_no_crs:
        gcps, _ = ds.gcps
        if gcps:
            raise InputError(
                f"{p}: georeferenced only by {len(gcps)} GCPs; warp it to a CRS first "
                "(gdalwarp) or pass --allow-no-crs to work in pixel space"
            )
        if ds.rpcs is not None:
            raise InputError(
                f"{p}: georeferenced only by RPCs; orthorectify it first (gdalwarp -rpc) "
                "or pass --allow-no-crs to work in pixel space"
            )
        raise InputError(f"{p}: has no CRS; pass --allow-no-crs to work in pixel space")


def parse_bands(spec: str | Sequence[int] | None, ds: rasterio.DatasetReader) -> list[int]:
    """Resolve a ``"1,2,3"`` band list (1-based) against a raster; default: its spectral bands."""
    available = spectral_bands(ds)
    if spec is None or spec == "" or (not isinstance(spec, str) and len(spec) == 0):
        return available
    if isinstance(spec, str):
        try:
            bands = list(split_list(spec, int))
        except ValueError:
            raise OptionError(f"bands {spec!r}: expected a list like 1,2,3") from None
    else:
        bands = [int(b) for b in spec]
    for b in bands:
        if b < 1 or b > ds.count:
            raise OptionError(
                f"{ds.name}: band {b} out of range (the raster has bands 1..{ds.count})"
            )
        if b not in available:
            raise OptionError(f"{ds.name}: band {b} is an alpha (mask) band, not data")
    return bands


def raster_info(ds: rasterio.DatasetReader, bands: Sequence[int] | None = None) -> RasterInfo:
    """Summarise a dataset (restricted to ``bands``) as plain values, e.g. for meta.json.

    A band without a description is described by its colour interpretation when that is
    red, green or blue (an RGB GeoTIFF), so chips and translations keep their colours.
    """
    bands = list(bands) if bands else spectral_bands(ds)
    colours = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
    t = ds.transform
    return RasterInfo(
        path=str(ds.name),
        width=ds.width,
        height=ds.height,
        count=len(bands),
        dtype=ds.dtypes[bands[0] - 1],
        crs=ds.crs.to_string() if ds.crs else None,
        transform=tuple(t)[:6],
        nodata=None if ds.nodata is None else float(ds.nodata),
        band_descriptions=tuple(ds.descriptions[b - 1] or colours.get(ds.colorinterp[b - 1])
                                for b in bands),
        spectral_bands=tuple(bands),
        pixel_size=(float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e))),
    )


#: band descriptions (case-insensitive) that name a colour interpretation; other bands are
#: undefined, so GIS software shows red, green and blue as such and nothing else as colour.
COLOUR_DESCRIPTIONS = {"red": ColorInterp.red, "green": ColorInterp.green,
                       "blue": ColorInterp.blue, "alpha": ColorInterp.alpha}


def colour_interpretation(descriptions: Sequence[str | None]) -> list[ColorInterp]:
    """The colour interpretation of each band of a GeoTIFF written with these descriptions:
    red/green/blue/alpha where a band is so described (the first band of each name), else
    undefined (which GeoTIFF reports as gray for the first band when it is not red)."""
    out, seen = [], set()
    for d in descriptions:
        colour = COLOUR_DESCRIPTIONS.get((d or "").strip().lower())
        out.append(colour if colour is not None and colour not in seen
                   else ColorInterp.undefined)
        seen.add(colour)
    return out


def valid_from_data(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Validity of each pixel of (bands, rows, cols) data: not nodata, finite, in every band."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            pass  # NaN is caught by the finiteness test below
        else:
            valid &= ~(data == np.asarray(nodata, dtype=data.dtype)).any(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return valid


def _needs_gdal_mask(ds: rasterio.DatasetReader, bands: Sequence[int]) -> bool:
    """True when validity comes from an alpha band or an internal mask, not from values alone."""
    for b in bands:
        flags = ds.mask_flag_enums[b - 1]
        if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
            return True
        if MaskFlags.all_valid not in flags and MaskFlags.nodata not in flags:
            return True
    return False


def read_window(
    ds: rasterio.DatasetReader,
    window: Window,
    bands: Sequence[int],
    *,
    boundless: bool = False,
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` in ``window`` and the pixels' validity, as ((C, H, W) data, (H, W) bool).

    With ``boundless``, pixels outside the raster read as invalid. ``out_shape`` (rows, cols)
    reads the window decimated (nearest; GDAL uses overviews when present), for previews.
    Read failures (a damaged file, a broken network read) become a one-line
    :class:`GeotranslateError`.
    """
    bands = list(bands)
    if boundless:
        if out_shape is not None:
            raise ValueError("out_shape and boundless cannot be combined")
        return _read_boundless(ds, window, bands)
    shaped = {} if out_shape is None else {"out_shape": (len(bands), *out_shape)}
    try:
        data = ds.read(bands, window=window, masked=False, **shaped)
        valid = valid_from_data(data, ds.nodata)
        if _needs_gdal_mask(ds, bands):
            masks = ds.read_masks(bands, window=window, **shaped)
            valid &= (masks > 0).all(axis=0)
        else:
            # GDAL exposes an alpha band as a mask only for gray+alpha and RGBA layouts
            alpha = alpha_index(ds)
            if alpha is not None:
                alpha_shape = {} if out_shape is None else {"out_shape": (1, *out_shape)}
                a = ds.read([alpha], window=window, masked=False, **alpha_shape)
                valid &= a[0] > 0
    except RasterioError as e:
        raise StorageError(
            f"{ds.name}: read failed at rows {int(window.row_off)}..."
            f"{int(window.row_off + window.height)}, cols {int(window.col_off)}..."
            f"{int(window.col_off + window.width)} ({first_line(e.__cause__ or e)})"
        ) from None
    return data, valid


def _read_boundless(
    ds: rasterio.DatasetReader, window: Window, bands: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """A window that may reach outside the raster: the part inside is read, the rest is invalid
    (and nodata, or 0). rasterio's own boundless read builds a VRT for every call instead."""
    row0, col0 = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    r_lo, r_hi = max(row0, 0), min(row0 + height, ds.height)
    c_lo, c_hi = max(col0, 0), min(col0 + width, ds.width)
    if (r_hi - r_lo, c_hi - c_lo) == (height, width):  # all inside: a plain read
        return read_window(ds, window, bands)
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    data = np.full((len(bands), height, width), _fill_value(ds.nodata, dtype), dtype=dtype)
    valid = np.zeros((height, width), dtype=bool)
    if r_lo < r_hi and c_lo < c_hi:
        inside = (slice(r_lo - row0, r_hi - row0), slice(c_lo - col0, c_hi - col0))
        data[:, inside[0], inside[1]], valid[inside] = read_window(
            ds, Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo), bands
        )
    return data, valid


def _fill_value(nodata: float | None, dtype: np.dtype) -> float:
    """``nodata`` where the dtype can hold it (odd rasters declare -9999 on uint8), else 0."""
    if nodata is None:
        return 0
    if np.issubdtype(dtype, np.floating):
        return nodata
    info = np.iinfo(dtype)
    return nodata if float(nodata).is_integer() and info.min <= nodata <= info.max else 0


def verify_geotiff(path: str | os.PathLike, label: str | os.PathLike | None = None) -> None:
    """Refuse a GeoTIFF that GDAL left incomplete, by decoding every block of every level.

    When the last flush at close fails (a full disk, a quota), libtiff only prints to stderr
    and rasterio closes without raising: the file can hold a truncated block, or a stale one
    that no longer decodes, and would be renamed into place as a result. Decoding the file
    back (from the page cache) costs about 0.6 s for 8192² × 4 bands on 2 cores, small beside
    the inference that wrote it. ``label`` names the file in errors (the final name of a
    temporary file). Sparse files (blocks never written) are refused too.
    """
    path = Path(path)
    label = label or path
    size = path.stat().st_size
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            with rasterio.open(path) as ds:
                levels = len(ds.overviews(1)) if ds.count else 0
            for level in [None, *range(levels)]:
                with rasterio.open(path, overview_level=level, num_threads="ALL_CPUS") as ds:
                    _verify_blocks(ds, size, level, label)
    except RasterioError as e:
        # rasterio's own message ("Read failed. See previous exception") is in its cause
        raise write_failed(label, f"incomplete: {first_line(e.__cause__ or e)}") from None


def _verify_blocks(ds, size: int, level: int | None, label) -> None:
    where = "" if level is None else f" of overview {level + 1}"
    separate = ds.profile.get("interleave") == "band" and ds.count > 1
    block_h, block_w = ds.block_shapes[0]
    for bidx in range(1, ds.count + 1) if separate else [1]:
        for y in range(-(-ds.height // block_h)):
            for x in range(-(-ds.width // block_w)):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=bidx)
                length = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=bidx)
                if offset is None or length is None or int(offset) + int(length) > size:
                    raise write_failed(
                        label, f"incomplete: block {x},{y}{where} of band {bidx} is missing "
                        "or truncated"
                    )
    # a block inside the file can still be stale or half-overwritten: decode them all,
    # a strip of blocks at a time in columns of about 2048 px (bounded memory)
    chunk = max(block_w, 2048 // block_w * block_w)
    for row in range(0, ds.height, block_h):
        for col in range(0, ds.width, chunk):
            window = Window(col, row, min(chunk, ds.width - col), min(block_h, ds.height - row))
            ds.read(window=window)
