"""Outputs never replace inputs or each other, leftovers of killed runs go, one-line messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import ROOT, make_model, tiny_cyclegan_model, write_raster
from PIL import Image

from geotranslate import load_model
from geotranslate.cli import main
from geotranslate.errors import GeotranslateError
from geotranslate.files import atomic_path
from geotranslate.modelfile import META_NAME, WEIGHTS_NAME, save_model
from geotranslate.predict import output as predict_output
from geotranslate.predict import predict_raster


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


# ---- no command writes over one of its inputs ----------------------------------------------


def test_preview_and_evaluate_refuse_to_write_over_an_input(make_raster, tmp_path, capsys):
    rng = np.random.default_rng(0)
    pred = make_raster("pred.tif", rng.normal(size=(2, 40, 40)).astype(np.float32))
    ref = make_raster("ref.tif", rng.normal(size=(2, 40, 40)).astype(np.float32))
    os.link(ref, tmp_path / "ref_link.tif")  # another name of the same file
    before = {p: p.read_bytes() for p in (pred, ref)}
    cases = [
        ["preview", str(pred), "--out", str(pred)],
        ["preview", str(pred), str(ref), "--out", str(tmp_path / "." / "ref.tif")],
        ["preview", str(ref), "--out", str(tmp_path / "ref_link.tif")],
        ["evaluate", str(pred), str(ref), "--json", str(ref)],
        ["evaluate", str(pred), str(ref), "--json", str(tmp_path / "ref_link.tif")],
        ["evaluate", str(pred), str(ref), "--json", str(pred)],
    ]
    for args in cases:
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("geotranslate: error:") and "would overwrite the input" in err
        assert len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in (pred, ref)} == before
    # other names work
    assert main(["evaluate", str(pred), str(ref), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())
    assert main(["preview", str(pred), "--out", str(tmp_path / "p.png")]) == 0


def test_evaluate_json_in_chip_mode_must_not_replace_the_model(tmp_path, capsys):
    run = make_model(tmp_path)
    before = (run / META_NAME).read_bytes()
    assert main(["evaluate", "--model", str(run), "--json", str(run / META_NAME)]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (run / META_NAME).read_bytes() == before


# ---- the no-overwrite promise is atomic ----------------------------------------------------


def test_atomic_path_without_overwrite_loses_to_a_concurrent_writer(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(GeotranslateError, match="written by another run meanwhile"):
        with atomic_path(out, overwrite=False) as tmp_first:
            tmp_first.write_bytes(b"first")
            with atomic_path(out, overwrite=False) as tmp_second:  # finishes first
                tmp_second.write_bytes(b"second")
    assert out.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary left
    with atomic_path(out) as tmp:  # overwrite=True replaces
        tmp.write_bytes(b"third")
    assert out.read_bytes() == b"third"


def test_two_predictions_to_one_output_do_not_both_succeed(tmp_path, monkeypatch):
    run = make_model(tmp_path)
    rng = np.random.default_rng(1)
    src = write_raster(tmp_path / "in.tif", rng.normal(size=(2, 64, 64)).astype(np.float32))
    out = tmp_path / "out.tif"
    real_verify = predict_output.verify_geotiff
    calls = []

    def verify_then_let_another_run_finish(path, label=None):
        real_verify(path, label)
        if not calls:
            calls.append(path)  # the other run starts and finishes while this one verifies
            predict_raster(src, run, out, window="0,0,32,32", device="cpu", progress=False)

    monkeypatch.setattr(predict_output, "verify_geotiff", verify_then_let_another_run_finish)
    with pytest.raises(GeotranslateError, match="out.tif: already exists"):
        predict_raster(src, run, out, device="cpu", progress=False)
    import rasterio

    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (32, 32)  # the other run's result, not replaced
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- leftovers of a killed run -------------------------------------------------------------


KILLED_WRITER = """
import os, signal, sys
from geotranslate.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100000)
    open(str(tmp) + ".ovr.tmp", "wb").write(b"y" * 1000)  # what GDAL derives from it
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(make_raster, tmp_path, capsys):
    out = tmp_path / "view.png"
    result = _run("-c", KILLED_WRITER, str(out), cwd=tmp_path)
    assert result.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(".view.png.") for n in left), left
    assert not out.exists()
    alive = tmp_path / f".other.tif.{os.getppid()}.abcdefgh.part"  # a live run's: kept
    alive.write_bytes(b"z")
    user_file = tmp_path / ".notes.1.part"  # not a name geotranslate makes: kept
    user_file.write_bytes(b"z")
    src = make_raster("in.tif", np.random.default_rng(0).normal(size=(1, 32, 32)))
    assert main(["preview", str(src), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "removed 2 temporary file(s)" in err and "interrupted runs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, user_file.name, "in.tif", "view.png"])


# ---- the model's two files are replaced as a unit ------------------------------------------


def test_a_save_killed_between_its_renames_is_completed_at_load(tmp_path, monkeypatch):
    old = tiny_cyclegan_model()
    save_model(old, tmp_path)
    new = tiny_cyclegan_model()
    with torch.no_grad():
        for p in new.generators["a2b"].parameters():
            p.add_(0.5)
    real_replace = os.replace

    def die_before_model_json(src, dst):
        if Path(dst).name == META_NAME:
            raise KeyboardInterrupt  # the kill: the weights are renamed, model.json is not
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_before_model_json)
    with pytest.raises(KeyboardInterrupt):
        save_model(new, tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = load_model(tmp_path)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        new.generators["a2b"].eval()
        torch.testing.assert_close(loaded.generators["a2b"](x), new.generators["a2b"](x))
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_NAME, WEIGHTS_NAME]
    # damage without an interrupted save to finish is still called damage
    data = bytearray((tmp_path / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 1
    (tmp_path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(GeotranslateError, match="truncated or modified file, and no interrupted"):
        load_model(tmp_path)


def test_a_save_killed_before_the_weights_rename_keeps_the_old_pair(tmp_path, monkeypatch):
    old = tiny_cyclegan_model()
    save_model(old, tmp_path)
    real_replace = os.replace

    def die_at_weights(src, dst):
        if Path(dst).name == WEIGHTS_NAME:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_at_weights)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_cyclegan_model(), tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = load_model(tmp_path)  # the old pair, intact
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        old.generators["a2b"].eval()
        torch.testing.assert_close(loaded.generators["a2b"](x), old.generators["a2b"](x))


# ---- file problems are one line, exit 1 ----------------------------------------------------


def test_a_file_or_directory_in_the_wrong_place_is_one_line(make_raster, tmp_path, capsys):
    src = make_raster("in.tif", np.zeros((2, 32, 32), dtype=np.float32))
    run = make_model(tmp_path)
    cases = [
        (["train", str(src), "--dataset-type", "Pix2Pix"], "in.tif: is a file"),
        (["train", "--resume", str(src)], "in.tif"),
        (["predict-raster", str(tmp_path), "--model", str(run)], "is a directory"),
        (["predict-raster", str(src), "--model", str(run), "--out", str(tmp_path)],
         "is a directory"),
    ]
    for args, expected in cases:
        assert main(args) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("geotranslate: error:") and expected in err, err
        assert len(err.splitlines()) == 1, err


def test_warnings_are_one_line_or_silenced(tmp_path):
    huge = np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32) * 1e30
    huge[0, :4, :4] = np.inf  # invalid pixels, scaled like the others before being masked
    write_raster(tmp_path / "huge.tif", huge)
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(
        tmp_path / "plain.png")  # no georeference at all
    for name in ("huge.tif", "plain.png"):
        result = _run("-m", "geotranslate", "preview", name, "--out", "p.png", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr


def test_warnings_that_remain_are_one_line(tmp_path, capsys):
    import warnings

    from geotranslate import cli

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        cli._one_line_warnings()
        warnings.warn("something odd", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "geotranslate: warning: something odd (RuntimeWarning)\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_input_is_one_line(make_raster, tmp_path, capsys):
    src = make_raster("in.tif", np.zeros((2, 32, 32), dtype=np.float32))
    src.chmod(0)
    for args in (["preview", str(src), "--out", str(tmp_path / "p.png")],
                 ["evaluate", str(src), str(src), "--json", str(tmp_path / "r.json")]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"geotranslate: error: {src}: not readable (permission denied)"
