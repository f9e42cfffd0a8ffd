"""Inputs real tasks need: per-scene normalization, relative elevation, several sensors fused
into one domain (geotranslate/inputs.py, raster/sources.py ``fuse:``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geotranslate.chips.export import export_tiles
from geotranslate.data import ChipDataset
from geotranslate.errors import GeotranslateError
from geotranslate.evaluate import evaluate_chips
from geotranslate.inputs import RelativeElevation, input_reader, scene_spec
from geotranslate.modelfile import DomainSpec, load_model
from geotranslate.predict import predict_raster
from geotranslate.raster.io import open_raster, read_window
from geotranslate.stats import Normalizer
from geotranslate.train import TrainConfig, train

TINY = {"ngf": 4, "ndf": 4, "n_layers_d": 1, "progress": False, "preview": False,
        "tensorboard": False, "epochs": 1, "epochs_decay": 0, "batch_size": 2,
        "max_steps": 2, "workers": 0}


def _terrain(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    return (200 + 0.5 * x + 0.3 * y + 5 * np.sin(x / 7.0) * np.cos(y / 5.0)
            + rng.normal(0, 0.5, (rows, cols))).astype(np.float32)


# ---- per-scene normalization --------------------------------------------------------------------


def test_scene_scope_normalizes_gain_and_offset_copies_alike(tmp_path, make_raster):
    """Two scenes that differ by a gain and an offset per band normalize to the same values,
    in training (chips by their scene's statistics) and at prediction (the input's own)."""
    rng = np.random.default_rng(1)
    base = rng.integers(20, 120, size=(3, 64, 64)).astype(np.float32)
    gain, offset = np.array([1.8, 0.6, 1.3]), np.array([25.0, -5.0, 40.0])
    bright = (base * gain[:, None, None] + offset[:, None, None]).astype(np.float32)
    target = rng.normal(size=(1, 64, 64)).astype(np.float32)
    a1, a2 = make_raster("dim.tif", base), make_raster("bright.tif", bright)
    b1, b2 = make_raster("dim_b.tif", target), make_raster("bright_b.tif", target)
    chips = tmp_path / "chips"
    export_tiles([a1, a2], [b1, b2], chips, tile_size=32, progress=False)
    meta = json.loads((chips / "meta.json").read_text())
    scenes = meta["domains"]["a"]["scene_stats"]
    assert set(scenes) == {"dim", "bright"}
    np.testing.assert_allclose([b["mean"] for b in scenes["bright"]["bands"]],
                               [b["mean"] for b in scenes["dim"]["bands"]] * gain + offset,
                               rtol=1e-6)

    scene = ChipDataset(chips, paired=True, norm_scope="scene", augment="none", cache=False)
    plain = ChipDataset(chips, paired=True, augment="none", cache=False)
    names = [p.name for p in scene.paths["a"]]
    for name in [n for n in names if n.startswith("dim_")]:
        i, j = names.index(name), names.index(name.replace("dim_", "bright_"))
        np.testing.assert_allclose(scene[j]["a"], scene[i]["a"], atol=1e-5)
        assert not np.allclose(plain[j]["a"], plain[i]["a"], atol=1e-2)  # what it fixes

    # prediction: the input's own statistics, from the whole raster
    spec = DomainSpec(3, "float32", [None] * 3, None, scene.norm["a"], norm_scope="scene",
                      reference=scene.reference["a"])
    normalized = []
    for path in (a1, a2):
        with open_raster(path) as ds:
            own = scene_spec(spec, ds, [1, 2, 3], None)
            data, valid = read_window(ds, Window(0, 0, 64, 64), [1, 2, 3])
            normalized.append(own.normalizer.to_model(data, valid))
    np.testing.assert_allclose(normalized[1], normalized[0], atol=1e-5)


def test_scene_scope_recorded_in_model_and_refused_without_scene_stats(tmp_path, make_raster):
    rng = np.random.default_rng(2)
    a = make_raster("a.tif", rng.integers(0, 200, (2, 64, 64)).astype(np.uint8))
    b = make_raster("b.tif", rng.integers(0, 200, (1, 64, 64)).astype(np.uint8))
    chips = tmp_path / "chips"
    export_tiles([a], [b], chips, tile_size=32, progress=False)
    run = train(TrainConfig("Pix2Pix", data_dir=str(chips), out=str(tmp_path / "run"),
                            norm_scope="scene", **TINY))
    saved = json.loads((run / "model.json").read_text())["domains"]["a"]
    assert saved["norm_scope"] == "scene" and len(saved["reference"]["mean"]) == 2
    assert load_model(run).domains["a"].norm_scope == "scene"
    predict_raster(a, run, tmp_path / "out.tif", device="cpu", progress=False)
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.read().std() > 0
        assert ds.tags()["GEOTRANSLATE_INPUT"] == "norm scope scene"
    # chip mode normalizes each chip by its scene, as training did
    report = evaluate_chips(run, chips, split="train", progress=False)
    assert report.metrics["overall"]["psnr"] > 0
    meta = json.loads((chips / "meta.json").read_text())
    for d in meta["domains"].values():
        del d["scene_stats"]  # as written before the option existed
    (chips / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="no per-scene statistics"):
        ChipDataset(chips, paired=True, norm_scope="scene")
    assert ChipDataset(chips, paired=True).norm_scope == "dataset"  # the default


# ---- relative elevation --------------------------------------------------------------------------


def test_relative_elevation_identical_on_chip_and_prediction_tile(tmp_path, make_raster):
    """A chip and a prediction read of another size and place give bit-identical values on
    the pixels they share, near the edges and nodata holes too."""
    dem = _terrain(90, 110)
    dem[40:46, 50:58] = -9999.0  # a hole
    a = make_raster("dsm.tif", dem, nodata=-9999.0)
    b = make_raster("ortho.tif", np.random.default_rng(0).integers(0, 255, (3, 90, 110))
                    .astype(np.uint8))
    chips = tmp_path / "chips"
    export_tiles([a], [b], chips, tile_size=32, stride=16, relative_elevation="6",
                 max_nodata=0.5, progress=False)
    meta = json.loads((chips / "meta.json").read_text())
    assert meta["domains"]["a"]["dtype"] == "float32"
    assert np.isnan(meta["domains"]["a"]["nodata"])
    assert meta["domains"]["a"]["input_transforms"] == [
        {"kind": "relative_elevation", "radius_px": 6, "bands": []}]
    spec = DomainSpec(1, "float32", [None], -9999.0, Normalizer("minmax", (0.0,), (1.0,)),
                      input_transforms=meta["domains"]["a"]["input_transforms"])
    read = input_reader(spec, [1])
    with open_raster(a) as ds:
        tile, tile_valid = read(ds, Window(5, 3, 70, 61))  # another size and offset
    checked = 0
    for chip in sorted((chips / "train_a").glob("*.tif")):
        row, col = (int(v) for v in chip.stem.rsplit("_", 2)[1:])
        with rasterio.open(chip) as ds:
            values, valid = ds.read(1), ds.read_masks(1) > 0
        r0, c0 = max(row, 3), max(col, 5)
        r1, c1 = min(row + 32, 64), min(col + 32, 75)
        if r1 <= r0 or c1 <= c0:
            continue
        mine = values[r0 - row:r1 - row, c0 - col:c1 - col]
        theirs = tile[0, r0 - 3:r1 - 3, c0 - 5:c1 - 5]
        both = valid[r0 - row:r1 - row, c0 - col:c1 - col]
        np.testing.assert_array_equal(both, tile_valid[r0 - 3:r1 - 3, c0 - 5:c1 - 5])
        np.testing.assert_array_equal(mine[both], theirs[both])
        checked += int(both.sum())
    assert checked > 2000
    # height minus the local mean: the regional slope is gone, the local relief stays
    assert abs(float(tile[0][tile_valid].mean())) < 1.0
    assert float(tile[0][tile_valid].std()) > 1.0


def test_relative_elevation_is_the_local_mean_removed():
    dem = _terrain(20, 20)
    valid = np.ones(dem.shape, bool)
    valid[5, 5] = False
    out = RelativeElevation(2).apply(dem[None], valid)[0]
    r, c = 10, 12
    box = dem[r - 2:r + 3, c - 2:c + 3][valid[r - 2:r + 3, c - 2:c + 3]]
    assert out[r, c] == pytest.approx(dem[r, c] - box.mean(), abs=1e-4)
    assert np.isnan(out[5, 5])
    with pytest.raises(GeotranslateError, match="RADIUS_PX"):
        RelativeElevation.parse("x")


# ---- several sensors in one domain ---------------------------------------------------------------


@pytest.fixture
def sensors(tmp_path, make_raster):
    """A float32 'SAR' raster at 20 m, a uint16 'optical' one at 10 m on a grid shifted by
    half a pixel, and a uint8 target on the SAR grid."""
    rng = np.random.default_rng(3)
    sar = make_raster("s1.tif", rng.normal(-12, 3, (2, 48, 48)).astype(np.float32),
                      transform=from_origin(500000.0, 5300000.0, 20.0, 20.0), nodata=-99.0,
                      descriptions=["VV", "VH"])
    optical = rng.integers(1000, 9000, (3, 110, 110)).astype(np.uint16)
    opt = make_raster("s2.tif", optical, transform=from_origin(499975.0, 5300015.0, 10.0, 10.0),
                      crs="EPSG:32633")
    target = make_raster("clear.tif", rng.integers(0, 255, (3, 48, 48)).astype(np.uint8),
                         transform=from_origin(500000.0, 5300000.0, 20.0, 20.0))
    return {"sar": sar, "opt": opt, "target": target}


def test_fused_domain_chips_equal_each_source_warped_onto_a_grid(tmp_path, sensors):
    chips = tmp_path / "chips"
    export_tiles([f"fuse:{sensors['sar']}+{sensors['opt']}"], [sensors["target"]], chips,
                 tile_size=16, progress=False)
    meta = json.loads((chips / "meta.json").read_text())
    dom = meta["domains"]["a"]
    assert dom["band_count"] == 5 and dom["dtype"] == "float32"
    assert [(p["band_count"], p["dtype"]) for p in dom["composition"]] == [
        (2, "float32"), (3, "uint16")]
    assert dom["band_descriptions"][:2] == ["VV", "VH"]
    with rasterio.open(sensors["sar"]) as sar, rasterio.open(sensors["opt"]) as opt:
        sar_values = sar.read()
        with WarpedVRT(opt, crs=sar.crs, transform=sar.transform, width=sar.width,
                       height=sar.height, resampling=Resampling.bilinear, dtype="float32",
                       nodata=float("nan")) as vrt:
            # band by band, as the fused VRT reads it (GDAL's multi-band warp path does not
            # widen the bilinear kernel when downsampling; the single-band path does)
            opt_values = np.stack([vrt.read(b) for b in (1, 2, 3)])
    chip_files = sorted((chips / "train_a").glob("*.tif"))
    assert len(chip_files) == 9
    for chip in chip_files:
        row, col = (int(v) for v in chip.stem.rsplit("_", 2)[1:])
        with rasterio.open(chip) as ds:
            values = ds.read()
        window = np.s_[:, row:row + 16, col:col + 16]
        np.testing.assert_array_equal(values[:2], sar_values[window])
        np.testing.assert_allclose(values[2:], opt_values[window], rtol=1e-6, atol=1e-3)
    # the optical grid is offset by half a 10 m pixel and coarser: values were interpolated
    assert not np.allclose(opt_values[0] % 1, 0)


def test_model_refuses_input_of_another_composition(tmp_path, sensors, make_raster):
    fused = f"fuse:{sensors['sar']}+{sensors['opt']}"
    chips = tmp_path / "chips"
    export_tiles([fused], [sensors["target"]], chips, tile_size=16, progress=False)
    run = train(TrainConfig("Pix2Pix", data_dir=str(chips), out=str(tmp_path / "run"), **TINY))
    assert len(load_model(run).domains["a"].composition) == 2
    summary = predict_raster(fused, run, tmp_path / "ok.tif", device="cpu", progress=False)
    assert summary.bands_in == 5
    with pytest.raises(GeotranslateError, match="would overwrite the input"):
        predict_raster(fused, run, sensors["opt"], device="cpu", progress=False, overwrite=True)
    swapped = f"fuse:{sensors['opt']}+{sensors['sar']}"
    with pytest.raises(GeotranslateError, match=r"raster 1 of the fuse .*3 uint16 band\(s\), "
                       r"but the model's domain A expects 2 float32"):
        predict_raster(swapped, run, tmp_path / "bad.tif", device="cpu", progress=False)
    five = make_raster("five.tif", np.zeros((5, 48, 48), np.float32))
    with pytest.raises(GeotranslateError, match="a single raster, but the model's domain A is "
                       "fused from 2 rasters"):
        predict_raster(five, run, tmp_path / "bad.tif", device="cpu", progress=False)


def test_a_extra_fuses_each_a_with_the_raster_covering_it(tmp_path, make_raster):
    rng = np.random.default_rng(4)
    west, east = (from_origin(x, 5300000.0, 10.0, 10.0) for x in (500000.0, 501000.0))
    a = [make_raster(f"s1_{k}.tif", rng.normal(size=(2, 32, 32)).astype(np.float32),
                     transform=t) for k, t in (("w", west), ("e", east))]
    extra = [make_raster(f"s2_{k}.tif", rng.integers(0, 9, (3, 32, 32)).astype(np.uint16),
                         transform=t) for k, t in (("e", east), ("w", west))]
    b = [make_raster(f"b_{k}.tif", rng.integers(0, 9, (1, 32, 32)).astype(np.uint8),
                     transform=t) for k, t in (("w", west), ("e", east))]
    chips = tmp_path / "chips"
    export_tiles(a, b, chips, tile_size=32, extra_a=[extra], progress=False)
    meta = json.loads((chips / "meta.json").read_text())
    sources = meta["domains"]["a"]["sources"]
    assert sources[0].endswith("s1_w.tif+" + str(extra[1].resolve()))
    assert sources[1].endswith("s1_e.tif+" + str(extra[0].resolve()))
    with rasterio.open(chips / "train_a" / "s1_e_0_0.tif") as ds, rasterio.open(extra[0]) as e:
        np.testing.assert_array_equal(ds.read()[2:], e.read().astype(np.float32))


def test_fuse_errors_are_one_line(sensors, tmp_path):
    from geotranslate.raster.sources import parse_source

    with pytest.raises(GeotranslateError, match="takes two rasters or more"):
        parse_source(f"fuse:{sensors['sar']}")
    with pytest.raises(GeotranslateError, match="no such file"):
        parse_source(f"fuse:{sensors['sar']}+{tmp_path / 'missing.tif'}")
    chips = tmp_path / "chips"
    with pytest.raises(GeotranslateError, match="--bands cannot select among fused bands"):
        export_tiles([f"fuse:{sensors['sar']}+{sensors['opt']}"], [sensors["target"]], chips,
                     tile_size=16, bands_a="1,2", progress=False)
