"""Logs: logging with --quiet/--verbose, progress bars only on a terminal, advice said once,
one line per rank's own messages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from builders import ROOT, write_raster
from rasterio.transform import from_origin

from geotranslate.cli import main
from geotranslate.log import Advice, logger, set_verbosity, show_progress
from geotranslate.train.validation import validation_line

#: what tqdm leaves in a file: carriage returns, its "NN%|" bars, its rates
BAR_MARKS = ("\r", "%|", "it/s", "s/it", "window/s", "tile/s")
TINY_TRAIN = ["--dataset-type", "Pix2Pix", "--ngf", "4", "--ndf", "4", "--n-layers-d", "1",
              "--epochs", "1", "--epochs-decay", "0", "--batch-size", "4", "--device", "cpu",
              "--no-preview"]


@pytest.fixture
def rasters(tmp_path):
    rng = np.random.default_rng(0)
    transform = from_origin(500000, 5300000, 10, 10)
    write_raster(tmp_path / "a.tif", rng.normal(-12, 3, (2, 96, 96)).astype("float32"),
                 transform=transform)
    write_raster(tmp_path / "b.tif", rng.integers(200, 4000, (3, 96, 96)).astype("uint16"),
                 transform=transform, nodata=0)
    return tmp_path


def test_a_log_file_gets_lines_and_no_progress_bar_fragments(rasters):
    """export-tiles then train, stderr into a file as `make demo > log 2>&1` does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = (f"{sys.executable} -m geotranslate export-tiles a.tif --b b.tif --out chips "
              "--tile-size 32 --val-fraction 0.2 && "
              f"{sys.executable} -m geotranslate train chips --out run {' '.join(TINY_TRAIN)}")
    with open(rasters / "log.txt", "w") as log:
        done = subprocess.run(["bash", "-c", script + " 2>&1"], cwd=rasters, env=env,
                              stdout=log, stderr=subprocess.STDOUT, timeout=300)
    text = (rasters / "log.txt").read_text()
    assert done.returncode == 0, text[-2000:]
    assert "Exported" in text and "geotranslate train: done:" in text
    assert "untrained model validation" in text
    for mark in BAR_MARKS:
        assert mark not in text, mark


def test_progress_forced_and_quiet(rasters, monkeypatch, capsys):
    monkeypatch.chdir(rasters)
    # --progress draws the bar even into a capture: the check above can fail
    assert main(["export-tiles", "a.tif", "--b", "b.tif", "--out", "c1", "--tile-size", "32",
                 "--progress"]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "%|" in err
    assert main(["export-tiles", "a.tif", "--b", "b.tif", "--out", "c2", "--tile-size", "32",
                 "--val-fraction", "0.2"]) == 0
    assert not any(mark in capsys.readouterr().err for mark in BAR_MARKS)
    # --quiet: no info line, the result still on stdout
    assert main(["train", "c2", "--out", "run", "--quiet", *TINY_TRAIN]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip() == "run"
    assert "untrained model validation" in (rasters / "run" / "train.log").read_text()
    # the next command is at the default again; --verbose is accepted everywhere
    assert main(["evaluate", "a.tif", "a.tif", "-v"]) == 0
    # an error stays one line under --quiet; --quiet --verbose is refused
    capsys.readouterr()
    assert main(["train", "nowhere", "--out", "run2", "-q", *TINY_TRAIN]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotranslate: error: ") and "no such chip directory" in err
    assert len(err.splitlines()) == 1
    assert main(["report", "run", "--quiet", "--verbose"]) == 2
    assert "--quiet and --verbose contradict" in capsys.readouterr().err


def test_every_command_takes_quiet_and_verbose(capsys):
    from geotranslate.cli import cli

    for name in cli.commands:
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--quiet" in text and "--verbose" in text, name


def test_show_progress_follows_the_terminal_and_the_verbosity(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    assert show_progress(None) is False  # pytest's capture is not a terminal
    assert show_progress(True) is True
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show_progress(None) is True and show_progress(False) is False
    set_verbosity(-1)
    try:
        assert show_progress(None) is False
    finally:
        set_verbosity(0)


def test_flat_image_advice_is_said_once_then_counted():
    scores = {"val_l1": 0.3, "val_psnr": 14.0, "val_ssim": 0.2,
              "val_flat_l1": 0.25, "val_flat_psnr": 14.8, "val_flat_ssim": 0.1}
    advice = Advice()
    lines = [validation_line(epoch, scores, advice) for epoch in range(5, 9)]
    assert "check --augment" in lines[0]
    assert all("check --augment" not in line for line in lines[1:])
    assert lines[1].endswith("no better than a flat image after 6 epochs (PSNR) "
                             "(2 times; see the advice above)")
    assert lines[3].endswith("after 8 epochs (PSNR) (4 times; see the advice above)")
    # lines stay short: the figures and the reminder, not the 260-character advice
    assert len(lines[3]) <= len(lines[0]) - 100


def test_a_rank_other_than_0_says_its_rank(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    logger.warning("its own problem")
    logging.getLogger("geotranslate.train").info("a line")
    assert capsys.readouterr().err.splitlines() == [
        "geotranslate [rank 1]: warning: its own problem", "geotranslate train [rank 1]: a line"]
    monkeypatch.setenv("RANK", "0")
    logger.info("run-wide")
    assert capsys.readouterr().err == "geotranslate: run-wide\n"
