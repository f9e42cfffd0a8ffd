"""Prediction at archive scale: many inputs, many processes, resume, provenance, STAC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from geotranslate.predict import resume as resume_mod
from geotranslate.predict.resume import partial_paths

# ---- resume ---------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, make_raster,
                                                             monkeypatch):
    run = make_model(tmp_path, norm="instance", smooth=True, seed=3)
    src = make_raster("in.tif", textured_field(2, 1100, 300, seed=5))
    opts = dict(tile_size=64, overlap=16, batch_size=4, chunk_width=256, progress=False)
    monkeypatch.setattr(resume_mod, "CHECKPOINT_PIXELS", 256 * 512)  # every 2nd block row
    predict_raster(src, run, tmp_path / "whole.tif", **opts)
    out = tmp_path / "out.tif"
    predict_interrupted(src, run, out, at_call=40, **opts)
    assert not out.exists()  # the partial never sits at the final name
    tiff, progress = partial_paths(out)
    done = json.loads(progress.read_text())["done"]
    assert done is not None and done != {"chunk_col": 0, "row": 0}
    assert done["row"] % 512 == 0 or done["row"] == 1100  # a checkpoint row, or a chunk's end
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
    # byte for byte: the resumed file, and two uninterrupted runs
    whole = (tmp_path / "whole.tif").read_bytes()
    assert out.read_bytes() == whole
    assert (tmp_path / "again.tif").read_bytes() == whole


_KILLED_CHILD = """
import os, signal, sys
from geotranslate.predict import predict_raster, resume
resume.CHECKPOINT_PIXELS = 128 * 512  # every 2nd block row
real_fsync, calls = os.fsync, [0]
def killing_fsync(fd):  # SIGKILL in the 2nd checkpoint: closed, its record not yet written
    calls[0] += 1
    if calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = killing_fsync
predict_raster(sys.argv[1], sys.argv[2], sys.argv[3], tile_size=64, overlap=16, batch_size=4,
               progress=False)
