"""meta.json of a chip directory: reading and checking an existing one, merging a run's
domains and pairs into it, counting the chips (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path

import rasterio

from geotranslate.data import check_meta
from geotranslate.errors import GeotranslateError
from geotranslate.schema import load_json

META_NAME = "meta.json"
INDEX_NAME = "index.gpkg"
FORMAT = "geotranslate-chips"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
DOMAINS = ("a", "b")


def _read_meta(out: Path) -> dict | None:
    path = out / META_NAME
    if not path.exists():
        return None
    meta = load_json(path, "unreadable (remove it or choose another --out)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GeotranslateError(f"{path}: not a geotranslate chip dataset")
    return check_meta(meta, path, domains=())


def _check_against_existing(out, meta_old, dataset_type, tile_size, domain_meta) -> None:
    """Refuse to add chips that would not fit the dataset already in ``out``."""
    if meta_old is None:
        _check_stray_chips(out, tile_size, domain_meta)
        return
    where = out / META_NAME
    if meta_old.get("tile_size") != tile_size:
        raise GeotranslateError(
            f"{where}: holds {meta_old.get('tile_size')} px chips, this run makes {tile_size} px"
        )
    if meta_old.get("dataset_type") != dataset_type:
        raise GeotranslateError(
            f"{where}: holds a {meta_old.get('dataset_type')} dataset, this run is {dataset_type}"
        )
    for d, new in domain_meta.items():
        old = meta_old.get("domains", {}).get(d)
        if old is None:
            continue
        for key in ("band_count", "dtype"):
            if old[key] != new[key]:
                raise GeotranslateError(
                    f"{where}: domain {d} has {key} {old[key]}, this run would write "
                    f"{new[key]} (use another --out)"
                )


def _check_stray_chips(out: Path, tile_size: int, domain_meta: dict) -> None:
    """A directory with chips but no meta.json (an interrupted run): check one chip per domain."""
    for d, new in domain_meta.items():
        for split in SPLITS:
            chip = next((p for p in sorted((out / f"{split}_{d}").glob("*.tif"))), None)
            if chip is None:
                continue
            try:
                ds = rasterio.open(chip)
            except rasterio.errors.RasterioError as e:
                raise GeotranslateError(f"{chip}: unreadable chip in the output ({e})") from None
            with ds:
                if (
                    (ds.width, ds.height) != (tile_size, tile_size)
                    or ds.count != new["band_count"]
                    or ds.dtypes[0] != new["dtype"]
                ):
                    raise GeotranslateError(
                        f"{out}: holds chips of {ds.width} px with {ds.count} {ds.dtypes[0]} "
                        f"bands ({chip.name}); this run makes {tile_size} px with "
                        f"{new['band_count']} {new['dtype']} bands"
                    )



def _merge_meta(meta_old, dataset_type, tile_size, stride, domain_meta, pairs_new) -> dict:
    meta = meta_old or {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset_type": dataset_type,
        "tile_size": tile_size,
        "domains": {},
    }
    meta["stride"] = stride
    for d, new in domain_meta.items():
        old = meta["domains"].get(d)
        if old is not None:
            new["sources"] = old["sources"] + [s for s in new["sources"] if s not in old["sources"]]
            new["crs_all"] = old.get("crs_all", [old.get("crs")]) + [
                c for c in new["crs_all"] if c not in old.get("crs_all", [old.get("crs")])
            ]
            new["crs"] = old.get("crs")
        meta["domains"][d] = new
    if dataset_type == "paired":
        pairs = {p["a"]: p for p in meta.get("pairs", [])}
        pairs.update({p["a"]: p for p in pairs_new})
        meta["pairs"] = list(pairs.values())
    return meta


def _count_chips(out: Path) -> dict[str, dict[str, int]]:
    return {
        split: {
            d: sum(1 for p in (out / f"{split}_{d}").glob("*.tif") if not p.name.startswith("."))
            for d in DOMAINS
        }
        for split in SPLITS
    }

