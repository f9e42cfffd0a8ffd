"""Write a GDAL VRT mosaic of rasters on one grid (what ``gdalbuildvrt`` does, without GDAL's
Python bindings): the joined parts of a split prediction, or a mosaic of many outputs.

The sources must share CRS, band count, dtype and pixel axes (no rotation, same orientation);
their pixel sizes may differ (a source is then scaled onto the first one's grid). Later sources
are drawn over earlier ones where they overlap; their nodata pixels let earlier ones show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import rasterio
from rasterio.errors import RasterioError

from geotranslate.errors import InputError, OptionError, StorageError, first_line
from geotranslate.files import atomic_path

GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
    "uint32": "UInt32", "int32": "Int32", "uint64": "UInt64", "int64": "Int64",
    "float32": "Float32", "float64": "Float64",
}


def _describe(path: Path) -> dict:
    try:
        with rasterio.open(path) as ds:
            return {"path": path, "crs": ds.crs, "transform": ds.transform, "width": ds.width,
                    "height": ds.height, "count": ds.count, "dtype": ds.dtypes[0],
                    "nodata": ds.nodata, "block": ds.block_shapes[0],
                    "descriptions": ds.descriptions, "colorinterp": ds.colorinterp,
                    "tags": ds.tags()}
    except RasterioError as e:
        raise StorageError(f"{path}: cannot read it for the VRT ({first_line(e)})") from None


def _fmt(value: float | None) -> str:
    return "nan" if value is not None and math.isnan(value) else repr(float(value))


def write_vrt(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *,
              tags: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``out`` (atomically), a VRT mosaic of ``sources``; returns its path."""
    out = Path(out)
    if not sources:
        raise OptionError(f"{out}: no rasters to join")
    infos = [_describe(Path(s)) for s in sources]
    first = infos[0]
    if first["crs"] is None or first["transform"].is_identity:
        raise InputError(f"{first['path']}: has no CRS and transform; a VRT mosaic "
                                "needs georeferenced rasters")
    t0 = first["transform"]
    if t0.b or t0.d:
        raise InputError(f"{first['path']}: has a rotated transform; a VRT mosaic "
                                "needs north-up (or south-up) rasters")
    boxes = []
    for info in infos:
        for what in ("count", "dtype"):
            if info[what] != first[what]:
                raise InputError(
                    f"{info['path']}: {what} {info[what]} differs from {first['path']}'s "
                    f"{first[what]}; a VRT mosaic needs the same")
        if info["crs"] != first["crs"]:
            raise InputError(
                f"{info['path']}: CRS {info['crs']} differs from {first['path']}'s "
                f"{first['crs']}; a VRT mosaic needs one CRS (warp the inputs first)")
        rel = ~t0 * info["transform"]  # the source's pixels in the first one's grid
        if rel.b or rel.d or rel.a <= 0 or rel.e <= 0:
            raise InputError(f"{info['path']}: its pixel axes differ from "
                                    f"{first['path']}'s; a VRT mosaic needs the same")
        boxes.append((rel.c, rel.f, rel.a * info["width"], rel.e * info["height"]))
    col0 = math.floor(min(b[0] for b in boxes) + 1e-6)
    row0 = math.floor(min(b[1] for b in boxes) + 1e-6)
    width = math.ceil(max(b[0] + b[2] for b in boxes) - 1e-6) - col0
    height = math.ceil(max(b[1] + b[3] for b in boxes) - 1e-6) - row0
    t = t0 * rasterio.Affine.translation(col0, row0)
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(first['crs'].to_wkt())}</SRS>",
             f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}"
             "</GeoTransform>"]
    if tags:
        lines.append("  <Metadata>")
        lines += [f"    <MDI key={quoteattr(k)}>{escape(str(v))}</MDI>" for k, v in tags.items()]
        lines.append("  </Metadata>")
    gdal_type = GDAL_TYPES[first["dtype"]]
    for band in range(1, first["count"] + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        if first["nodata"] is not None:
            lines.append(f"    <NoDataValue>{_fmt(first['nodata'])}</NoDataValue>")
        if first["descriptions"][band - 1]:
            lines.append(f"    <Description>{escape(first['descriptions'][band - 1])}"
                         "</Description>")
        lines.append(f"    <ColorInterp>{first['colorinterp'][band - 1].name.capitalize()}"
                     "</ColorInterp>")
        for info, (c, r, w, h) in zip(infos, boxes, strict=True):
            name = os.path.relpath(info["path"].resolve(), out.resolve().parent)
            by, bx = info["block"]
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>',
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SourceProperties RasterXSize="{info["width"]}" '
                f'RasterYSize="{info["height"]}" DataType="{gdal_type}" BlockXSize="{bx}" '
                f'BlockYSize="{by}"/>',
                f'      <SrcRect xOff="0" yOff="0" xSize="{info["width"]}" '
                f'ySize="{info["height"]}"/>',
                f'      <DstRect xOff="{c - col0!r}" yOff="{r - row0!r}" xSize="{w!r}" '
                f'ySize="{h!r}"/>',
            ]
            if info["nodata"] is not None:
                lines.append(f"      <NODATA>{_fmt(info['nodata'])}</NODATA>")
            lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out
