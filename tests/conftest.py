"""Shared test fixtures: small rasters written on the fly, chips and models, and the optional
real-data folder. The builders behind them are in builders.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import ROOT, make_chip_model, make_chips, write_raster

REAL_DATA = ROOT.parent / "shared" / "data" / "real"

# Tiny test networks gain nothing from several threads, and on a shared 2-core machine OpenMP
# threads waiting for each other (beside the predictor's I/O threads) make them 10-50x slower.
torch.set_num_threads(1)


@pytest.fixture
def make_raster(tmp_path):
    """Factory: make_raster(name, data, **write_raster kwargs) -> path inside tmp_path."""

    def _make(name: str, data: np.ndarray, **kwargs) -> Path:
        return write_raster(tmp_path / name, data, **kwargs)

    return _make


@pytest.fixture
def real_data() -> Path:
    """The shared real rasters beside the checkout; tests using them skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} not present")
    return REAL_DATA


@pytest.fixture
def small_disk(tmp_path):
    """Factory: small_disk(free_bytes) -> a folder on a tiny tmpfs with about that much room left.

    Writes there fail with a real ENOSPC, the way a full disk fails a long run. Mounting needs
    root (CI and the development machines run as root); elsewhere the test skips.
    """
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
            capture_output=True, text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command to make a small disk")
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")

    def _leave(free_bytes: int) -> Path:
        st = os.statvfs(mount_point)
        fill = st.f_bavail * st.f_frsize - free_bytes
        with open(mount_point / "filler", "wb") as f:
            f.write(b"\0" * fill)
        folder = mount_point / "out"
        folder.mkdir()
        return folder

    yield _leave
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def paired_chips(tmp_path_factory) -> Path:
    """16 train and 4 val chip pairs following builders.known_mapping, one folder per module."""
    return make_chips(tmp_path_factory.mktemp("paired") / "chips", n_train=16, n_val=4)


@pytest.fixture
def chip_model(tmp_path):
    """(chips, run, g_ab, model): builders.make_chip_model in this test's folder."""
    return make_chip_model(tmp_path)
