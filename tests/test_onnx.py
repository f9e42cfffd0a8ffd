"""export-onnx: onnxruntime on the raw bands gives predict-raster's output; Deepness metadata.

Tolerance: predict-raster on a raster of one tile (overlap 0, no blending weights) and the
ONNX model on the same raw bands run the same float32 arithmetic, apart from the order of the
convolutions' sums in onnxruntime and torch. Integer outputs may then differ by 1 where a
value lies within that rounding error of a .5 tie (at most 1 % of the pixels); float outputs
within 1e-5 of the band's normalization range (the [-1, 1] output times half the range).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from builders import make_model, write_raster

from geotranslate.cli import main as cli_main
from geotranslate.errors import GeotranslateError
from geotranslate.modelfile import load_model, weights_sha256
from geotranslate.onnx_export import export_onnx
from geotranslate.predict import predict_raster

ort = pytest.importorskip("onnxruntime")

TILE = 64


def _raster(make_raster, seed: int = 1, nodata: float = -9999.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE] / TILE
    data = np.stack([-30 + 25 * xx * yy + rng.normal(0, 2, (TILE, TILE)),
                     -20 + 10 * np.sin(4 * xx) + rng.normal(0, 2, (TILE, TILE))])
    data = data.astype("float32")
    data[:, 5:9, 40:50] = nodata
    data[1, 30, 3] = np.nan
    return data, make_raster("scene.tif", data, nodata=nodata)


def _run_onnx(path, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"bands": data[None].astype("float32")})
    return np.concatenate(outputs, axis=1)[0]


def _predicted(src, run, tmp_path, norm_stats="scene") -> np.ndarray:
    out = tmp_path / f"pred_{norm_stats}.tif"
    predict_raster(src, run, out, overlap=0, blend="none", norm_stats=norm_stats,
                   precision="fp32", progress=False)  # the ONNX model computes in fp32
    with rasterio.open(out) as ds:
        return ds.read()


def _assert_close(onnx_out: np.ndarray, torch_out: np.ndarray, dtype: str, span: float):
    assert onnx_out.shape == torch_out.shape
    if np.issubdtype(np.dtype(dtype), np.integer):
        diff = np.abs(onnx_out.astype(np.float64) - torch_out.astype(np.float64))
        assert diff.max() <= 1
        assert (diff > 0).mean() <= 0.01
    else:
        both = np.isfinite(torch_out)
        assert np.array_equal(both, np.isfinite(onnx_out))  # nodata (NaN) where predict's
        assert np.abs(onnx_out[both] - torch_out[both]).max() <= 1e-5 * span


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_onnx_equals_predict_raster_on_raw_bands(tmp_path, make_raster, norm):
    run = make_model(tmp_path, norm=norm, dtype_b="uint16", nodata_b=0, range_a=(-30.0, 0.0),
                     range_b=(-40.0, 600.0), nodata_a=-9999.0, chip=TILE)
    data, src = _raster(make_raster)
    summary = export_onnx(run, tmp_path / "model.onnx")
    assert summary["norm_stats"] == ("running" if norm == "batch" else "none")
    expected = _predicted(src, run, tmp_path)
    got = _run_onnx(tmp_path / "model.onnx", data)
    _assert_close(got, expected, "uint16", 640.0)
    invalid = (data[:, 5:9, 40:50] == -9999).all()
    assert invalid and (got[:, 5:9, 40:50] == 0).all()  # nodata in, nodata out
    assert (got[:, 30, 3] == 0).all()  # NaN in any band: invalid
    valid = expected[0] != 0
    assert (got[:, valid] > 0).all()  # a valid 0 is moved off nodata, as predict writes it
    # a batch gives each tile its own result
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    pair = np.concatenate(session.run(None, {"bands": np.stack([data, data[:, ::-1]])}), 1)
    assert np.array_equal(pair[0], got) and not np.array_equal(pair[1], got)


def test_onnx_float_target_and_instance_norm_calibrated_on_a_raster(tmp_path, make_raster):
    run = make_model(tmp_path, norm="instance", range_a=(-30.0, 0.0), range_b=(0.0, 3000.0),
                     nodata_a=-9999.0, chip=TILE, smooth=True)
    data, src = _raster(make_raster, seed=3)
    # without a raster: the statistics of the tile, as predict-raster --norm-stats tile
    assert export_onnx(run, tmp_path / "tile.onnx")["norm_stats"] == "per-tile"
    per_tile = _run_onnx(tmp_path / "tile.onnx", data)
    _assert_close(per_tile, _predicted(src, run, tmp_path, "tile"), "float32", 3000.0)
    # calibrated on the raster: predict-raster's scene statistics, baked in
    summary = export_onnx(run, tmp_path / "scene.onnx", calibrate_on=src)
    assert summary["norm_stats"].startswith("scene-sample 1 tiles")
    scene = _run_onnx(tmp_path / "scene.onnx", data)
    _assert_close(scene, _predicted(src, run, tmp_path, "scene"), "float32", 3000.0)
    assert np.isnan(scene[:, 5:9, 40:50]).all()  # float target without nodata: NaN
    # the calibration is in the graph: another tile keeps the raster's statistics
    other = data * 0.5 - 10.0
    moved = _run_onnx(tmp_path / "scene.onnx", other) - _run_onnx(tmp_path / "tile.onnx", other)
    assert np.nanmax(np.abs(moved)) > 10.0


def test_export_onnx_metadata_for_deepness_and_provenance(tmp_path, make_raster, capsys):
    import onnx

    run = make_model(tmp_path, bands_b=4, dtype_b="uint16", nodata_b=0, chip=TILE)
    meta = json.loads((run / "model.json").read_text())
    meta["domains"]["b"]["band_descriptions"] = ["blue", "green", "red", None]
    (run / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "m.onnx"
    assert cli_main(["export-onnx", str(run), "--out", str(out), "--resolution", "1000"]) == 0
    assert "outputs blue, green, red, band4" in capsys.readouterr().out
    proto = onnx.load(str(out))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    model = load_model(run)
    assert props["model_type"] == "Regressor"
    assert props["tile_size"] == TILE and props["resolution"] == 1000
    overlap = props["geotranslate:overlap_px"]
    assert 0 < overlap <= TILE // 2 and props["tiles_overlap"] == -(-100 * overlap // TILE)
    assert props["class_names"] == [{"0": "blue"}, {"0": "green"}, {"0": "red"}, {"0": "band4"}]
    # Deepness feeds x / 255 standardized with these: the raw values again
    mean, std = np.array(props["standardization_mean"]), np.array(props["standardization_std"])
    raw = np.array([0.0, 17.0, -30.5, 4095.0], dtype=np.float32)
    assert np.allclose((raw[:2] / 255 - mean) / std, raw[:2], rtol=1e-6)
    assert props["geotranslate:weights_sha256"] == weights_sha256(model.generator("a2b"))
    assert props["geotranslate:output_nodata"] == 0 and props["geotranslate:input_bands"] == [
        "a0", "a1"]
    session = ort.InferenceSession(str(out))
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [2, TILE, TILE] and isinstance(inp.shape[0], str)
    assert [o.name for o in session.get_outputs()] == ["blue", "green", "red", "band4"]
    assert all(o.shape[1:] == [1, TILE, TILE] for o in session.get_outputs())
    # never over the model, not over an existing file, a tile size the generator cannot take
    assert cli_main(["export-onnx", str(run), "--out", str(run / "model.json")]) == 1
    assert cli_main(["export-onnx", str(run), "--out", str(out)]) == 1
    with pytest.raises(GeotranslateError, match="multiple of 4"):
        export_onnx(run, tmp_path / "x.onnx", tile_size=30)
    with pytest.raises(GeotranslateError, match="has no b2a generator"):
        export_onnx(run, tmp_path / "x.onnx", direction="b2a")


def test_resolution_comes_from_the_training_chips_in_metres(tmp_path):
    from geotranslate.onnx_export import training_resolution_cm

    run = make_model(tmp_path, chip=TILE)
    chips = tmp_path / "chips"
    chips.mkdir()
    meta = json.loads((run / "model.json").read_text())
    meta["training"] = {"data_dir": str(chips)}
    (run / "model.json").write_text(json.dumps(meta))
    assert training_resolution_cm(load_model(run), "a2b") is None  # no meta.json any more
    band = {"min": 0, "max": 1, "mean": 0.5, "std": 0.1, "p2": 0, "p98": 1, "count": 9}
    for crs, expected in (("EPSG:32633", 1000.0), ("EPSG:4326", None)):
        domain = {"sources": ["a.tif"], "bands": [1], "band_count": 1, "dtype": "float32",
                  "stats": {"bands": [band]}, "pixel_size": [10.0, 10.0], "crs": crs}
        (chips / "meta.json").write_text(json.dumps(
            {"pairing": "paired", "tile_size": TILE, "domains": {"a": domain}}))
        assert training_resolution_cm(load_model(run), "a2b") == expected
    (chips / "meta.json").write_text(json.dumps({"domains": {"a": {"pixel_size": [10.0]}}}))
    assert training_resolution_cm(load_model(run), "a2b") is None  # not a valid meta.json


# ---- colour interpretation of the GeoTIFFs written ------------------------------------------


def _bgr_nir_model(tmp_path, make_raster, descriptions: list[str]):
    """A model whose uint16 target has 4 bands described ``descriptions``, and an input."""
    run = make_model(tmp_path, bands_b=4, dtype_b="uint16", nodata_b=0, chip=TILE)
    meta = json.loads((run / "model.json").read_text())
    meta["domains"]["b"]["band_descriptions"] = descriptions
    (run / "model.json").write_text(json.dumps(meta))
    _, src = _raster(make_raster)
    return run, src


def test_translation_of_a_bgr_nir_target_has_its_colour_interpretation(tmp_path, make_raster):
    from rasterio.enums import ColorInterp as CI

    run, src = _bgr_nir_model(tmp_path, make_raster, ["Blue", "green", "red", "nir"])
    for cog in (False, True):
        out = tmp_path / f"out_{cog}.tif"
        predict_raster(src, run, out, progress=False, cog=cog)
        with rasterio.open(out) as ds:
            assert ds.colorinterp == (CI.blue, CI.green, CI.red, CI.undefined)
            assert ds.nodata == 0 and ds.descriptions == ("Blue", "green", "red", "nir")


def test_chips_get_colours_from_descriptions_or_the_source_colour_interpretation(tmp_path):
    from rasterio.enums import ColorInterp as CI

    from geotranslate.chips.export import export_tiles

    rng = np.random.default_rng(0)
    sar = write_raster(tmp_path / "sar.tif", rng.normal(0, 1, (2, 64, 64)).astype("float32"),
                       descriptions=["VV", "VH"])
    rgb = tmp_path / "rgb.tif"  # an RGB GeoTIFF without descriptions
    write_raster(rgb, rng.integers(1, 255, (3, 64, 64)).astype("uint8"), nodata=0)
    with rasterio.open(rgb, "r+") as ds:
        ds.colorinterp = [CI.red, CI.green, CI.blue]
    export_tiles([sar], [rgb], tmp_path / "chips", tile_size=32, progress=False)
    chip_a = next((tmp_path / "chips").glob("*_a/*.tif"))
    chip_b = next((tmp_path / "chips").glob("*_b/*.tif"))
    with rasterio.open(chip_a) as a, rasterio.open(chip_b) as b:
        # GeoTIFF stores an undefined first band of a grey (MINISBLACK) image as gray
        assert a.colorinterp == (CI.gray, CI.undefined)
        assert b.colorinterp == (CI.red, CI.green, CI.blue)
        assert b.descriptions == ("red", "green", "blue") and b.nodata == 0


def test_vrt_mosaic_keeps_the_colour_interpretation(tmp_path, make_raster):
    from rasterio.enums import ColorInterp as CI

    from geotranslate.raster.vrt import write_vrt

    run, src = _bgr_nir_model(tmp_path, make_raster, ["blue", "green", "red", "nir"])
    predict_raster(src, run, tmp_path / "t.tif", progress=False)
    with rasterio.open(write_vrt([tmp_path / "t.tif"], tmp_path / "m.vrt")) as ds:
        assert ds.colorinterp == (CI.blue, CI.green, CI.red, CI.undefined)
