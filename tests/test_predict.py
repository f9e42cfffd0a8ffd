"""predict-raster: georeference, nodata, exact stitching, seams, COG, scale-out and bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import make_model, predict_interrupted, textured_field
from rasterio.transform import Affine

from geotranslate.cli import main as cli_main
from geotranslate.errors import GeotranslateError
from geotranslate.predict import predict_raster
from geotranslate.raster.windows import tile_offsets


def _no_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".part" in p.name]


# ---- georeference, dtype, nodata ------------------------------------------------------------


def test_output_georeference_dtype_and_nodata(tmp_path, make_raster):
    run = make_model(tmp_path, dtype_b="uint16", nodata_b=0, range_b=(-40.0, 60.0),
                     range_a=(-30.0, 0.0), nodata_a=-9999.0)
    data = np.random.default_rng(1).uniform(-30, 0, (2, 90, 70)).astype("float32")
    data[:, 10:20, 30:50] = -9999.0
    data[1, 50, 5] = np.nan
    transform = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
    src = make_raster("sar.tif", data, nodata=-9999.0, transform=transform, crs="EPSG:32633")
    summary = predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert summary.tiles > 0 and summary.width == 70 and summary.height == 90
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs.to_epsg() == 32633
        assert out.transform == transform
        assert (out.width, out.height, out.count) == (70, 90, 3)
        assert out.dtypes == ("uint16",) * 3
        assert out.nodata == 0
        assert out.descriptions == ("b0", "b1", "b2")
        assert out.block_shapes[0] == (256, 256)
        assert out.compression is not None
        y = out.read()
    invalid = np.zeros((90, 70), bool)
    invalid[10:20, 30:50] = True
    invalid[50, 5] = True
    assert (y[:, invalid] == 0).all()
    # valid pixels never equal nodata: with a target range down to -40, many clip to the
    # bottom of uint16 and must be moved to 1
    assert (y[:, ~invalid] >= 1).all()
    assert (y[:, ~invalid] == 1).any() and (y[:, ~invalid] > 1).any()


def test_float_output_without_declared_nodata_uses_nan(tmp_path, make_raster):
    # GDAL honours an alpha band as a mask for Byte and UInt16 rasters
    data = textured_field(2, 40, 40)
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:5] = 0
    src = make_raster("in.tif", (data * 100 + 1000).astype("uint16"), alpha=alpha)
    run = make_model(tmp_path, dtype_a="uint16", range_a=(900, 1100))
    predict_raster(src, run, tmp_path / "out.tif", progress=False)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert np.isnan(out.nodata)
        y = out.read()
    assert np.isnan(y[:, :5]).all() and np.isfinite(y[:, 5:]).all()


def test_tiles_without_valid_pixels_are_skipped(tmp_path, make_raster):
    run = make_model(tmp_path)
    data = textured_field(2, 200, 64)
    data[:, :120] = -9999.0
    src = make_raster("in.tif", data, nodata=-9999.0)
    summary = predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert 0 < summary.tiles_skipped < summary.tiles
    with rasterio.open(tmp_path / "out.tif") as out:
        y = out.read()
    assert np.isnan(y[:, :120]).all() and np.isfinite(y[:, 120:]).all()


# ---- stitching is exact ---------------------------------------------------------------------


def _reference(run: Path, data: np.ndarray, margin: int) -> np.ndarray:
    """One forward pass over the whole image mirrored by ``margin`` (as predict pads), cropped."""
    from geotranslate.modelfile import load_model

    model = load_model(run)
    x = torch.from_numpy(np.pad(data, ((0, 0), (margin, margin), (margin, margin)), "reflect"))
    with torch.inference_mode():
        y = model.generator("a2b")(x[None])[0].numpy()
    return y[:, margin:-margin, margin:-margin]


@pytest.mark.parametrize("blend", ["hann", "linear", "none"])
def test_tiled_blended_output_equals_whole_image_pass(tmp_path, make_raster, blend):
    # no normalization layers: the network is equivariant to shifts by its stride (4), so with
    # a stride-40 grid and an overlap whose dead band (24 px) exceeds how far the network's
    # own padding reaches into a tile (about 21 px for this one, whose decoder resizes and
    # pads at the finer grid), every blended pixel equals the whole-image pass;
    # chunk_width=256 forces two column chunks, checking their border
    run = make_model(tmp_path)
    data = textured_field(2, 120, 300)
    src = make_raster("in.tif", data)
    predict_raster(src, run, tmp_path / "out.tif", tile_size=128, overlap=88, blend=blend,
                   batch_size=5, chunk_width=256, progress=False, precision="fp32")
    with rasterio.open(tmp_path / "out.tif") as out:
        y = out.read()
    expected = _reference(run, data, 88)
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=0)


def test_window_reads_context_around_it_and_matches_whole_image(tmp_path, make_raster):
    run = make_model(tmp_path)
    data = textured_field(2, 300, 76, seed=3)
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 9000.0)
    src = make_raster("in.tif", data, transform=transform)
    expected = _reference(run, data, 80)
    # a window away from the edges reads real context around it
    predict_raster(src, run, tmp_path / "win.tif", tile_size=128, overlap=80,
                   window="40,8,64,60", progress=False, precision="fp32")
    with rasterio.open(tmp_path / "win.tif") as out:
        assert out.transform == transform * Affine.translation(8, 40)
        np.testing.assert_allclose(out.read(), expected[:, 40:104, 8:68], atol=1e-4, rtol=0)


def test_rank_parts_join_into_exactly_the_whole_run(tmp_path, make_raster):
    # the parts use the whole run's tile grid (tiles at a part border are computed by both
    # parts), so even with instance norm, whose tiles differ from any other tiling, the parts
    # are the whole run's rows
    run = make_model(tmp_path, norm="instance", smooth=True, seed=2)
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 9000.0)
    src = make_raster("in.tif", textured_field(2, 300, 70, seed=4), transform=transform)
    predict_raster(src, run, tmp_path / "whole.tif", progress=False)
    with rasterio.open(tmp_path / "whole.tif") as out:
        whole = out.read()
    windows = []
    for rank in range(2):
        s = predict_raster(src, run, tmp_path / f"part{rank}.tif", rank=rank, world_size=2,
                           progress=False)
        windows.append(s.window)
        with rasterio.open(tmp_path / f"part{rank}.tif") as out:
            row0 = s.window[0]
            assert out.transform == transform * Affine.translation(0, row0)
            np.testing.assert_allclose(out.read(), whole[:, row0 : row0 + out.height],
                                       atol=1e-5, rtol=0)
    assert windows == [(0, 0, 256, 70), (256, 0, 44, 70)]


# ---- seams with instance norm ----------------------------------------------------------------


def _seam_ratio(y: np.ndarray, tile: int, overlap: int) -> float:
    """Mean |step| across the cuts between tiles / mean |step| elsewhere, rows and columns."""
    ratios = []
    for axis, length in ((2, y.shape[2]), (1, y.shape[1])):
        offsets = tile_offsets(length + overlap, tile, tile - overlap, start=-overlap)
        cuts = {c + overlap // 2 for c in offsets[1:] if 0 < c + overlap // 2 < length}
        steps = np.abs(np.diff(y, axis=axis)).mean(axis=tuple(i for i in (0, 1, 2) if i != axis))
        at_cut = [steps[c - 1] for c in sorted(cuts)]
        inside = [s for i, s in enumerate(steps) if i + 1 not in cuts]
        ratios.append(np.mean(at_cut) / np.mean(inside))
    return float(np.mean(ratios))


def test_instance_norm_seams_hidden_by_hann_visible_without_blend(tmp_path, make_raster):
    # instance norm with per-tile statistics (--norm-stats tile) normalizes each tile by its
    # own statistics, so neighbouring tiles disagree
    yy, xx = np.mgrid[0:192, 0:192] / 192
    data = np.stack([np.sin(7 * xx + b) * np.cos(5 * yy - b) for b in range(2)])
    data += 0.1 * np.random.default_rng(0).uniform(-1, 1, data.shape)
    src = make_raster("in.tif", data.astype("float32"))
    for seed in (2, 3):
        run = make_model(tmp_path, norm="instance", seed=seed, smooth=True, name=f"run{seed}")
        ratios = {}
        for blend in ("hann", "linear", "none"):
            out_path = tmp_path / f"{blend}{seed}.tif"
            predict_raster(src, run, out_path, tile_size=64, overlap=32, blend=blend,
                           norm_stats="tile", progress=False)
            with rasterio.open(out_path) as out:
                ratios[blend] = _seam_ratio(out.read(), 64, 32)
        assert ratios["hann"] < 1.3 and ratios["linear"] < 1.3, ratios
        assert ratios["none"] > 3.0, ratios


# ---- georeference quirks, COG, tiny rasters --------------------------------------------------


def test_rotated_transform_without_crs_is_kept_with_warning(tmp_path, make_raster, capsys):
    run = make_model(tmp_path, bands_a=1, bands_b=1)
    rotated = Affine(20.0, 5.0, 100.0, 10.0, -10.0, 200.0)
    src = make_raster("rot.tif", textured_field(1, 50, 40), crs=None, transform=rotated)
    predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert "no CRS" in capsys.readouterr().err
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None
        assert out.transform == rotated


def test_raster_smaller_than_a_tile(tmp_path, make_raster):
    from geotranslate.modelfile import load_model

    run = make_model(tmp_path, bands_a=1, bands_b=2)
    data = np.array([[[0.1, -0.3], [0.5, 0.2], [-0.9, 0.0]]], "float32")
    src = make_raster("tiny.tif", data)
    s = predict_raster(src, run, tmp_path / "out.tif", overlap=16, progress=False,
                       precision="fp32")
    assert s.tiles == 1
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.height, out.width, out.count) == (3, 2, 2)
        y = out.read()
    # the one 64 px tile starts 16 px (the overlap) above and left of the raster and shows
    # the raster mirrored over and over, as numpy's reflect padding does
    tile_input = np.pad(data, ((0, 0), (16, 64 - 16 - 3), (16, 64 - 16 - 2)), mode="reflect")
    with torch.inference_mode():
        expected = load_model(run).generator("a2b")(torch.from_numpy(tile_input)[None])[0]
    np.testing.assert_allclose(y, expected[:, 16:19, 16:18].numpy(), atol=1e-5, rtol=0)


def test_cog_output_is_a_cog_with_overviews(tmp_path, make_raster):
    run = make_model(tmp_path, dtype_b="uint8", range_b=(0, 255))
    src = make_raster("in.tif", textured_field(2, 300, 280))
    predict_raster(src, run, tmp_path / "out.tif", cog=True, progress=False)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert out.overviews(1)
        assert out.dtypes[0] == "uint8" and (out.width, out.height) == (280, 300)
    assert _no_leftovers(tmp_path) == []


# ---- bad inputs ------------------------------------------------------------------------------


def test_band_count_mismatch_names_both_counts(tmp_path, make_raster):
    run = make_model(tmp_path, bands_a=2)
    src = make_raster("in.tif", textured_field(3, 20, 20))
    with pytest.raises(GeotranslateError, match=r"has 3 band\(s\).*expects 2"):
        predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert not (tmp_path / "out.tif").exists()


def test_missing_input_missing_or_bad_model(tmp_path, make_raster):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 20, 20))
    with pytest.raises(GeotranslateError, match="no such file"):
        predict_raster(tmp_path / "nope.tif", run, tmp_path / "out.tif", progress=False)
    with pytest.raises(GeotranslateError, match="no such model"):
        predict_raster(src, tmp_path / "no_run", tmp_path / "out.tif", progress=False)
    meta = json.loads((run / "model.json").read_text())
    meta["format_version"] = 99
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="version 99"):
        predict_raster(src, run, tmp_path / "out.tif", progress=False)
    (run / "model.json").write_text("{not json")
    with pytest.raises(GeotranslateError, match="corrupt model file"):
        predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert not (tmp_path / "out.tif").exists()


def test_existing_output_refused_unless_overwrite(tmp_path, make_raster):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 20, 20))
    (tmp_path / "out.tif").write_bytes(b"keep me")
    with pytest.raises(GeotranslateError, match="already exists"):
        predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert (tmp_path / "out.tif").read_bytes() == b"keep me"
    predict_raster(src, run, tmp_path / "out.tif", overwrite=True, progress=False)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 3


def test_missing_or_unwritable_output_directory(tmp_path, make_raster):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 20, 20))
    with pytest.raises(GeotranslateError, match="output directory does not exist"):
        predict_raster(src, run, tmp_path / "missing" / "out.tif", progress=False)
    with pytest.raises(GeotranslateError, match="is a directory"):
        predict_raster(src, run, tmp_path, overwrite=True, progress=False)
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(GeotranslateError, match="not writable"):
            predict_raster(src, run, locked / "out.tif", progress=False)
    finally:
        locked.chmod(0o700)


def test_interrupt_mid_run_leaves_no_output(tmp_path, make_raster):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 200, 200))
    predict_interrupted(src, run, tmp_path / "out.tif", at_call=3, batch_size=2, progress=False)
    assert not (tmp_path / "out.tif").exists()
    assert _no_leftovers(tmp_path) == []


def test_write_failure_leaves_no_output(tmp_path, make_raster, monkeypatch):
    # a full disk surfaces as a RasterioIOError from the GTiff writer
    from rasterio.errors import RasterioIOError

    from geotranslate.predict import pipeline

    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 300, 100))
    real_finish = pipeline.Writer._finish
    calls = {"n": 0}

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RasterioIOError("Free disk space available is 0 bytes")
        return real_finish(self, *args)

    monkeypatch.setattr(pipeline.Writer, "_finish", failing)
    with pytest.raises(GeotranslateError, match=r"out\.tif: write failed.*disk space"):
        predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert not (tmp_path / "out.tif").exists()
    assert _no_leftovers(tmp_path) == []


@pytest.mark.parametrize("size", [128, 300])
def test_full_disk_fails_in_one_line_and_leaves_no_output(tmp_path, make_raster, small_disk,
                                                          capsys, size):
    # a real ENOSPC on a tiny tmpfs, with room for about a third of the output. At 128 px GDAL
    # holds every block until the close, whose failure libtiff only prints to stderr: without
    # verify_geotiff a truncated file would be renamed into place as the result. At 300 px the
    # block writes fail during the run.
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, size, size))
    out_dir = small_disk(60_000 if size == 128 else 300_000)
    out = out_dir / "out.tif"
    status = cli_main(["predict-raster", str(src), "--model", str(run), "--out", str(out),
                       "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("geotranslate")]
    assert status == 1 and lines == [lines[0]], err
    assert lines[0].startswith(f"geotranslate: error: {out}:"), err
    assert lines[0].startswith(f"geotranslate: error: {out}: write failed"), err
    assert "the disk is full" in lines[0], err
    assert sorted(p.name for p in out_dir.iterdir()) == []


# ---- the command line ------------------------------------------------------------------------


def test_cli_predicts_and_reports_errors_in_one_line(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    src = make_raster("scene.tif", textured_field(2, 40, 30))
    assert cli_main(["predict-raster", str(src), "--model", str(run), "--no-progress"]) == 0
    assert "Mpx/s" in capsys.readouterr().out
    assert (tmp_path / "scene_translated.tif").exists()
    status = cli_main(["predict-raster", str(src), "--model", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("geotranslate: error: ") and err.count("\n") == 1
    assert "already exists" in err
    status = cli_main(["predict-raster", str(src), "--model", str(run), "--window", "1,2",
                       "--overwrite"])
    assert status == 1 and "ROW_OFF,COL_OFF,HEIGHT,WIDTH" in capsys.readouterr().err


# ---- real rasters ------------------------------------------------------------------------------


def test_real_corrupt_raster_read_error(tmp_path, real_data):
    run = make_model(tmp_path, bands_a=3, dtype_a="uint8", range_a=(0, 255))
    with pytest.raises(GeotranslateError, match="corrupt.tif: read failed at rows"):
        predict_raster(real_data / "rasterio" / "corrupt.tif", run, tmp_path / "out.tif",
                       tile_size=256, progress=False)
    assert not (tmp_path / "out.tif").exists()
    assert _no_leftovers(tmp_path) == []


def test_real_rgba_alpha_becomes_nodata(tmp_path, real_data):
    run = make_model(tmp_path, bands_a=3, bands_b=1, dtype_a="uint8", range_a=(0, 255),
                     dtype_b="uint8", range_b=(0, 255))
    src = real_data / "rasterio" / "RGBA.byte.tif"
    predict_raster(src, run, tmp_path / "out.tif", tile_size=128, batch_size=8, progress=False)
    with rasterio.open(src) as ds, rasterio.open(tmp_path / "out.tif") as out:
        alpha = ds.read(4)
        assert out.transform == ds.transform and out.crs == ds.crs
        y = out.read(1)
    assert out.nodata == 0
    assert (y[alpha == 0] == 0).all() and (y[alpha > 0] >= 1).all()


def test_real_south_up_keeps_transform(tmp_path, real_data):
    run = make_model(tmp_path, bands_a=1, bands_b=1, range_a=(0, 10))
    src = real_data / "gdalraster" / "south-up.tif"
    predict_raster(src, run, tmp_path / "out.tif", progress=False)
    with rasterio.open(src) as ds, rasterio.open(tmp_path / "out.tif") as out:
        assert out.transform == ds.transform and out.transform.e > 0
        assert out.crs == ds.crs
        nan_in = np.isnan(ds.read(1))
        y = out.read(1)
    assert np.isnan(y[nan_in]).all() and np.isfinite(y[~nan_in]).all()


def test_real_gcp_only_raster_keeps_its_gcps(tmp_path, real_data, capsys):
    run = make_model(tmp_path, bands_a=1, bands_b=1, dtype_a="uint16", range_a=(0, 4000))
    src = real_data / "georust_gdal" / "gcp.tif"
    predict_raster(src, run, tmp_path / "out.tif", progress=False)
    assert "keeps its GCPs" in capsys.readouterr().err
    with rasterio.open(src) as ds, rasterio.open(tmp_path / "out.tif") as out:
        (gcps_in, crs_in), (gcps_out, crs_out) = ds.gcps, out.gcps
        assert out.crs is None and crs_out == crs_in and len(gcps_out) == len(gcps_in)
        assert [(g.row, g.col, g.x, g.y) for g in gcps_out] == [
            (g.row, g.col, g.x, g.y) for g in gcps_in
        ]
