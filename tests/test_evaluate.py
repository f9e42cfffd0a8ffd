"""evaluate: raster mode (alignment, nodata, errors), chip mode (a real tiny model), CLI, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from builders import CHIP, val_chips, write_sar_rgb_chips
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from skimage.metrics import structural_similarity

from geotranslate.cli import main
from geotranslate.errors import GeotranslateError
from geotranslate.evaluate import evaluate_chips, evaluate_rasters

# ---- raster mode -------------------------------------------------------------------------------


def test_same_grid_known_shift_nodata_excluded(make_raster):
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 100, size=(2, 64, 80)).astype(np.float32)
    pred = ref + 5.0
    ref[:, 10:20, 10:30] = -9999.0  # nodata in REF
    pred[:, 40:50, 50:70] = -9999.0  # nodata in PRED
    pred[:, 10:20, 10:30] = 1e6  # garbage where REF has no data: must not count
    ref_path = make_raster("ref.tif", ref, nodata=-9999.0, descriptions=["VV", "VH"])
    pred_path = make_raster("pred.tif", pred, nodata=-9999.0)
    report = evaluate_rasters(pred_path, ref_path)
    m = report.metrics
    valid = np.ones((64, 80), dtype=bool)
    valid[10:20, 10:30] = False
    valid[40:50, 50:70] = False
    assert m["valid_pixels"] == valid.sum()
    assert not report.settings["reference_warped"]
    for b, band in enumerate(m["bands"]):
        assert band["mae"] == pytest.approx(5.0, rel=1e-5)
        assert band["rmse"] == pytest.approx(5.0, rel=1e-5)
        p2, p98 = np.percentile(ref[b][valid].astype(np.float64), [2, 98])
        assert band["data_range"] == pytest.approx(p98 - p2)
        assert band["psnr"] == pytest.approx(20 * math.log10((p98 - p2) / 5.0), rel=1e-5)
    assert [b["name"] for b in m["bands"]] == ["VV", "VH"]
    assert "p98 - p2" in report.settings["data_range_source"]


def test_tiles_count_every_pixel_once(make_raster):
    """Tiles that do not divide the raster (the last one flush with the edge) change nothing."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 100, size=(3, 50, 40)).astype(np.float32)
    pred = ref + rng.normal(0, 4, size=ref.shape).astype(np.float32)
    ref_path, pred_path = make_raster("ref.tif", ref), make_raster("pred.tif", pred)
    whole = evaluate_rasters(pred_path, ref_path, data_range=100.0).metrics
    tiled = evaluate_rasters(pred_path, ref_path, data_range=100.0, tile_size=16).metrics
    assert whole["valid_pixels"] == tiled["valid_pixels"] == 50 * 40
    for key in ("mae", "rmse", "psnr", "ssim", "sam_deg", "ergas"):
        assert tiled["overall"][key] == pytest.approx(whole["overall"][key], rel=1e-9)


