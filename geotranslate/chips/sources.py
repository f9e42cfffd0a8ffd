"""Options and sources of an export: mode, numbers, each domain's bands and metadata."""

from __future__ import annotations

import contextlib
import math

from geotranslate.chips.meta import DOMAINS, PAIRINGS
from geotranslate.errors import InputError, OptionError
from geotranslate.inputs import RelativeElevation
from geotranslate.raster.io import parse_bands, raster_info, source_of


def resolve_mode(a_paths, b_paths, mode, domain) -> tuple[str, list[str]]:
    if not a_paths:
        raise OptionError("no input raster given")
    if mode is not None and mode not in PAIRINGS:
        raise OptionError(f"mode {mode!r}: choose {' or '.join(PAIRINGS)}")
    if domain not in (None, "a", "b"):
        raise OptionError(f"domain {domain!r}: choose a or b")
    if b_paths:
        if domain is not None:
            raise OptionError(
                "--domain exports a single raster list; do not combine with --b"
            )
        return mode or "paired", list(DOMAINS)
    if mode == "paired":
        raise OptionError("--mode paired needs B rasters (--b B.tif)")
    return "single", [domain or "a"]


def check_numbers(tile_size: int, stride: int, max_nodata: float, val_fraction: float) -> None:
    if tile_size < 8:
        raise OptionError(f"tile size {tile_size}: must be at least 8 pixels")
    if stride < 1:
        raise OptionError(f"stride {stride}: must be a positive number of pixels")
    if not 0.0 <= max_nodata <= 1.0:
        raise OptionError(f"max-nodata {max_nodata}: must be between 0 and 1")
    if not 0.0 <= val_fraction < 1.0:
        raise OptionError(f"val-fraction {val_fraction}: must be in [0, 1)")


def domain_bands(datasets, spec) -> list[int]:
    """Selected bands, identical for every source of a domain (band count and dtype agree)."""
    bands = [parse_bands(spec, ds) for ds in datasets]
    first = datasets[0]
    for ds, b in zip(datasets[1:], bands[1:], strict=True):
        if len(b) != len(bands[0]) or ds.dtypes[b[0] - 1] != first.dtypes[bands[0][0] - 1]:
            raise InputError(
                f"{ds.name}: {len(b)} bands of {ds.dtypes[b[0] - 1]}, but {first.name} has "
                f"{len(bands[0])} bands of {first.dtypes[bands[0][0] - 1]}; a domain's rasters "
                "must agree"
            )
        if ds.nodata != first.nodata and not (
            ds.nodata is not None
            and first.nodata is not None
            and math.isnan(ds.nodata)
            and math.isnan(first.nodata)
        ):
            raise InputError(
                f"{ds.name}: nodata {ds.nodata} differs from {first.name} ({first.nodata}); "
                "a domain's rasters must agree (gdal_edit.py -a_nodata)"
            )
    return bands[0]


def domain_entry(datasets, bands: list[int]) -> dict:
    info = raster_info(datasets[0], bands)
    crss = []
    for ds in datasets:
        crs = ds.crs.to_string() if ds.crs else None
        if crs not in crss:
            crss.append(crs)
    composition = _composition(datasets, bands)
    out = {
        "sources": [source_of(ds).record() for ds in datasets],
        "bands": list(bands),
        "band_count": len(bands),
        "dtype": info.dtype,
        "band_descriptions": list(info.band_descriptions),
        "nodata": info.nodata,
        "crs": info.crs,
        "crs_all": crss,
        "pixel_size": list(info.pixel_size),
    }
    if composition:
        out["composition"] = composition
    return out


def _composition(datasets, bands: list[int]) -> list[dict]:
    """The parts of a domain fused from several rasters (``fuse:``), which all its rasters
    must share (the bands of every part, each exported whole)."""
    parts = [list(source_of(ds).composition) for ds in datasets]
    if not any(parts):
        return []
    first = parts[0]
    for ds, got in zip(datasets, parts, strict=True):
        shape = [(p["band_count"], p["dtype"]) for p in got]
        if shape != [(p["band_count"], p["dtype"]) for p in first]:
            raise InputError(
                f"{ds.name}: fused from other rasters than {datasets[0].name}; a domain's "
                "rasters must agree (the same kinds of raster, in the same order)"
            )
    if list(bands) != list(range(1, sum(p["band_count"] for p in first) + 1)):
        raise OptionError(
            f"{datasets[0].name}: --bands cannot select among fused bands; fuse band files "
            "(stack:) or rasters of the bands wanted"
        )
    return [dict(p) for p in first]


def fuse_extras(a_paths: list[str], extras: list[list[str]], allow_no_crs: bool) -> list[str]:
    """``fuse:A+E1+…`` for each A raster: A fused with the raster of each extra list that
    covers it most (pairing by footprint, as --b)."""
    from geotranslate.raster.io import open_raster
    from geotranslate.raster.sources import FUSE_PREFIX, FUSE_SEPARATOR
    from geotranslate.raster.warp import pair_sources

    fused = [[str(a)] for a in a_paths]
    for extra in extras:
        with contextlib.ExitStack() as stack:
            a_dss = [stack.enter_context(open_raster(p, allow_no_crs=allow_no_crs))
                     for p in a_paths]
            e_dss = [stack.enter_context(open_raster(p, allow_no_crs=allow_no_crs))
                     for p in extra]
            for names, overlapping in zip(fused, pair_sources(a_dss, e_dss), strict=True):
                names.append(str(extra[overlapping[0]]))
    return [FUSE_PREFIX + FUSE_SEPARATOR.join(names) for names in fused]


def check_stems(datasets: dict[str, list]) -> None:
    for dss in datasets.values():
        seen: dict[str, str] = {}
        for ds in dss:
            stem = source_of(ds).stem
            if stem in seen and seen[stem] != ds.name:
                raise InputError(
                    f"{ds.name}: same file name stem as {seen[stem]}; chip names would collide "
                    "(rename one)"
                )
            seen[stem] = ds.name


def input_transforms(relative_elevation, domain_meta: dict) -> dict:
    """{domain: input transforms} of the run (only A takes one); records them in the domain's
    meta, whose chips become float32 with NaN as nodata."""
    if relative_elevation is None or "a" not in domain_meta:
        if relative_elevation is not None:
            raise OptionError("--relative-elevation applies to domain A; export A too")
        return {}
    transform = (relative_elevation if isinstance(relative_elevation, RelativeElevation)
                 else RelativeElevation.parse(relative_elevation))
    transform.check_bands(domain_meta["a"]["band_count"], "domain A")
    domain_meta["a"]["dtype"] = "float32"
    domain_meta["a"]["nodata"] = float("nan")  # any relative height is data
    domain_meta["a"]["input_transforms"] = [transform.to_dict()]
    return {"a": [transform]}
