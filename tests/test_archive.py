"""Prediction at archive scale: many inputs, many processes, resume, provenance, STAC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from test_predict import _smooth_field, make_model

from geotranslate.errors import GeotranslateError
from geotranslate.predict import predict_raster
from geotranslate.predict import resume as resume_mod
from geotranslate.predict.resume import partial_paths

# ---- resume ---------------------------------------------------------------------------------


def _interrupt_at(monkeypatch, call: int) -> None:
    real_forward = torch.nn.Module.__call__
    calls = {"n": 0}

    def interrupting(self, *args, **kwargs):
        if type(self).__name__ == "ResnetGenerator":
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", interrupting)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, make_raster,
                                                             monkeypatch):
    run = make_model(tmp_path, norm="instance", smooth=True, seed=3)
    src = make_raster("in.tif", _smooth_field(2, 1100, 300, seed=5))
    opts = dict(tile_size=64, overlap=16, batch_size=4, chunk_width=256, progress=False)
    predict_raster(src, run, tmp_path / "whole.tif", **opts)
    monkeypatch.setattr(resume_mod, "CHECKPOINT_SECONDS", 0.0)
    _interrupt_at(monkeypatch, 40)
    out = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        predict_raster(src, run, out, **opts)
    assert not out.exists()  # the partial never sits at the final name
    tiff, progress = partial_paths(out)
    done = json.loads(progress.read_text())["done"]
    assert done is not None and done["row"] % 256 == 0 and done != {"chunk_col": 0, "row": 0}
    monkeypatch.undo()
    # another run without --resume does not throw the partial away
    with pytest.raises(GeotranslateError, match="pass --resume"):
        predict_raster(src, run, out, **opts)
    # other options are refused
    with pytest.raises(GeotranslateError, match="another overlap"):
        predict_raster(src, run, out, resume=True, **{**opts, "overlap": 8})
    s = predict_raster(src, run, out, resume=True, **opts)
    full_tiles = predict_raster(src, run, tmp_path / "again.tif", **opts).tiles
    assert s.tiles < full_tiles  # the recorded strips were not computed again
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags() == b.tags()
        pa, pb = dict(a.profile), dict(b.profile)
        assert np.isnan(pa.pop("nodata")) and np.isnan(pb.pop("nodata")) and pa == pb
    assert not tiff.exists() and not progress.exists()


def test_resume_without_partial_starts_over_with_a_warning(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    src = make_raster("in.tif", _smooth_field(2, 40, 40))
    predict_raster(src, run, tmp_path / "out.tif", resume=True, progress=False)
    assert "nothing to resume" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- provenance -----------------------------------------------------------------------------


def test_output_tags_carry_the_provenance(tmp_path, make_raster):
    from geotranslate import __version__
    from geotranslate.modelfile import load_model
    from geotranslate.predict.provenance import weights_sha256

    run = make_model(tmp_path, seed=1)
    other = make_model(tmp_path, seed=2, name="other")
    src = make_raster("in.tif", _smooth_field(2, 40, 40))
    predict_raster(src, run, tmp_path / "out.tif", tile_size=32, overlap=8, blend="linear",
                   progress=False)
    with rasterio.open(tmp_path / "out.tif") as ds:
        tags = ds.tags()
    digest = weights_sha256(load_model(run).generator("a2b"))
    assert digest != weights_sha256(load_model(other).generator("a2b"))
    assert tags["GEOTRANSLATE_WEIGHTS_SHA256"] == digest
    assert tags["GEOTRANSLATE_DATASET_TYPE"] == "Pix2Pix"
    assert tags["GEOTRANSLATE_DIRECTION"] == "a2b"
    assert tags["GEOTRANSLATE_NORMALIZATION"] == "input minmax, output minmax"
    assert tags["GEOTRANSLATE_TILING"] == "tile 32 px, overlap 8 px, linear blend"
    assert tags["GEOTRANSLATE_VERSION"] == __version__
    assert tags["GEOTRANSLATE_SOURCE"] == "in.tif"