def _ramp(easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
    """A linear field of EPSG:32633 coordinates: bilinear warping reproduces it exactly."""
    return 0.01 * (easting - 500000.0) + 0.02 * (northing - 5290000.0)


@pytest.mark.parametrize("ref_nodata", [None, -9999.0])
def test_aligns_reference_across_crs(make_raster, ref_nodata):
    # REF: 200 x 200 px at 10 m in UTM 33N; PRED: 15 m in UTM 32N, partly outside REF
    ref_transform = from_origin(500000.0, 5292000.0, 10.0, 10.0)
    rows, cols = np.mgrid[0:200, 0:200]
    east, north = ref_transform * (cols + 0.5, rows + 0.5)
    ref = _ramp(east, north)[None].astype(np.float32)
    if ref_nodata is not None:
        ref[:, 90:110, 90:110] = ref_nodata
    ref_path = make_raster("ref.tif", ref, transform=ref_transform, nodata=ref_nodata)

    # PRED grid in EPSG:32632 placed over REF's west part and beyond it
    x32, y32 = warp_transform("EPSG:32633", "EPSG:32632", [500000.0], [5292000.0])
    pred_transform = from_origin(x32[0] - 600.0, y32[0] - 300.0, 15.0, 15.0)
    prow, pcol = np.mgrid[0:100, 0:100]
    px, py = pred_transform * (pcol + 0.5, prow + 0.5)
    e33, n33 = warp_transform("EPSG:32632", "EPSG:32633", px.ravel(), py.ravel())
    e33, n33 = np.asarray(e33).reshape(px.shape), np.asarray(n33).reshape(px.shape)
    pred = _ramp(e33, n33) + 1.0
    dx, dy = e33 - 500000.0, 5292000.0 - n33  # metres from REF's top-left corner

    def within(lo: float, hi: float) -> np.ndarray:
        return (dx > lo) & (dx < hi) & (dy > lo) & (dy < hi)

    covered_surely, covered_maybe = within(15, 1985), within(0, 2000)
    if ref_nodata is not None:  # REF's hole spans 900..1100 m
        covered_surely &= ~within(880, 1120)
        covered_maybe &= ~within(920, 1080)
        pred[within(920, 1080)] = 1e6  # garbage where REF has no data: must not count
    pred[dx <= 0] = 1e6  # garbage outside REF: must not count either
    pred_path = make_raster(
        "pred.tif", pred[None].astype(np.float32), crs="EPSG:32632", transform=pred_transform
    )
    report = evaluate_rasters(pred_path, ref_path)
    m = report.metrics
    assert report.settings["reference_warped"]
    assert report.settings["crs"] == "EPSG:32632"
    # a misaligned comparison of this ramp would be off by tens of units
    assert m["bands"][0]["mae"] == pytest.approx(1.0, abs=0.05)
    assert m["bands"][0]["rmse"] == pytest.approx(1.0, abs=0.1)
    assert covered_surely.sum() <= m["valid_pixels"] <= covered_maybe.sum()


def test_raster_errors(make_raster, tmp_path):
    data = np.ones((2, 32, 32), dtype=np.float32)
    a = make_raster("a.tif", data)
    far = make_raster("far.tif", data, transform=from_origin(900000.0, 5300000.0, 10.0, 10.0))
    three = make_raster("three.tif", np.ones((3, 32, 32), dtype=np.float32))
    empty = make_raster("empty.tif", np.full((2, 32, 32), -1.0, dtype=np.float32), nodata=-1.0)
    no_crs = make_raster("nocrs.tif", data, crs=None)
    with pytest.raises(GeotranslateError, match="do not overlap"):
        evaluate_rasters(a, far)
    with pytest.raises(GeotranslateError, match="band counts must match"):
        evaluate_rasters(a, three)
    with pytest.raises(GeotranslateError, match="all nodata"):
        evaluate_rasters(a, empty)
    with pytest.raises(GeotranslateError, match="all nodata"):
        evaluate_rasters(empty, a, data_range=1.0)
    with pytest.raises(GeotranslateError, match="missing.tif: no such file"):
        evaluate_rasters(a, tmp_path / "missing.tif")
    with pytest.raises(GeotranslateError, match="no CRS"):
        evaluate_rasters(a, no_crs, allow_no_crs=True)


def test_cli_raster_mode_table_and_json(make_raster, tmp_path, capsys):
    ref = np.random.default_rng(3).uniform(0, 50, size=(3, 48, 48)).astype(np.float32)
    a = make_raster("a.tif", ref)
    b = make_raster("b.tif", ref.copy())
    out = tmp_path / "report.json"
    assert main(["evaluate", str(a), str(b), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "inf" in table and "SAM" in table
    doc = json.loads(out.read_text())
    overall = doc["metrics"]["overall"]
    assert overall["psnr"] == "inf" and float(overall["psnr"]) == math.inf
    assert overall["mae"] == 0.0 and overall["sam_deg"] == 0.0
    assert overall["ssim"] == pytest.approx(1.0)
    assert doc["settings"]["reference"] == str(b) and len(doc["settings"]["data_range"]) == 3
    assert not list(tmp_path.glob("*.part"))

    assert main(["evaluate", str(a), str(tmp_path / "nope.tif")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotranslate: error:") and "nope.tif" in err and "\n" not in err
    assert main(["evaluate", str(a)]) == 1
    assert "PRED.tif REF.tif" in capsys.readouterr().err


# ---- chip mode ---------------------------------------------------------------------------------

def _by_hand(chips, g_ab, model):
    """Metrics of the val chips computed independently of geotranslate.metrics."""
    import rasterio

    src_norm = model.domains["a"].normalizer
    tgt_norm = model.domains["b"].normalizer
    low, high = np.array(tgt_norm.low)[:, None, None], np.array(tgt_norm.high)[:, None, None]
    errors, ssim_sums, count = [], np.zeros(3), 0
    for path in sorted((chips / "val_a").glob("*.tif")):
        with rasterio.open(path) as ds:
            a = ds.read()
        with rasterio.open(chips / "val_b" / path.name) as ds:
            b = ds.read().astype(np.float64)
        valid = (a != -9999.0).all(axis=0) & (b != 0).all(axis=0)
        x = src_norm.to_model(a, (a != -9999.0).all(axis=0))
        with torch.no_grad():
            y = g_ab(torch.from_numpy(x[None]))[0].numpy().astype(np.float64)
        pred = np.clip(np.rint((y + 1) / 2 * (high - low) + low), 0, 65535)
        errors.append((pred - b)[:, valid])
        for k in range(3):
            fill_p = np.where(valid, pred[k], pred[k][valid].mean())
            fill_b = np.where(valid, b[k], b[k][valid].mean())
            _, ssim_map = structural_similarity(
                fill_p, fill_b, data_range=float(high[k, 0, 0] - low[k, 0, 0]), full=True
            )
            ssim_sums[k] += ssim_map[valid].sum()
        count += int(valid.sum())
    err = np.concatenate(errors, axis=1)
    return err, ssim_sums / count, count


def test_chip_mode_matches_hand_computation(chip_model):
    chips, run_dir, g_ab, model = chip_model
    report = evaluate_chips(run_dir, chips, split="val", direction="a2b", batch_size=2,
                            norm_stats="tile", data_range="model")
    assert report.settings["norm_stats"] == "per-tile"
    err, ssim, count = _by_hand(chips, g_ab, model)
    m = report.metrics
    assert m["valid_pixels"] == count == 3 * CHIP * CHIP - CHIP * 5 - 4 * 6
    # batched vs single-chip forward passes differ in float rounding, which can flip the
    # integer rounding of a pixel or two: hence rtol 1e-5, not machine precision
    np.testing.assert_allclose([b["mae"] for b in m["bands"]], np.abs(err).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(
        [b["rmse"] for b in m["bands"]], np.sqrt((err**2).mean(axis=1)), rtol=1e-5
    )
    np.testing.assert_allclose([b["ssim"] for b in m["bands"]], ssim, rtol=1e-4)
    assert report.settings["data_range"] == [3500.0, 3650.0, 2800.0]
    assert "normalizer" in report.settings["data_range_source"]
    assert report.settings["chips"] == 3 and report.settings["split"] == "val"
    assert m["overall"]["sam_deg"] > 0 and m["overall"]["ergas"] > 0
    # the train split works too and gives other figures
    train = evaluate_chips(run_dir, chips, split="train", batch_size=4)
    assert train.metrics["valid_pixels"] == 2 * CHIP * CHIP - CHIP * 5 - 4 * 6
    assert train.metrics["overall"]["mae"] != m["overall"]["mae"]


def test_chip_mode_scene_statistics_are_those_of_the_split(chip_model):
    # by default instance norms get the statistics of (a bounded sample of) the split's
    # source chips, as predict-raster gives them those of the scene: here all 3 val chips
    import rasterio

    from geotranslate.models.norms import scene_normalized

    chips, run_dir, g_ab, model = chip_model
    src_norm = model.domains["a"].normalizer
    sample = []
    for path in sorted((chips / "val_a").glob("*.tif")):
        with rasterio.open(path) as ds:
            a = ds.read()
        sample.append(src_norm.to_model(a, (a != -9999.0).all(axis=0)))
    frozen, _ = scene_normalized(g_ab, torch.from_numpy(np.stack(sample)))
    report = evaluate_chips(run_dir, chips, split="val", batch_size=2)
    assert report.settings["norm_stats"] == f"scene-sample 3 tiles of {CHIP} px"
    err, _, _ = _by_hand(chips, frozen, model)
    np.testing.assert_allclose([b["mae"] for b in report.metrics["bands"]],
                               np.abs(err).mean(axis=1), rtol=1e-5)
    per_chip = evaluate_chips(run_dir, chips, split="val", batch_size=2, norm_stats="tile")
    assert per_chip.metrics["overall"]["mae"] != report.metrics["overall"]["mae"]


def test_chip_mode_errors(chip_model, tmp_path):
    chips, run_dir, _, _ = chip_model
    with pytest.raises(GeotranslateError, match="has no b2a generator"):
        evaluate_chips(run_dir, chips, direction="b2a")
    no_val = tmp_path / "no_val"
    write_sar_rgb_chips(no_val, "train", 1, seed=5)
    with pytest.raises(GeotranslateError, match="--val-fraction"):
        evaluate_chips(run_dir, no_val, split="val")
    with pytest.raises(GeotranslateError, match="no such chip directory"):
        evaluate_chips(run_dir, tmp_path / "nowhere")


def test_cli_chip_mode(chip_model, tmp_path, capsys):
    chips, run_dir, _, _ = chip_model
    out = tmp_path / "chips.json"
    code = main(["evaluate", "--model", str(run_dir), "--data", str(chips), "--device", "cpu",
                 "--json", str(out)])
    assert code == 0
    assert "overall" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["mode"] == "chips" and doc["settings"]["direction"] == "a2b"
    assert len(doc["metrics"]["bands"]) == 3


# ---- the flat-image baseline -------------------------------------------------------------------


def _flat_by_hand(levels, ref, valid, ranges) -> dict:
    """MAE, RMSE, PSNR, SSIM of a flat image at ``levels`` against ``ref`` (numpy, skimage)."""
    flat = np.asarray(levels, dtype=np.float64)[:, None, None] * np.ones(ref.shape)
    err = (flat - ref)[:, valid]
    mse = (err**2).mean(axis=1)
    ssim = []
    for k in range(len(ref)):
        _, ssim_map = structural_similarity(
            flat[k], np.where(valid, ref[k], ref[k][valid].mean()),
            data_range=float(ranges[k]), win_size=7, full=True)
        ssim.append(ssim_map[valid].mean())
    return {"mae": np.abs(err).mean(), "rmse": np.sqrt(mse.mean()),
            "psnr": 10 * np.log10(1 / (mse / np.asarray(ranges) ** 2).mean()),
            "ssim": np.mean(ssim)}


def test_raster_mode_reports_the_flat_image_at_the_reference_mean(make_raster, tmp_path,
                                                                   capsys):
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:48, 0:56]
    ref = np.stack([100 + 40 * np.sin(xx / 7.0) + yy, 20 + 0.5 * xx * np.cos(yy / 5.0)])
    ref = (ref + rng.normal(0, 2, ref.shape)).astype(np.float32)
    pred = (ref + rng.normal(0, 6, ref.shape)).astype(np.float32)
    ref[:, :6, :9] = -9999.0  # nodata in REF
    pred[:, 30:34, 40:] = np.nan  # NaN in PRED
    valid = np.ones((48, 56), dtype=bool)
    valid[:6, :9] = False
    valid[30:34, 40:] = False
    ref_path = make_raster("ref.tif", ref, nodata=-9999.0)
    pred_path = make_raster("pred.tif", pred)
    out = tmp_path / "report.json"
    assert main(["evaluate", str(pred_path), str(ref_path), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    ref64 = ref.astype(np.float64)
    levels = [ref64[k][valid].mean() for k in range(2)]
    np.testing.assert_allclose(doc["baseline"]["levels"], levels, rtol=1e-12)
    ranges = [np.subtract(*np.percentile(ref64[k][valid], [98, 2])) for k in range(2)]
    by_hand = _flat_by_hand(levels, ref64, valid, ranges)
    flat = doc["baseline"]["metrics"]["overall"]
    for key in ("mae", "rmse", "psnr", "ssim"):
        assert flat[key] == pytest.approx(by_hand[key], rel=1e-6), key
    assert doc["baseline"]["metrics"]["valid_pixels"] == valid.sum()
    assert flat["psnr"] < doc["metrics"]["overall"]["psnr"]  # a noisy copy beats it
    row = next(line for line in table.splitlines() if line.startswith("flat image "))
    assert f"{by_hand['psnr']:.2f}" in row and f"{by_hand['ssim']:.4f}" in row
    assert "the mean of the reference" in table and "no better than" not in table
    # a given data range is used for the baseline too; a flat prediction beside the mean is
    # worse than it
    flat = (np.asarray(levels)[:, None, None] + 1.0) * np.ones((2, 48, 56))
    flat[:, 30:34, 40:] = np.nan
    flat_pred = make_raster("flatpred.tif", flat.astype(np.float32))
    report = evaluate_rasters(flat_pred, ref_path, data_range=50.0)
    assert report.baseline["metrics"]["overall"]["psnr"] == pytest.approx(
        _flat_by_hand(levels, ref64, valid, [50.0, 50.0])["psnr"], rel=1e-5)
    assert "no better than the flat image (PSNR, SSIM)" in report.format_table()


def test_evaluate_flags_an_ssim_below_the_flat_image(make_raster):
    # a prediction with the right mean and a fair PSNR whose texture is noise: better than the
    # flat image in PSNR, worse in SSIM, and the report says so
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    ref = (100 + 20 * np.sin(xx / 25.0) * np.cos(yy / 30.0))[None].astype(np.float32)
    pred = (ref + rng.normal(0, 5, ref.shape)).astype(np.float32)
    report = evaluate_rasters(make_raster("noisy.tif", pred), make_raster("ref.tif", ref))
    model, flat = report.metrics["overall"], report.baseline["metrics"]["overall"]
    assert model["psnr"] > flat["psnr"] and model["ssim"] < flat["ssim"], (model, flat)
    assert "the translation is no better than the flat image (SSIM)" in report.format_table()


def _write_meta(chips, means_b) -> None:
    """A complete meta.json for the chip fixture; B's training means are ``means_b``."""
    def stats(means):
        return {"method": "exact", "sample_size": 10, "valid_pixels": 10,
                "bands": [{"min": 0.0, "max": 1.0, "mean": m, "std": 1.0, "p2": 0.0,
                           "p98": 1.0, "count": 10} for m in means]}
    def domain(dtype, means):
        return {"sources": ["x.tif"], "bands": list(range(1, len(means) + 1)),
                "band_count": len(means), "dtype": dtype, "stats": stats(means)}
    meta = {"format": "geotranslate-chips", "format_version": 1, "tile_size": CHIP,
            "dataset_type": "paired",
            "domains": {"a": domain("float32", [-12, -12]), "b": domain("uint16", means_b)}}
    (chips / "meta.json").write_text(json.dumps(meta))


def test_chip_mode_reports_the_flat_image_at_the_training_mean(chip_model, tmp_path, capsys):
    import rasterio

    chips, run_dir, _, model = chip_model
    report = evaluate_chips(run_dir, chips, split="val")
    assert report.baseline is None and "no flat-image baseline" in report.notes[0]
    means = [1900.0, 2100.5, 1750.25]
    _write_meta(chips, means)
    out = tmp_path / "chips.json"
    assert main(["evaluate", "--model", str(run_dir), "--data", str(chips), "--json",
                 str(out), "--data-range", "model"]) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["baseline"]["levels"] == means
    refs, valids = [], []
    for path in sorted((chips / "val_b").glob("*.tif")):
        with rasterio.open(chips / "val_a" / path.name) as ds:
            valid = (ds.read() != -9999.0).all(axis=0)
        with rasterio.open(path) as ds:
            b = ds.read().astype(np.float64)
        refs.append(b)
        valids.append(valid & (b != 0).all(axis=0))
    ranges = [h - lo for lo, h in zip(model.domains["b"].normalizer.low,
                                      model.domains["b"].normalizer.high, strict=True)]
    # pooled over the chips: errors over all valid pixels, SSIM maps summed per chip
    err = np.concatenate([(np.asarray(means)[:, None] - r[:, v]) for r, v in
                          zip(refs, valids, strict=True)], axis=1)
    mse = (err**2).mean(axis=1)
    ssim_sum = sum(_flat_by_hand(means, r, v, ranges)["ssim"] * v.sum()
                   for r, v in zip(refs, valids, strict=True))
    flat = doc["baseline"]["metrics"]["overall"]
    assert flat["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
    assert flat["rmse"] == pytest.approx(np.sqrt(mse.mean()), rel=1e-9)
    assert flat["psnr"] == pytest.approx(
        10 * np.log10(1 / (mse / np.asarray(ranges) ** 2).mean()), rel=1e-9)
    assert flat["ssim"] == pytest.approx(ssim_sum / sum(v.sum() for v in valids), rel=1e-6)
    assert "training mean of domain b" in table and "flat image " in table
    _write_meta(chips, means[:2])
    with pytest.raises(GeotranslateError, match="statistics of 2 bands, but the model's has 3"):
        evaluate_chips(run_dir, chips, split="val")


# ---- one data-range convention, --bands / --bands-ref, --aoi / --exclude -----------------------


def test_chip_mode_default_range_is_the_references_p2_p98_as_in_raster_mode(chip_model):
    chips, run_dir, _, _ = chip_model
    report = evaluate_chips(run_dir, chips, split="val")
    refs = [b[:, valid & (b != 0).all(axis=0)] for b, valid in val_chips(chips)]
    p2, p98 = np.percentile(np.concatenate(refs, axis=1), [2, 98], axis=1)
    np.testing.assert_allclose(report.settings["data_range"], p98 - p2, rtol=1e-12)
    assert report.settings["data_range_source"].startswith(
        "p98 - p2 of the reference's valid pixels in the split's chips (exact")
    # the model's normalization range on request: the same errors, PSNR shifted by the ratio
    model_range = evaluate_chips(run_dir, chips, split="val", data_range="model")
    assert model_range.settings["data_range"] == [3500.0, 3650.0, 2800.0]
    assert model_range.metrics["overall"]["mae"] == report.metrics["overall"]["mae"]
    for b, band in enumerate(model_range.metrics["bands"]):
        shift = 20 * math.log10(band["data_range"] / (p98[b] - p2[b]))
        assert band["psnr"] == pytest.approx(report.metrics["bands"][b]["psnr"] + shift)


def _pair(make_raster, bands_ref: int = 3, size=(64, 80)):
    rng = np.random.default_rng(11)
    ref = rng.uniform(0, 1000, size=(bands_ref, *size)).astype(np.float32)
    ref[:, 30:34, 40:44] = -9999.0
    transform = from_origin(500000, 5300000, 10, 10)
    names = [f"b{i + 1}" for i in range(bands_ref)]
    return rng, ref, transform, names


def _figures(doc: dict) -> dict:
    """What must agree: every figure, the data range and the flat image (not the paths)."""
    return {"metrics": doc["metrics"], "baseline": doc["baseline"],
            "data_range": doc["settings"]["data_range"]}


def test_bands_ref_and_bands_give_the_figures_of_a_band_subset(make_raster, tmp_path):
    rng, ref, transform, names = _pair(make_raster, bands_ref=6)
    pred = ref[[1, 3, 4]] + rng.normal(0, 30, size=(3, 64, 80)).astype(np.float32)
    pred[:, 30:34, 40:44] = -9999.0
    extra = np.concatenate([pred[:2], rng.uniform(0, 9, (1, 64, 80)).astype(np.float32),
                            pred[2:]])  # PRED with a 4th band to leave out: 1,2,4
    for name, data in [("ref6.tif", ref), ("ref3.tif", ref[[1, 3, 4]]), ("pred.tif", pred),
                       ("pred4.tif", extra)]:
        make_raster(name, data, nodata=-9999.0, transform=transform)
    docs = {}
    for key, args in {
        "by_hand": ["pred.tif", "ref3.tif"],
        "bands_ref": ["pred.tif", "ref6.tif", "--bands-ref", "2,4,5"],
        "both": ["pred4.tif", "ref6.tif", "--bands", "1,2,4", "--bands-ref", "2,4,5"],
    }.items():
        out = tmp_path / f"{key}.json"
        paths = [str(tmp_path / a) if a.endswith(".tif") else a for a in args]
        assert main(["evaluate", *paths, "--json", str(out)]) == 0
        docs[key] = json.loads(out.read_text())
    assert _figures(docs["bands_ref"]) == _figures(docs["by_hand"])
    assert _figures(docs["both"]) == _figures(docs["by_hand"])
    assert docs["both"]["settings"]["bands"] == [1, 2, 4]
    assert docs["both"]["settings"]["bands_ref"] == [2, 4, 5]
    with pytest.raises(GeotranslateError, match="pick them with --bands / --bands-ref"):
        evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref6.tif")
    with pytest.raises(GeotranslateError, match="band 7 out of range"):
        evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref6.tif", bands_ref="2,4,7")


def _geojson(path, rings, crs: str) -> None:
    import geopandas as gpd
    from shapely.geometry import Polygon

    gpd.GeoDataFrame({"name": [f"p{i}" for i in range(len(rings))]},
                     geometry=[Polygon(r) for r in rings], crs=crs).to_file(path)


def test_aoi_in_another_crs_gives_the_figures_of_the_cut_raster(make_raster, tmp_path):
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    rng, ref, transform, _ = _pair(make_raster)
    pred = ref + rng.normal(0, 40, size=ref.shape).astype(np.float32)
    pred[:, 30:34, 40:44] = -9999.0
    make_raster("ref.tif", ref, nodata=-9999.0, transform=transform)
    make_raster("pred.tif", pred, nodata=-9999.0, transform=transform)
    rows, cols = slice(5, 45), slice(10, 50)  # the AOI: these pixels, as lon/lat corners
    corners = [transform * (c, r) for c, r in ((10, 5), (50, 5), (50, 45), (10, 45))]
    lon, lat = warp_transform("EPSG:32633", "EPSG:4326", *zip(*corners, strict=True))
    _geojson(tmp_path / "aoi.geojson", [list(zip(lon, lat, strict=True))], "EPSG:4326")
    cut = window_transform(Window(10, 5, 40, 40), transform)
    make_raster("ref_cut.tif", ref[:, rows, cols], nodata=-9999.0, transform=cut)
    make_raster("pred_cut.tif", pred[:, rows, cols], nodata=-9999.0, transform=cut)
    by_hand = evaluate_rasters(tmp_path / "pred_cut.tif", tmp_path / "ref_cut.tif")
    with_aoi = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif",
                                aoi=tmp_path / "aoi.geojson")
    assert with_aoi.metrics == by_hand.metrics
    assert with_aoi.baseline == by_hand.baseline
    assert with_aoi.settings["data_range"] == by_hand.settings["data_range"]
    assert with_aoi.metrics["valid_pixels"] == 40 * 40 - 16
    assert "inside --aoi" in with_aoi.settings["data_range_source"]
    # --exclude leaves out the pixels whose centres are inside its polygons (here 8 x 6)
    x0, y0 = transform * (20, 10)
    _geojson(tmp_path / "hole.geojson", [[(x0, y0), (x0 + 60, y0), (x0 + 60, y0 - 80),
                                          (x0, y0 - 80)]], "EPSG:32633")
    holed = evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif",
                             aoi=tmp_path / "aoi.geojson", exclude=tmp_path / "hole.geojson",
                             data_range=1000.0)
    keep = (pred != -9999.0).all(axis=0)
    keep[10:18, 20:26] = False
    err = (pred - ref)[:, rows, cols][:, keep[rows, cols]].astype(np.float64)
    assert holed.metrics["valid_pixels"] == 40 * 40 - 16 - 48
    np.testing.assert_allclose([b["mae"] for b in holed.metrics["bands"]],
                               np.abs(err).mean(axis=1), rtol=1e-9)
    with pytest.raises(GeotranslateError, match="--aoi-where needs --aoi"):
        evaluate_rasters(tmp_path / "pred.tif", tmp_path / "ref.tif", aoi_where="split=val")


def test_aoi_from_index_gpkg_scores_the_validation_blocks(make_raster, tmp_path, capsys):
    import geopandas as gpd
    import rasterio

    from geotranslate.chips.export import export_tiles

    rng, ref, transform, _ = _pair(make_raster, size=(128, 128))
    ref[:, 30:34, 40:44] = 1.0  # no nodata here: the validation blocks are whole chips
    pred = ref + rng.normal(0, 40, size=ref.shape).astype(np.float32)
    make_raster("ref.tif", ref, transform=transform)
    make_raster("pred.tif", pred, transform=transform)
    export_tiles([str(tmp_path / "pred.tif")], [str(tmp_path / "ref.tif")], tmp_path / "chips",
                 tile_size=16, val_fraction=0.25, progress=False)
    in_val = np.zeros((128, 128), dtype=bool)
    for path in (tmp_path / "chips" / "val_b").glob("*.tif"):
        with rasterio.open(path) as ds:
            c, r = ~transform * (ds.bounds.left, ds.bounds.top)
            in_val[round(r):round(r) + 16, round(c):round(c) + 16] = True
    assert 0 < in_val.sum() < 128 * 128
    index = tmp_path / "chips" / "index.gpkg"
    assert set(gpd.read_file(index)["split"]) == {"train", "val"}
    out = tmp_path / "val.json"
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.tif"), "--aoi",
                 str(index), "--aoi-where", "split=val", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    err = (pred - ref)[:, in_val].astype(np.float64)
    assert doc["metrics"]["valid_pixels"] == in_val.sum()
    np.testing.assert_allclose([b["mae"] for b in doc["metrics"]["bands"]],
                               np.abs(err).mean(axis=1), rtol=1e-9)
    p2, p98 = np.percentile(ref[:, in_val].astype(np.float64), [2, 98], axis=1)
    np.testing.assert_allclose(doc["settings"]["data_range"], p98 - p2, rtol=1e-9)
    # a column that is not there, a value that selects nothing: one line each
    for where, message in [("fold=val", "no column 'fold'"),
                           ("split=test", "holds no geometries matching split=test"),
                           ("split", "expected COLUMN=VALUE")]:
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.tif"),
                     "--aoi", str(index), "--aoi-where", where]) == 1
        err_line = capsys.readouterr().err.strip()
        assert message in err_line and len(err_line.splitlines()) == 1