"""


def test_sigkilled_run_resumes_byte_for_byte(tmp_path, make_raster, monkeypatch):
    import signal

    run = make_model(tmp_path, norm="instance", smooth=True, seed=4)
    src = make_raster("in.tif", textured_field(2, 1300, 128, seed=6))
    opts = dict(tile_size=64, overlap=16, batch_size=4, progress=False)
    out = tmp_path / "out.tif"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(src), str(run), str(out)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    tiff, progress = partial_paths(out)
    done = json.loads(progress.read_text())["done"]
    assert done["row"] == 512 and not out.exists()
    assert tiff.stat().st_size > done["size"]  # blocks written after the checkpoint
    with rasterio.open(tiff) as ds:  # and the directory lists them
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_3", "TIFF", bidx=1))
    assert done["size"] <= offset < tiff.stat().st_size
    monkeypatch.setattr(resume_mod, "CHECKPOINT_PIXELS", 128 * 512)
    s = predict_raster(src, run, out, resume=True, **opts)
    whole = predict_raster(src, run, tmp_path / "whole.tif", **opts)
    assert s.tiles < whole.tiles
    assert out.read_bytes() == (tmp_path / "whole.tif").read_bytes()


def test_resume_refuses_a_partial_changed_after_its_checkpoint(tmp_path, make_raster,
                                                              monkeypatch):
    run = make_model(tmp_path, seed=3)
    src = make_raster("in.tif", textured_field(2, 1100, 100, seed=5))
    opts = dict(tile_size=64, overlap=16, batch_size=4, cog=True, progress=False)
    monkeypatch.setattr(resume_mod, "CHECKPOINT_PIXELS", 1)
    out = tmp_path / "out.tif"
    predict_interrupted(src, run, out, at_call=14, **opts)
    tiff, progress = partial_paths(out)
    size = json.loads(progress.read_text())["done"]["size"]
    data = tiff.read_bytes()[:size]
    tiff.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(GeotranslateError, match="differs from the one recorded"):
        predict_raster(src, run, out, resume=True, **opts)
    tiff.write_bytes(data[: size - 10])
    with pytest.raises(GeotranslateError, match="shorter than the"):
        predict_raster(src, run, out, resume=True, **opts)
    tiff.write_bytes(data + b"blocks the killed run wrote")
    predict_raster(src, run, out, resume=True, **opts)
    predict_raster(src, run, tmp_path / "whole.tif", **opts)
    assert out.read_bytes() == (tmp_path / "whole.tif").read_bytes()


def test_resume_without_partial_starts_over_with_a_warning(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    src = make_raster("in.tif", textured_field(2, 40, 40))
    predict_raster(src, run, tmp_path / "out.tif", resume=True, progress=False)
    assert "nothing to resume" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- provenance -----------------------------------------------------------------------------


def test_output_tags_carry_the_provenance(tmp_path, make_raster):
    from geotranslate import __version__
    from geotranslate.modelfile import load_model, weights_sha256

    run = make_model(tmp_path, seed=1)
    other = make_model(tmp_path, seed=2, name="other")
    src = make_raster("in.tif", textured_field(2, 40, 40))
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


# ---- many inputs ----------------------------------------------------------------------------


def _scenes(make_raster, tmp_path, n=3):
    """Three north-up scenes side by side on one grid (the last one 24 rows lower)."""
    paths = []
    for i in range(n):
        north = 5300000.0 - 240 * (i == 2)
        transform = Affine(10.0, 0.0, 500000.0 + 400 * i, 0.0, -10.0, north)
        paths.append(make_raster(f"scene{i}.tif", textured_field(2, 48, 40, seed=i),
                                 transform=transform))
    return paths


def test_many_inputs_one_output_each_and_a_mosaic(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    scenes = _scenes(make_raster, tmp_path)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a raster")
    out = tmp_path / "out"
    out.mkdir()
    args = ["predict-raster", *map(str, scenes[:2]), str(broken), str(scenes[2]),
            "--model", str(run), "--out-dir", str(out), "--mosaic", str(out / "all.vrt"),
            "--tile-size", "32", "--overlap", "8", "--no-progress"]
    assert cli_main(args) == 1  # the broken input failed, the others finished
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.tif" in errors[0], captured.err
    assert "Traceback" not in captured.err
    assert captured.out.count("wrote ") == 3 + 1  # three outputs and the mosaic
    assert "total: 3 raster(s)" in captured.out and "1 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "all.vrt", "scene0_translated.tif", "scene1_translated.tif", "scene2_translated.tif"]
    with rasterio.open(out / "all.vrt") as mosaic:
        assert (mosaic.width, mosaic.height) == (120, 72)
        assert mosaic.transform == Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5300000.0)
        whole = mosaic.read()
    for i in range(3):
        predict_raster(scenes[i], run, tmp_path / f"single{i}.tif", tile_size=32, overlap=8,
                       progress=False)
        with rasterio.open(tmp_path / f"single{i}.tif") as single, \
                rasterio.open(out / f"scene{i}_translated.tif") as batch:
            assert np.array_equal(single.read(), batch.read())
            row = 24 * (i == 2)
            assert np.array_equal(whole[:, row : row + 48, 40 * i : 40 * i + 40], single.read())


def test_inputs_with_one_stem_and_mosaic_of_two_crs_are_refused(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    (tmp_path / "x").mkdir()
    a = make_raster("a.tif", textured_field(2, 40, 40))
    b = make_raster("x/a.tif", textured_field(2, 40, 40))
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["predict-raster", str(a), str(b), "--model", str(run),
                     "--out-dir", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_translated.tif" in err and "x/a.tif" in err
    assert list(out.iterdir()) == []
    c = make_raster("c.tif", textured_field(2, 40, 40), crs="EPSG:32634")
    assert cli_main(["predict-raster", str(a), str(c), "--model", str(run),
                     "--out-dir", str(out), "--mosaic", str(out / "m.vrt"),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "m.vrt" not in {p.name for p in out.iterdir()}
    assert "CRS" in err and "one CRS" in err and "Traceback" not in err


# ---- many processes -------------------------------------------------------------------------


def test_two_processes_under_torchrun_equal_one(tmp_path, make_raster):
    run = make_model(tmp_path, norm="instance", smooth=True, seed=6)
    big = make_raster("big.tif", textured_field(2, 600, 90, seed=7))
    small = _scenes(make_raster, tmp_path, n=2)
    inputs = [str(big), *map(str, small)]
    opts = ["--tile-size", "32", "--overlap", "8", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "geotranslate", "predict-raster", *inputs, "--model", str(run),
           "--out-dir", str(out), "--split-mpx", "0.05", "--mosaic", str(out / "all.vrt"),
           "--cog", *opts]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "joined 2 parts" in done.stdout
    parts = sorted(p.name for p in (out / "big_translated.parts").iterdir())
    assert parts == ["part0of2.tif", "part1of2.tif"]  # no markers left
    for name in inputs:
        stem = Path(name).stem
        predict_raster(name, run, tmp_path / f"{stem}_single.tif", tile_size=32, overlap=8,
                       progress=False)
        joined = out / f"{stem}_translated.tif"
        with rasterio.open(tmp_path / f"{stem}_single.tif") as a, rasterio.open(joined) as b:
            assert np.array_equal(a.read(), b.read()), stem  # pixel for pixel
            assert a.transform == b.transform
    with rasterio.open(out / "big_translated.vrt") as vrt, \
            rasterio.open(tmp_path / "big_single.tif") as single:
        assert np.array_equal(vrt.read(), single.read())
        assert vrt.tags()["GEOTRANSLATE_WEIGHTS_SHA256"] == single.tags()[
            "GEOTRANSLATE_WEIGHTS_SHA256"]
    with rasterio.open(out / "all.vrt") as mosaic:
        assert mosaic.count == 3


def test_job_array_ranks_share_the_inputs(tmp_path, make_raster, capsys):
    run = make_model(tmp_path)
    scenes = [str(p) for p in _scenes(make_raster, tmp_path)]
    out = tmp_path / "out"
    out.mkdir()
    for rank in (1, 0):
        assert cli_main(["predict-raster", *scenes, "--model", str(run), "--out-dir", str(out),
                         "--rank", str(rank), "--world-size", "2", "--tile-size", "32",
                         "--no-progress"]) == 0
        names = sorted(p.name for p in out.iterdir())
        if rank == 1:
            assert names == ["scene1_translated.tif"]
    assert names == [f"scene{i}_translated.tif" for i in range(3)]


# ---- the model as a STAC item ---------------------------------------------------------------


def test_model_stac_item_with_the_mlm_extension(tmp_path, capsys):
    import pystac

    from geotranslate.modelstac import MLM_SCHEMA

    run = make_model(tmp_path, bands_a=2, bands_b=3)
    assert cli_main(["model-stac", str(run), "--out", str(tmp_path / "item.json")]) == 0
    d = json.loads((tmp_path / "item.json").read_text())
    item = pystac.Item.from_dict(d)
    assert item.to_dict(include_self_link=False, transform_hrefs=False) == d  # round trip
    assert MLM_SCHEMA in item.stac_extensions
    props = item.properties
    assert props["mlm:framework"] == "PyTorch"
    assert props["mlm:name"] and "resnet" in props["mlm:architecture"]
    (inp,), (out,) = props["mlm:input"], props["mlm:output"]
    assert inp["bands"] == ["a0", "a1"] and inp["input"]["shape"] == [-1, 2, 64, 64]
    assert out["bands"] == ["b0", "b1", "b2"] and out["result"]["shape"] == [-1, 3, 64, 64]
    assert [(v["mean"], v["stddev"]) for v in inp["value_scaling"]] == [(0.0, 1.0)] * 2
    weights = json.loads((run / "model.json").read_text())["weights"]["sha256"]
    assert item.assets["weights"].extra_fields["geotranslate:sha256"] == weights
    assert "mlm:model" in item.assets["weights"].roles
    # never over the model's own files
    assert cli_main(["model-stac", str(run), "--out", str(run / "model.json")]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def test_weights_digest_covers_batch_norm_buffers():
    from geotranslate.modelfile import weights_sha256
    from geotranslate.models import build_generator

    torch.manual_seed(0)
    g = build_generator("resnet", 2, 3, ngf=4, n_blocks=1, norm="batch", init=False)
    before = weights_sha256(g)
    assert before == weights_sha256(g)
    next(m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean += 1
    assert weights_sha256(g) != before
