"""Raster sources: the names a user may give for a raster, and what GDAL opens for each.

A source is one of

- a local file (``scene.tif``, ``mosaic.vrt``);
- a GDAL dataset name: ``/vsicurl/https://…``, ``/vsis3/bucket/key.tif``, ``/vsizip/a.zip/b.tif``;
- a URL: ``http(s)://…`` (read as ``/vsicurl/``, windowed reads fetch byte ranges) and
  ``s3://bucket/key`` (read as ``/vsis3/``, with the usual AWS environment variables);
- a scene as band files: ``stack:B02.tif,B03.tif,B04.tif`` (each file any of the above),
  stacked in that order on the finest file's grid, coarser bands resampled bilinearly, as an
  in-memory VRT (nothing written);
- a STAC item and asset keys: ``item.json:B04,B03,B02`` (a file or a URL), the same as a
  ``stack:`` of those assets' hrefs, each band described by its key;
- rasters of several sensors fused into one domain: ``fuse:s1.tif+s2.tif`` (each part any of
  the above but ``fuse:``), the bands of every part in that order on the first part's grid,
  as float32 with NaN as nodata; a part on another grid (resolution, CRS) is warped onto it
  bilinearly as B is onto A's (raster/warp.py), keeping its own nodata (an in-memory VRT).

:func:`parse_source` turns the string into a :class:`RasterSource`; ``open_raster`` (io.py)
opens it. Errors are one line, naming the source as the user wrote it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from xml.sax.saxutils import escape

from geotranslate.errors import InputError, OptionError, StorageError, first_line
from geotranslate.raster.opening import open_dataset, spectral_bands
from geotranslate.raster.windows import Grid, grid_offset

STACK_PREFIX = "stack:"
#: ``fuse:s1.tif+s2.tif`` — several rasters (any dtype, nodata, resolution, CRS) as one domain
FUSE_PREFIX = "fuse:"
FUSE_SEPARATOR = "+"
#: resampling of fused rasters onto the first one's grid (as B onto A's by default)
FUSE_RESAMPLING = "bilinear"
#: ``item.json:B04,B03`` — a STAC item (file or URL) followed by asset keys
STAC_PATTERN = re.compile(r"^(?P<item>.+\.json):(?P<keys>[^/:]+)$", re.IGNORECASE)
#: URL schemes and the GDAL virtual file system that reads them
URL_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}
#: resampling of band files coarser than the finest one, onto its grid
STACK_RESAMPLING = "bilinear"


@dataclass(frozen=True)
class RasterSource:
    """A raster as named by the user (``name``) and as opened by GDAL (``gdal_name``)."""

    name: str
    gdal_name: str  # a path, a /vsi… name, or a VRT document
    stem: str  # for chip names and default output names (made safe: :func:`safe_name`)
    local: bool  # a plain file on this machine
    #: the files on this machine it reads: the file itself, a /vsizip/ archive, the band
    #: files of a ``stack:``, a STAC item and its local assets (what no output may replace)
    files: tuple[str, ...] = ()
    #: the datasets it reads over the network (GDAL names: /vsicurl/…, /vsis3/…)
    remote: tuple[str, ...] = ()
    #: a ``fuse:`` source: what its bands come from, in order (:func:`composition_entry`)
    composition: tuple[dict, ...] = ()
    recorded: str | None = None  # how meta.json records it, when not the name

    def record(self) -> str:
        """How meta.json records the source: a local file's absolute path, else the name."""
        if self.recorded is not None:
            return self.recorded
        return str(Path(self.name).resolve()) if self.local else self.name


def parse_source(source: str | os.PathLike) -> RasterSource:
    """Interpret a raster name (see the module docstring); nothing is opened except STAC items
    and the band files of a ``stack:``, whose grids the stack needs."""
    if isinstance(source, os.PathLike):
        return _local(os.fspath(source))
    text = str(source)
    if text.startswith(STACK_PREFIX):
        parts = [p for p in text[len(STACK_PREFIX):].split(",") if p]
        if not parts:
            raise OptionError(f"{text}: no band files after {STACK_PREFIX}")
        return _stack(text, [single_source(p) for p in parts], None)
    if text.startswith(FUSE_PREFIX):
        return _fuse(text)
    stac = STAC_PATTERN.match(text)
    if stac:
        return _stac_cached(text, stac["item"], tuple(k for k in stac["keys"].split(",") if k))
    return single_source(text)


