"""index.gpkg of a chip directory: one row per chip and domain, one layer per CRS."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import rasterio

from geotranslate.errors import InputError, first_line
from geotranslate.files import write_failed

INDEX_NAME = "index.gpkg"


def _layer_name(crs_wkt: str | None) -> str:
    if crs_wkt is None:
        return "chips_pixel"
    crs = rasterio.crs.CRS.from_wkt(crs_wkt)
    authority = crs.to_authority()
    if authority:
        return f"chips_{authority[0]}_{authority[1]}"
    return "chips_custom_" + hashlib.sha1(crs_wkt.encode()).hexdigest()[:8]


def index_layers(out: Path, rows: list[dict]) -> dict:
    """index.gpkg's layers after this run: earlier rows plus this run's, one layer per CRS."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    path = out / INDEX_NAME
    layers: dict[str, gpd.GeoDataFrame] = {}
    if path.exists():
        try:
            for name, _ in pyogrio.list_layers(path):
                layers[name] = gpd.read_file(path, layer=name, engine="pyogrio")
        except Exception as e:
            raise InputError(f"{path}: unreadable ({e}); remove it and re-run") from None
    by_layer: dict[str, list[dict]] = {}
    crs_of: dict[str, str | None] = {}
    for row in rows:
        name = _layer_name(row["crs"])
        crs_of[name] = row["crs"]
        by_layer.setdefault(name, []).append({k: v for k, v in row.items() if k != "crs"})
    for name, layer_rows in by_layer.items():
        new = gpd.GeoDataFrame(layer_rows, geometry="geometry", crs=crs_of[name])
        if name in layers:
            new = pd.concat(
                [layers[name], new.set_crs(layers[name].crs, allow_override=True)],
                ignore_index=True,
            )
            new = gpd.GeoDataFrame(new, geometry="geometry", crs=layers[name].crs)
        layers[name] = new.drop_duplicates(["name", "domain", "split"], keep="last")
    # a chip listed in the index but gone from disk (deleted by the user) is dropped
    for name, frame in layers.items():
        exists = [
            (out / f"{s}_{d}" / n).exists()
            for n, d, s in zip(frame["name"], frame["domain"], frame["split"], strict=True)
        ]
        layers[name] = frame[exists]
    return layers


#: the GeoPackage's "last change" timestamp: fixed, so that the same chips give the same bytes
#: (whatever the run's time or --workers)
INDEX_DATE = "2000-01-01T00:00:00.000Z"


def write_index(layers: dict, tmp: Path, path: Path) -> None:
    """Write the index layers into ``tmp`` (renamed onto ``path`` by the caller)."""
    import pyogrio

    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": INDEX_DATE})
    try:
        _write_layers(layers, tmp, path)
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})


def _write_layers(layers: dict, tmp: Path, path: Path) -> None:
    import pyogrio

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*extension should be 'gpkg'")
        warnings.filterwarnings("ignore", message=".*non conformant file extension")
        warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixel-space chips
        tmp.unlink()  # the GPKG driver creates its file itself
        try:
            for name, frame in layers.items():
                frame.to_file(tmp, layer=name, driver="GPKG", engine="pyogrio")
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as e:
            # SQLite's message comes after the whole failed SQL script: keep its end
            reason = str(e).rsplit(" failed: ", 1)[-1]
            raise write_failed(path, first_line(reason, limit=120)) from None
