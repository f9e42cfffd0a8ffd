"""The error kinds: each is also the built-in exception it is a case of, and the CLI prints any
of them as one line with exit status 1."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from geotranslate.cli import main
from geotranslate.errors import GeotranslateError, InputError, OptionError, StorageError
from geotranslate.files import atomic_path
from geotranslate.methods import build_method
from geotranslate.predict.batch import predict_rasters
from geotranslate.raster.io import open_raster, parse_bands
from geotranslate.train import TrainConfig


def one_error_line(capsys, status: int) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith("geotranslate: error: "), captured.err
    return lines[0]


def test_a_file_that_is_no_raster_is_an_input_error_and_a_value_error(tmp_path, capsys):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    with pytest.raises(ValueError) as caught:  # as a library user may catch it
        open_raster(text)
    assert isinstance(caught.value, InputError) and isinstance(caught.value, GeotranslateError)
    assert str(caught.value).startswith(f"{text}: cannot open as a raster")
    line = one_error_line(capsys, main(["preview", str(text), "--out", str(tmp_path / "p.png")]))
    assert line == f"geotranslate: error: {caught.value}"


def test_a_band_the_raster_lacks_is_an_option_error_and_a_value_error(make_raster, tmp_path,
                                                                      capsys):
    raster = make_raster("two.tif", np.ones((2, 16, 16), np.float32))
    with open_raster(raster) as ds, pytest.raises(ValueError) as caught:
        parse_bands("1,3", ds)
    assert isinstance(caught.value, OptionError)
    assert str(caught.value) == f"{raster}: band 3 out of range (the raster has bands 1..2)"
    status = main(["export-tiles", str(raster), "--tile-size", "4", "--out",
                   str(tmp_path / "chips"), "--no-progress"])
    assert one_error_line(capsys, status) == (
        "geotranslate: error: tile size 4: must be at least 8 pixels")
    assert not (tmp_path / "chips").exists()


def test_an_output_that_cannot_be_written_is_a_storage_error_and_an_os_error(make_raster,
                                                                             tmp_path, capsys):
    with pytest.raises(OSError) as caught, atomic_path(tmp_path / "missing" / "out.tif"):
        pass
    assert isinstance(caught.value, StorageError)
    assert str(caught.value) == f"{tmp_path / 'missing'}: output directory does not exist"
    # it crosses a process boundary (predict's worker processes) unchanged
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is StorageError and str(again) == str(caught.value)
    raster = make_raster("scene.tif", np.ones((1, 16, 16), np.float32))
    before = raster.read_bytes()
    line = one_error_line(capsys, main(["preview", str(raster), "--out", str(raster)]))
    assert line == (f"geotranslate: error: {raster}: output would overwrite the input {raster}; "
                    "choose another name")
    assert raster.read_bytes() == before


def test_a_training_setting_the_method_cannot_use_is_an_option_error_and_a_value_error():
    config = TrainConfig("CUT", generator="unet", ngf=8, ndf=8, n_layers_d=2)
    with pytest.raises(ValueError) as caught:
        build_method("CUT", config, {"a": 2, "b": 2}, 32)
    assert isinstance(caught.value, OptionError)
    assert str(caught.value) == ("CUT needs --generator resnet (its encoder gives the NCE "
                                 "features)")


def test_a_mosaic_in_a_missing_folder_is_a_storage_error_and_an_os_error(make_raster, tmp_path,
                                                                         capsys):
    raster = make_raster("scene.tif", np.ones((1, 16, 16), np.float32))
    mosaic, out = tmp_path / "missing" / "all.vrt", tmp_path / "out"
    with pytest.raises(OSError) as caught:  # refused before the model is read
        predict_rasters([raster], tmp_path / "run", out, mosaic=mosaic)
    assert isinstance(caught.value, StorageError)
    assert str(caught.value) == f"{mosaic.parent}: --mosaic's directory does not exist"
    status = main(["predict-raster", str(raster), "--model", str(tmp_path / "run"),
                   "--out-dir", str(out), "--mosaic", str(mosaic)])
    assert one_error_line(capsys, status) == f"geotranslate: error: {caught.value}"
    assert not out.exists()