def input_files(inputs: Sequence[str | os.PathLike | RasterSource]) -> list[Path]:
    """The files on this machine that ``inputs`` read, for the "no output over an input" check
    (:func:`geotranslate.files.check_not_input`): a plain path is itself; a source is expanded
    once into its files (the band files of a ``stack:``, a STAC item and its local assets, the
    archive of a ``/vsizip/`` name); remote ones add none."""
    files: list[Path] = []
    for item in inputs:
        if isinstance(item, os.PathLike):
            files.append(Path(item))
            continue
        source = item if isinstance(item, RasterSource) else parse_source(item)
        files += [Path(f) for f in source.files]
    return files


def single_source(text: str) -> RasterSource:
    """A source that is one dataset: a local path, a URL or a GDAL dataset name."""
    scheme = urlparse(text).scheme.lower()
    if scheme in URL_SCHEMES:
        rest = text.split("://", 1)[1]
        vsi = URL_SCHEMES[scheme] + (text if scheme.startswith("http") else rest)
        return RasterSource(text, vsi, _stem_of(urlparse(text).path), local=False,
                            remote=(vsi,))
    if scheme == "file":  # file:///path (STAC hrefs)
        return _local(urlparse(text).path)
    if text.startswith("/vsi"):
        files = archive_files(text)
        return RasterSource(text, text, _stem_of(text), local=False, files=files,
                            remote=() if files else (text,))
    return _local(text)


#: GDAL virtual file systems that read a file of this machine (an archive, a compressed file)
_VSI_ARCHIVES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")


def archive_files(gdal_name: str) -> tuple[str, ...]:
    """The local file a ``/vsizip/``-like name reads (``/vsizip/a.zip/b.tif`` -> ``a.zip``,
    ``/vsizip//abs/a.zip/b.tif`` -> ``/abs/a.zip``); none for remote ones (``/vsicurl/``)."""
    rest = gdal_name
    while prefix := next((p for p in _VSI_ARCHIVES if rest.startswith(p)), None):
        rest = rest[len(prefix):]  # chains: /vsitar//vsigzip/…
    if rest == gdal_name or rest.startswith("/vsi"):
        return ()
    if rest.startswith("{"):  # /vsizip/{/path/a.zip}/b.tif
        rest = rest[1:].split("}", 1)[0]
    path = Path(rest)
    for candidate in [path, *path.parents]:
        if candidate.is_file():
            return (str(candidate),)
    return ()


def _local(text: str) -> RasterSource:
    return RasterSource(text, text, safe_name(Path(text).stem), local=True, files=(text,))


def _stem_of(path: str) -> str:
    name = PurePosixPath(path.rstrip("/")).name
    return safe_name(name.rsplit(".", 1)[0] if "." in name else name)


#: characters that must not reach a file name: path separators and control characters
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def safe_name(text: str, fallback: str = "raster") -> str:
    """A name from external metadata (a STAC item id, a band description, a file stem) made
    safe to use as part of a file name: no path separator, no control character, no leading
    dot (``../../x`` -> ``_.._x``), at most 150 characters (room for a suffix)."""
    name = _UNSAFE_NAME.sub("_", text)[:150]
    if name.startswith("."):
        name = "_" + name[1:]
    return name or fallback


# ---- band files -> one multiband VRT ----------------------------------------------------------


