"""meta.json of a chip directory (see docs/formats.md): read and checked into a
:class:`ChipMeta` in one place (:func:`read_chip_meta`), a run's domains and pairs merged into
it, the chips counted.

``pairing`` ("paired" or "unpaired") was called ``dataset_type`` before; files that say so still
read, and export-tiles rewrites the key when it adds to them. (``dataset_type`` in config.json
and model.json is the method, a different thing.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import rasterio

from geotranslate import schema as sc
from geotranslate.errors import InputError, OptionError
from geotranslate.schema import load_json
from geotranslate.stats import BandStats, stats_from_dict

META_NAME = "meta.json"
FORMAT = "geotranslate-chips"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
DOMAINS = ("a", "b")
PAIRINGS = ("paired", "unpaired")
#: the key ``pairing`` had in files written before it was renamed
LEGACY_PAIRING_KEY = "dataset_type"

_META_DOMAIN = sc.Obj(
    {"sources": sc.List(sc.Str()), "bands": sc.List(sc.Int(min=1), 1),
     "band_count": sc.Int(min=1), "dtype": sc.DTYPE,
     "stats": sc.Obj({"bands": sc.List(sc.BAND_STATS, 1)})},
    optional={"band_descriptions": sc.Opt(sc.List(sc.Opt(sc.Str()))),
              "nodata": sc.Opt(sc.Num(finite=False)), "crs": sc.Opt(sc.Str()),
              "crs_all": sc.List(sc.Opt(sc.Str())), "pixel_size": sc.List(sc.Num())},
)


def _meta_schema(pairing_key: str) -> sc.Obj:
    return sc.Obj(
        {pairing_key: sc.Str(PAIRINGS), "tile_size": sc.Int(min=1),
         "domains": sc.Map(_META_DOMAIN, keys=DOMAINS)},
        optional={"stride": sc.Int(min=1),
                  "pairs": sc.List(sc.Obj({"a": sc.Str(), "b": sc.List(sc.Str())})),
                  "chips": sc.Obj()},
    )


#: what the tool reads of meta.json (other keys are allowed: newer optional fields)
META_SCHEMA = _meta_schema("pairing")
#: the same, for files written before ``pairing`` was renamed
LEGACY_META_SCHEMA = _meta_schema(LEGACY_PAIRING_KEY)


@dataclass(frozen=True)
class DomainMeta:
    """One domain of meta.json: its sources, bands and statistics, as read and checked."""

    sources: tuple[str, ...]
    bands: tuple[int, ...]  # 1-based, in the sources
    band_count: int
    dtype: str
    band_stats: tuple[BandStats, ...]
    band_descriptions: tuple[str | None, ...]  # one per band (None: none recorded)
    nodata: float | None
    crs: str | None
    crs_all: tuple[str | None, ...]
    pixel_size: tuple[float, ...] | None
    scene_stats: Mapping | None  # {chip name stem: a stats entry} (inputs.scene_stats_of)
    input_transforms: tuple[dict, ...]
    composition: tuple[dict, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> DomainMeta:
        count = int(d["band_count"])
        pixel_size = d.get("pixel_size")
        return cls(
            sources=tuple(d["sources"]),
            bands=tuple(d["bands"]),
            band_count=count,
            dtype=str(d["dtype"]),
            band_stats=tuple(stats_from_dict(d["stats"])),
            band_descriptions=tuple(d.get("band_descriptions") or [None] * count),
            nodata=d.get("nodata"),
            crs=d.get("crs"),
            crs_all=tuple(d.get("crs_all", [d.get("crs")])),
            pixel_size=tuple(pixel_size) if pixel_size is not None else None,
            scene_stats=d.get("scene_stats"),
            input_transforms=tuple(d.get("input_transforms") or ()),
            composition=tuple(d.get("composition") or ()),
        )


@dataclass(frozen=True)
class ChipMeta:
    """A chip folder's meta.json, as read and checked by :func:`read_chip_meta`."""

    path: Path
    pairing: str  # "paired" (A and B chips of the same name cover the same ground) or not
    tile_size: int
    stride: int | None
    domains: Mapping[str, DomainMeta]  # the domains exported so far ("a", "b")
    pairs: tuple[dict, ...]  # paired: {"a": A source, "b": [B sources]} per A source
    chips: Mapping | None  # {split: {domain: count}} when recorded
    document: Mapping  # the file as read: export-tiles adds a run to it

    def chip_count(self, split: str, domain: str) -> int | None:
        """How many chips of ``split`` and ``domain`` the file describes, when it says so."""
        counts = self.chips.get(split) if isinstance(self.chips, Mapping) else None
        count = counts.get(domain) if isinstance(counts, Mapping) else None
        return count if isinstance(count, int) and not isinstance(count, bool) else None


