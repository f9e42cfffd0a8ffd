"""predict-raster's precision default, output compression and per-stage CPU seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from builders import make_model, predict_interrupted, textured_field

from geotranslate.errors import GeotranslateError
from geotranslate.predict import predict_raster
from geotranslate.predict import resume as resume_mod
from geotranslate.predict.pipeline import STAGES
from geotranslate.predict.resume import partial_paths

OPTS = dict(tile_size=64, overlap=16, batch_size=4, progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(tmp_path, make_raster,
                                                               monkeypatch, native):
    monkeypatch.setattr("geotranslate.device.cpu_has_native_bf16", lambda: native)
    run = make_model(tmp_path, norm="instance", smooth=True)
    src = make_raster("in.tif", textured_field(2, 150, 170))
    auto = predict_raster(src, run, tmp_path / "auto.tif", device="cpu", **OPTS)
    assert auto.precision == ("bf16" if native else "fp32")
    fp32 = predict_raster(src, run, tmp_path / "fp32.tif", device="cpu", precision="fp32", **OPTS)
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "fp32.tif") as b:
        diff = np.abs(a.read() - b.read())
    if native:  # bf16 keeps about 3 significant digits of outputs in [-1, 1]
        assert 0 < diff.max() < 0.05
    else:
        assert diff.max() == 0
    assert fp32.precision == "fp32"


def test_resumed_run_with_other_compression_equals_the_uninterrupted_one(tmp_path, make_raster,
                                                                         monkeypatch):
    run = make_model(tmp_path, norm="instance", smooth=True, seed=3)
    src = make_raster("in.tif", textured_field(2, 1100, 300, seed=5))
    opts = dict(OPTS, chunk_width=256, compress="deflate:6", compress_threads=2)
    monkeypatch.setattr(resume_mod, "CHECKPOINT_PIXELS", 256 * 512)  # every 2nd block row
    whole = predict_raster(src, run, tmp_path / "whole.tif", **opts)
    out = tmp_path / "out.tif"
    predict_interrupted(src, run, out, at_call=40, **opts)
    assert json.loads(partial_paths(out)[1].read_text())["done"] is not None
    with pytest.raises(GeotranslateError, match="another compress"):
        predict_raster(src, run, out, resume=True, **{**opts, "compress": "lzw"})
    resumed = predict_raster(src, run, out, resume=True, **opts)
    assert resumed.tiles < whole.tiles
    assert out.read_bytes() == (tmp_path / "whole.tif").read_bytes()
    with rasterio.open(out) as ds:
        assert ds.compression.name == "deflate"


@pytest.mark.parametrize("compress, codec", [("zstd:9", "zstd"), ("lzw", "lzw"),
                                             ("none", None)])
def test_compress_choice_sets_the_codec_and_keeps_the_values(tmp_path, make_raster, compress,
                                                             codec):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 100, 120))
    default = predict_raster(src, run, tmp_path / "default.tif", **OPTS)
    summary = predict_raster(src, run, tmp_path / "out.tif", compress=compress, **OPTS)
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(tmp_path / "default.tif") as b:
        assert (a.compression.name if a.compression else None) == codec
        assert b.compression.name == "zstd"
        assert np.array_equal(a.read(), b.read())
    assert set(summary.stage_cpu_seconds) == set(STAGES)
    assert all(v >= 0 for v in summary.stage_cpu_seconds.values())
    assert summary.stage_cpu_seconds["forward"] > 0 and default.stage_cpu_seconds["write"] > 0


@pytest.mark.parametrize("compress", ["jpeg", "zstd:0", "zstd:x", "lzw:3"])
def test_bad_compress_is_refused_in_one_line(tmp_path, make_raster, compress):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 70, 70))
    with pytest.raises(GeotranslateError, match="compress"):
        predict_raster(src, run, tmp_path / "out.tif", compress=compress, **OPTS)
    with pytest.raises(GeotranslateError, match="threads"):
        predict_raster(src, run, tmp_path / "out.tif", compress_threads="many", **OPTS)


def test_cog_takes_the_compress_choice(tmp_path, make_raster):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 300, 280))
    predict_raster(src, run, tmp_path / "out.tif", cog=True, compress="deflate:4", **OPTS)
    predict_raster(src, run, tmp_path / "plain.tif", compress="none", **OPTS)
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(tmp_path / "plain.tif") as b:
        assert a.compression.name == "deflate" and a.overviews(1)
        assert a.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(a.read(), b.read())