def _stack(name: str, parts: Sequence[RasterSource], keys: Sequence[str] | None) -> RasterSource:
    """Stack single-band sources in order on the finest one's grid, as a VRT document."""
    infos = []
    for part in parts:
        with open_dataset(part) as ds:
            if ds.count != 1:
                raise InputError(
                    f"{part.name}: has {ds.count} bands; {STACK_PREFIX} takes single-band files"
                )
            t = ds.transform
            if t.b or t.d:
                raise InputError(f"{part.name}: rotated grid; cannot stack it")
            infos.append((part, ds.crs, t, ds.width, ds.height, ds.dtypes[0], ds.nodata,
                          ds.descriptions[0]))
    first = infos[0]
    for part, crs, _, _, _, dtype, nodata, _ in infos[1:]:
        if crs != first[1]:
            raise InputError(
                f"{name}: {part.name} is in {crs} but {first[0].name} in {first[1]}; "
                "band files must share a CRS"
            )
        if dtype != first[5]:
            raise InputError(
                f"{name}: {part.name} is {dtype} but {first[0].name} is {first[5]}; "
                "band files must share a dtype"
            )
        if nodata != first[6] and not (nodata != nodata and first[6] != first[6]):
            raise InputError(
                f"{name}: {part.name} has nodata {nodata} but {first[0].name} has {first[6]}"
            )
    finest = min(infos, key=lambda i: abs(i[2].a * i[2].e))
    _, crs, grid, width, height, dtype, nodata, _ = finest
    stems = [p.stem for p in parts]
    prefix = os.path.commonprefix(stems) if len(stems) > 1 else ""
    prefix = prefix[: max(prefix.rfind(c) for c in "_-. ") + 1]  # whole words: keep "B02"
    descriptions = list(keys) if keys else [s[len(prefix):] or s for s in stems]
    stem = prefix.rstrip("_-. ") or f"{stems[0]}_stack"
    bands = []
    for i, (part, _, t, w, h, _, _, _) in enumerate(infos):
        x0, y0 = (t.c - grid.c) / grid.a, (t.f - grid.f) / grid.e
        xs, ys = w * t.a / grid.a, h * t.e / grid.e
        if x0 >= width or y0 >= height or x0 + xs <= 0 or y0 + ys <= 0:
            raise InputError(
                f"{name}: {part.name} does not overlap {finest[0].name}; band files must "
                "cover the same ground"
            )
        bands.append(_vrt_band(i + 1, part.gdal_name, dtype, nodata, descriptions[i],
                               (w, h), (x0, y0, xs, ys)))
    gdal_transform = ", ".join(repr(float(v)) for v in grid.to_gdal())
    srs = f"<SRS>{escape(crs.to_wkt())}</SRS>" if crs else ""
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{srs}'
        f"<GeoTransform>{gdal_transform}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    files = tuple(dict.fromkeys(f for part in parts for f in part.files))
    remote = tuple(dict.fromkeys(r for part in parts for r in part.remote))
    return RasterSource(name, xml, stem, local=False, files=files, remote=remote)


def _vrt_band(index, gdal_name, dtype, nodata, description, size, dst) -> str:
    from rasterio.dtypes import _gdal_typename

    nodata_xml = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
    source_nodata = "" if nodata is None else f"<NODATA>{nodata!r}</NODATA>"
    x0, y0, xs, ys = (repr(float(v)) for v in dst)
    return (
        f'<VRTRasterBand dataType="{_gdal_typename(dtype)}" band="{index}">'
        f"<Description>{escape(description or '')}</Description>{nodata_xml}"
        f'<ComplexSource resampling="{STACK_RESAMPLING}">'
        f'<SourceFilename relativeToVRT="0">{escape(gdal_name)}</SourceFilename>'
        f"<SourceBand>1</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{size[0]}" ySize="{size[1]}"/>'
        f'<DstRect xOff="{x0}" yOff="{y0}" xSize="{xs}" ySize="{ys}"/>'
        f"{source_nodata}</ComplexSource></VRTRasterBand>"
    )


# ---- STAC items --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)  # an item is read once per process (predict opens twice)
def _stac_cached(name: str, item_href: str, keys: tuple[str, ...]) -> RasterSource:
    import pystac

    if not keys:
        raise OptionError(f"{name}: no asset keys after the item (item.json:B04,B03)")
    try:
        item = pystac.Item.from_file(item_href)
    except FileNotFoundError:
        raise StorageError(f"{item_href}: no such file") from None
    except Exception as e:  # urllib, JSON and STAC errors all say the item is unusable
        raise InputError(
            f"{item_href}: cannot read as a STAC item ({first_line(e)})"
        ) from None
    hrefs = []
    for key in keys:
        asset = item.assets.get(key)
        if asset is None:
            raise OptionError(
                f"{item_href}: no asset {key!r} (the item has {', '.join(sorted(item.assets))})"
            )
        hrefs.append(asset.get_absolute_href() or asset.href)
    parts = [single_source(h) for h in hrefs]
    item_remote = urlparse(item_href).scheme.lower() in URL_SCHEMES
    files = tuple(dict.fromkeys([*(() if item_remote else (item_href,)),
                                 *(f for part in parts for f in part.files)]))
    remote = tuple(dict.fromkeys(r for part in parts for r in part.remote))
    if len(parts) == 1:
        return RasterSource(name, parts[0].gdal_name, parts[0].stem, local=False, files=files,
                            remote=remote)
    stacked = _stack(name, parts, keys)
    stem = safe_name(item.id) if item.id else stacked.stem
    return RasterSource(name, stacked.gdal_name, stem, local=False, files=files, remote=remote)

# ---- several rasters fused into one domain ---------------------------------------------------


def composition_entry(name: str, band_count: int, dtype: str, nodata) -> dict:
    """One part of a fused source as model.json records it."""
    nodata = None if nodata is None else float(nodata)
    return {"source": name, "band_count": int(band_count), "dtype": str(dtype),
            "nodata": None if nodata is not None and nodata != nodata else nodata}


