"""meta.json of a chip directory: reading and checking an existing one, merging a run's
domains and pairs into it, counting the chips (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path

import rasterio

from geotranslate import schema as sc
from geotranslate.errors import GeotranslateError
from geotranslate.schema import load_json

META_NAME = "meta.json"
INDEX_NAME = "index.gpkg"
FORMAT = "geotranslate-chips"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
DOMAINS = ("a", "b")

_META_DOMAIN = sc.Obj(
    {"sources": sc.List(sc.Str()), "bands": sc.List(sc.Int(min=1), 1),
     "band_count": sc.Int(min=1), "dtype": sc.DTYPE,
     "stats": sc.Obj({"bands": sc.List(sc.BAND_STATS, 1)})},
    optional={"band_descriptions": sc.Opt(sc.List(sc.Opt(sc.Str()))),
              "nodata": sc.Opt(sc.Num(finite=False)), "crs": sc.Opt(sc.Str()),
              "crs_all": sc.List(sc.Opt(sc.Str())), "pixel_size": sc.List(sc.Num())},
)
#: what the tool reads of meta.json (other keys are allowed: newer optional fields)
META_SCHEMA = sc.Obj(
    {"dataset_type": sc.Str(("paired", "unpaired")), "tile_size": sc.Int(min=1),
     "domains": sc.Map(_META_DOMAIN, keys=("a", "b"))},
    optional={"stride": sc.Int(min=1),
              "pairs": sc.List(sc.Obj({"a": sc.Str(), "b": sc.List(sc.Str())})),
              "chips": sc.Obj()},
)


def check_meta(meta: object, path: Path, domains: tuple[str, ...] = ("a", "b")) -> dict:
    """Refuse a meta.json (already parsed) that does not fit :data:`META_SCHEMA`, or lacks
    one of ``domains``; returns it."""
    sc.validate(meta, META_SCHEMA, path)
    for d in domains:
        if d not in meta["domains"]:
            raise sc.invalid(path, f"domains.{d}", f"missing (domain {d.upper()} has no chips "
                             "yet: export its rasters into this folder)")
    for d, dom in meta["domains"].items():
        where = f"domains.{d}"
        for key, n in (("bands", len(dom["bands"])), ("stats.bands", len(dom["stats"]["bands"]))):
            if n != dom["band_count"]:
                raise sc.invalid(path, f"{where}.{key}",
                                 f"{n} entries for band_count {dom['band_count']}")
        sc.check_nodata(path, f"{where}.nodata", dom.get("nodata"), dom["dtype"])
    return meta


def read_existing_meta(out: Path) -> dict | None:
    path = out / META_NAME
    if not path.exists():
        return None
    meta = load_json(path, "unreadable (remove it or choose another --out)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GeotranslateError(f"{path}: not a geotranslate chip dataset")
    return check_meta(meta, path, domains=())


def check_against_existing(out, meta_old, dataset_type, tile_size, domain_meta) -> None:
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
        for key in ("input_transforms", "composition"):
            if old.get(key) != new.get(key):
                raise GeotranslateError(
                    f"{where}: domain {d} has {key} {old.get(key)}, this run would write "
                    f"{new.get(key)} (use another --out)"
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



def merge_meta(meta_old, dataset_type, tile_size, stride, domain_meta, pairs_new) -> dict:
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


def count_chips(out: Path) -> dict[str, dict[str, int]]:
    return {
        split: {
            d: sum(1 for p in (out / f"{split}_{d}").glob("*.tif") if not p.name.startswith("."))
            for d in DOMAINS
        }
        for split in SPLITS
    }