def read_chip_meta(path: str | Path, *, domains: tuple[str, ...] = DOMAINS,
                   problem: str = "corrupt meta.json", require_format: bool = False) -> ChipMeta:
    """Read, check and type a meta.json: the one reader of the file.

    Refused with one line: a file that cannot be read or parsed (``problem`` starts the
    reason), one that is not a chip dataset's (``require_format``), one that does not fit
    :data:`META_SCHEMA` or lacks one of ``domains``.
    """
    path = Path(path)
    meta = load_json(path, problem)
    if require_format and (not isinstance(meta, dict) or meta.get("format") != FORMAT):
        raise InputError(f"{path}: not a geotranslate chip dataset")
    _check_meta(meta, path, domains)
    pairing = meta["pairing"] if "pairing" in meta else meta[LEGACY_PAIRING_KEY]
    return ChipMeta(
        path=path,
        pairing=pairing,
        tile_size=int(meta["tile_size"]),
        stride=meta.get("stride"),
        domains={d: DomainMeta.from_dict(dom) for d, dom in meta["domains"].items()},
        pairs=tuple(meta.get("pairs", ())),
        chips=meta.get("chips"),
        document=meta,
    )


def _check_meta(meta: object, path: Path, domains: tuple[str, ...]) -> None:
    """Refuse a meta.json (already parsed) that does not fit :data:`META_SCHEMA` (or, with
    ``dataset_type`` for ``pairing``, its older form), or lacks one of ``domains``."""
    legacy = isinstance(meta, dict) and "pairing" not in meta and LEGACY_PAIRING_KEY in meta
    sc.validate(meta, LEGACY_META_SCHEMA if legacy else META_SCHEMA, path)
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


def read_existing_meta(out: Path) -> ChipMeta | None:
    """The meta.json an export adds to (None in a new folder); any domains."""
    path = out / META_NAME
    if not path.exists():
        return None
    return read_chip_meta(path, domains=(), require_format=True,
                          problem="unreadable (remove it or choose another --out)")


def check_against_existing(out, meta_old: ChipMeta | None, pairing, tile_size,
                           domain_meta) -> None:
    """Refuse to add chips that would not fit the dataset already in ``out``."""
    if meta_old is None:
        _check_stray_chips(out, tile_size, domain_meta)
        return
    where = out / META_NAME
    if meta_old.tile_size != tile_size:
        raise OptionError(
            f"{where}: holds {meta_old.tile_size} px chips, this run makes {tile_size} px"
        )
    if meta_old.pairing != pairing:
        raise OptionError(
            f"{where}: holds a {meta_old.pairing} dataset, this run is {pairing}"
        )
    for d, new in domain_meta.items():
        old = meta_old.domains.get(d)
        if old is None:
            continue
        for key in ("band_count", "dtype"):
            if getattr(old, key) != new[key]:
                raise OptionError(
                    f"{where}: domain {d} has {key} {getattr(old, key)}, this run would write "
                    f"{new[key]} (use another --out)"
                )
        for key in ("input_transforms", "composition"):
            if list(getattr(old, key)) != list(new.get(key) or ()):
                raise OptionError(
                    f"{where}: domain {d} has {key} {list(getattr(old, key)) or None}, this run "
                    f"would write {new.get(key)} (use another --out)"
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
                raise InputError(f"{chip}: unreadable chip in the output ({e})") from None
            with ds:
                if (
                    (ds.width, ds.height) != (tile_size, tile_size)
                    or ds.count != new["band_count"]
                    or ds.dtypes[0] != new["dtype"]
                ):
                    raise OptionError(
                        f"{out}: holds chips of {ds.width} px with {ds.count} {ds.dtypes[0]} "
                        f"bands ({chip.name}); this run makes {tile_size} px with "
                        f"{new['band_count']} {new['dtype']} bands"
                    )



def merge_meta(meta_old: ChipMeta | None, pairing, tile_size, stride, domain_meta,
               pairs_new) -> dict:
    """The meta.json to write: the existing one (its other keys kept, ``dataset_type``
    renamed ``pairing``) with this run's domains and pairs, or a new one."""
    if meta_old is None:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "pairing": pairing,
                "tile_size": tile_size, "domains": {}}
    else:  # in the same place as before, under its current name
        meta = {("pairing" if k == LEGACY_PAIRING_KEY else k): copy.deepcopy(v)
                for k, v in meta_old.document.items()}
        meta["pairing"] = pairing
    meta["stride"] = stride
    for d, new in domain_meta.items():
        old = meta_old.domains.get(d) if meta_old is not None else None
        if old is not None:
            new["sources"] = [*old.sources, *(s for s in new["sources"] if s not in old.sources)]
            new["crs_all"] = [*old.crs_all, *(c for c in new["crs_all"] if c not in old.crs_all)]
            new["crs"] = old.crs
        meta["domains"][d] = new
    if pairing == "paired":
        pairs = {p["a"]: p for p in (meta_old.pairs if meta_old is not None else ())}
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