def _fuse(text: str) -> RasterSource:
    """``fuse:P1+P2+…``: the bands of every part, in order, on P1's grid (a VRT document)."""
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.vrt import WarpedVRT

    names = [p for p in text[len(FUSE_PREFIX):].split(FUSE_SEPARATOR) if p]
    if len(names) < 2:
        raise OptionError(f"{text}: {FUSE_PREFIX} takes two rasters or more, joined by "
                                f"{FUSE_SEPARATOR} (fuse:s1.tif+s2.tif)")
    if any(n.startswith(FUSE_PREFIX) for n in names):
        raise OptionError(f"{text}: a {FUSE_PREFIX} part cannot be a {FUSE_PREFIX} itself")
    parts = [parse_source(n) for n in names]
    bands_xml, composition, band = [], [], 0
    grid = None
    for part in parts:
        with open_dataset(part) as ds:
            if grid is None:
                t = ds.transform
                if t.b or t.d:
                    raise InputError(f"{part.name}: rotated grid; cannot fuse onto it")
                if ds.crs is None:
                    raise InputError(f"{part.name}: no CRS; {FUSE_PREFIX} needs one to "
                                            "place the other rasters")
                grid = Grid(ds.crs, ds.transform, ds.width, ds.height)
            elif ds.crs is None:
                raise InputError(f"{text}: {part.name} has no CRS; cannot place it")
            own = spectral_bands(ds)
            descriptions = ds.descriptions
            composition.append(composition_entry(part.stem, len(own), ds.dtypes[own[0] - 1],
                                                 ds.nodata))
            offset = grid_offset(ds, grid)
            if offset is not None:  # on the grid: read directly
                source_name = part.gdal_name
                src_rect = (0, 0, ds.width, ds.height)
                dst_rect = (offset[1], offset[0], ds.width, ds.height)
                source_nodata = ds.nodata
            else:
                kwargs = dict(crs=grid.crs, transform=grid.transform, width=grid.width,
                              height=grid.height, resampling=Resampling[FUSE_RESAMPLING],
                              nodata=float("nan"), dtype="float32")
                if ds.nodata is not None:
                    kwargs["src_nodata"] = ds.nodata
                try:
                    with WarpedVRT(ds, **kwargs) as vrt:
                        source_name = next(iter(vrt.tags(ns="xml:VRT").values()))
                except (RasterioError, StopIteration) as e:
                    raise InputError(
                        f"{text}: cannot warp {part.name} onto {parts[0].name}'s grid "
                        f"({first_line(e)})") from None
                src_rect = dst_rect = (0, 0, grid.width, grid.height)
                source_nodata = float("nan")
            for b in own:
                band += 1
                description = descriptions[b - 1] or f"{part.stem}_{b}"
                bands_xml.append(_fused_band(band, source_name, b, description, src_rect,
                                             dst_rect, source_nodata))
    gdal_transform = ", ".join(repr(float(v)) for v in grid.transform.to_gdal())
    xml = (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">'
        f"<SRS>{escape(grid.crs.to_wkt())}</SRS>"
        f"<GeoTransform>{gdal_transform}</GeoTransform>{''.join(bands_xml)}</VRTDataset>"
    )
    recorded = FUSE_PREFIX + FUSE_SEPARATOR.join(p.record() for p in parts)
    files = tuple(dict.fromkeys(f for part in parts for f in part.files))
    remote = tuple(dict.fromkeys(r for part in parts for r in part.remote))
    return RasterSource(text, xml, parts[0].stem, local=False, files=files, remote=remote,
                        composition=tuple(composition), recorded=recorded)


def _fused_band(index, gdal_name, source_band, description, src_rect, dst_rect,
                source_nodata) -> str:
    sx, sy, sw, sh = src_rect
    dx, dy, dw, dh = dst_rect
    nodata_xml = "" if source_nodata is None else f"<NODATA>{float(source_nodata)!r}</NODATA>"
    return (
        f'<VRTRasterBand dataType="Float32" band="{index}">'
        f"<Description>{escape(description)}</Description><NoDataValue>nan</NoDataValue>"
        f"<ComplexSource>"
        f'<SourceFilename relativeToVRT="0">{escape(gdal_name)}</SourceFilename>'
        f"<SourceBand>{source_band}</SourceBand>"
        f'<SrcRect xOff="{sx}" yOff="{sy}" xSize="{sw}" ySize="{sh}"/>'
        f'<DstRect xOff="{dx}" yOff="{dy}" xSize="{dw}" ySize="{dh}"/>'
        f"{nodata_xml}</ComplexSource></VRTRasterBand>"
    )
