"""Scenes as band files (stack:B02.tif,B03.tif,…) and STAC items with asset keys: stacked on the
finest grid, in order, pixel for pixel; export, predict and evaluate read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import make_model, stac_item, write_raster
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from servers import range_server

from geotranslate.cli import main as cli_main
from geotranslate.errors import GeotranslateError
from geotranslate.raster.io import open_raster


def _check_stack(ds, files: list[Path]) -> None:
    """The stack lies on the finest file's grid; each band equals its file, a coarser one
    resampled bilinearly onto that grid (as GDAL reads it at that size)."""
    finest = min(files, key=lambda f: rasterio.open(f).res[0])
    with rasterio.open(finest) as ref:
        assert (ds.width, ds.height, ds.crs, ds.transform) == (
            ref.width, ref.height, ref.crs, ref.transform)
    stacked = ds.read()
    for i, f in enumerate(files):
        with rasterio.open(f) as src:
            if src.res == ds.res:
                expected = src.read(1)
            else:
                expected = src.read(1, out_shape=(ds.height, ds.width),
                                    resampling=Resampling.bilinear)
                assert src.res[0] > ds.res[0]
        np.testing.assert_array_equal(stacked[i], expected, err_msg=str(f))


def test_bigearthnet_10_and_20_m_bands_stack_on_the_10_m_grid(real_data, tmp_path, capsys):
    folder = next(p for p in sorted((real_data / "bigearthnet" / "S2").iterdir()) if p.is_dir())
    names = ["B04", "B03", "B02", "B08", "B05", "B11"]  # 10 m and 20 m, not in file order
    files = [next(folder.glob(f"*_{n}.tif")) for n in names]
    source = "stack:" + ",".join(str(f) for f in files)
    with open_raster(source) as ds:
        assert ds.name == source
        assert ds.descriptions == tuple(names)
        assert ds.res == (10.0, 10.0) and ds.shape == (120, 120)
        _check_stack(ds, files)
    rc = cli_main(["export-tiles", source, "--out", str(tmp_path / "chips"), "--tile-size", "60",
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "chips" / "meta.json").read_text())
    assert meta["domains"]["a"]["sources"] == [source]
    assert meta["domains"]["a"]["band_descriptions"] == names
    chip = tmp_path / "chips" / "train_a" / f"{folder.name}_60_0.tif"
    with rasterio.open(chip) as c, open_raster(source) as ds:
        np.testing.assert_array_equal(c.read(), ds.read(window=((60, 120), (0, 60))))
        assert c.descriptions == tuple(names)


@pytest.fixture
def band_files(tmp_path) -> list[Path]:
    """Three 10 m bands (64 px) and one 20 m band (32 px) over the same ground, uint16."""
    rng = np.random.default_rng(3)
    files = []
    for name, res in [("B02", 10), ("B03", 10), ("B04", 10), ("B11", 20)]:
        n = 640 // res
        data = rng.integers(200, 4000, (1, n, n)).astype("uint16")
        files.append(write_raster(tmp_path / f"T32_{name}.tif", data,
                                  transform=from_origin(500000, 5300000, res, res), nodata=0))
    return files


def test_band_files_in_export_predict_evaluate(band_files, tmp_path, capsys):
    source = "stack:" + ",".join(str(f) for f in band_files)
    with open_raster(source) as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B11") and ds.nodata == 0
        _check_stack(ds, band_files)
        stacked = ds.read()
    # the same bands written as one file: every command gives the same results from both
    write_raster(tmp_path / "stacked.tif", stacked, nodata=0)
    model = make_model(tmp_path, bands_a=4, bands_b=4, dtype_b="uint16",
                       range_a=(200.0, 4000.0), range_b=(200.0, 4000.0), chip=32)
    results = {}
    for label, name in [("stack", source), ("file", str(tmp_path / "stacked.tif"))]:
        work = tmp_path / label
        work.mkdir()
        assert cli_main(["export-tiles", name, "--out", str(work / "chips"), "--tile-size", "32",
                         "--no-progress"]) == 0
        assert cli_main(["predict-raster", name, "--model", str(model), "--out",
                         str(work / "p.tif"), "--no-progress", "--device", "cpu"]) == 0
        assert cli_main(["evaluate", str(work / "p.tif"), name, "--json",
                         str(work / "e.json")]) == 0
        chips = {p.name: rasterio.open(p).read() for p in (work / "chips" / "train_a").iterdir()}
        results[label] = (chips, rasterio.open(work / "p.tif").read(),
                          json.loads((work / "e.json").read_text())["metrics"])
    stack_chips, file_chips = results["stack"][0], results["file"][0]
    assert len(file_chips) == 4
    # chip names come from the band files' common stem
    assert sorted(stack_chips) == ["T32_0_0.tif", "T32_0_32.tif", "T32_32_0.tif", "T32_32_32.tif"]
    for (name_s, a), (_, b) in zip(sorted(stack_chips.items()), sorted(file_chips.items()),
                                  strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name_s)
    np.testing.assert_array_equal(results["stack"][1], results["file"][1])
    assert results["stack"][2] == results["file"][2]
    capsys.readouterr()


def test_band_files_that_do_not_fit_together_are_refused(band_files, tmp_path, capsys):
    other_crs = write_raster(tmp_path / "utm33.tif", np.ones((1, 64, 64), "uint16"),
                             crs="EPSG:32632", nodata=0)
    far = write_raster(tmp_path / "far.tif", np.ones((1, 64, 64), "uint16"),
                       transform=from_origin(900000, 5300000, 10, 10), nodata=0)
    two_bands = write_raster(tmp_path / "two.tif", np.ones((2, 64, 64), "uint16"), nodata=0)
    cases = {
        f"stack:{band_files[0]},{other_crs}": "band files must share a CRS",
        f"stack:{band_files[0]},{far}": "does not overlap",
        f"stack:{band_files[0]},{two_bands}": "takes single-band files",
        f"stack:{band_files[0]},{tmp_path / 'B99.tif'}": "B99.tif: no such file",
    }
    for source, expected in cases.items():
        rc = cli_main(["export-tiles", source, "--out", str(tmp_path / "chips")])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and expected in err, err
        assert err.startswith("geotranslate: error: ")
    assert not (tmp_path / "chips").exists()


def test_stac_item_assets_stack_like_band_files(band_files, tmp_path, capsys):
    keys = ["B04", "B03", "B02", "B11"]
    by_key = {f.stem.split("_")[1]: f for f in band_files}
    with range_server(tmp_path) as server:
        item = stac_item(tmp_path / "item.json",
                          {k: f"{server.url}/{by_key[k].name}" for k in keys})
        local_item = stac_item(tmp_path / "local.json",
                                {k: f"./{by_key[k].name}" for k in keys})  # relative hrefs
        for source in [f"{item}:{','.join(keys)}", f"{server.url}/item.json:{','.join(keys)}",
                       f"{local_item}:{','.join(keys)}"]:
            with open_raster(source) as ds:
                assert ds.name == source and ds.descriptions == tuple(keys)
                _check_stack(ds, [by_key[k] for k in keys])
        rc = cli_main(["export-tiles", f"{item}:B04,B03", "--out", str(tmp_path / "chips"),
                       "--tile-size", "32", "--no-progress"])
        assert rc == 0
        assert sorted(p.name for p in (tmp_path / "chips" / "train_a").iterdir())[0] == (
            "T32-scene_0_0.tif")
        capsys.readouterr()
        rc = cli_main(["export-tiles", f"{item}:B04,B8A", "--out", str(tmp_path / "c2")])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "no asset 'B8A'" in err, err
    with pytest.raises(GeotranslateError, match="no such file"):
        open_raster(f"{tmp_path / 'none.json'}:B04")


def test_bigearthnet_band_files_export_like_the_stacked_pair(real_data, tmp_path, capsys):
    """pairs_stacked/ holds lossless stacks of the same band files: the chips must match."""
    s1 = real_data / "bigearthnet" / "S1" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    s2 = real_data / "bigearthnet" / "S2" / "S2A_MSIL2A_20170613T101031_87_48"
    stacked = real_data / "bigearthnet" / "pairs_stacked"
    a = "stack:" + ",".join(str(next(s1.glob(f"*_{b}.tif"))) for b in ["VV", "VH"])
    b = "stack:" + ",".join(str(next(s2.glob(f"*_{n}.tif"))) for n in ["B02", "B03", "B04", "B08"])
    runs = {
        "bands": [a, "--b", b],
        "stacked": [str(stacked / "20170613_33UUP_87_48_S1_VV_VH.tif"), "--b",
                    str(stacked / "20170613_33UUP_87_48_S2_B02_B03_B04_B08.tif")],
    }
    chips = {}
    for label, args in runs.items():
        out = tmp_path / label
        assert cli_main(["export-tiles", *args, "--out", str(out), "--tile-size", "40",
                         "--no-progress"]) == 0, capsys.readouterr().err
        chips[label] = [rasterio.open(p).read() for d in ("train_a", "train_b")
                        for p in sorted((out / d).iterdir())]
    assert len(chips["bands"]) == len(chips["stacked"]) == 2 * 9
    for x, y in zip(chips["bands"], chips["stacked"], strict=True):
        np.testing.assert_array_equal(x, y)
