"""Shared test fixtures: small rasters written on the fly, and the optional real-data folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real"

def load_tool(name: str) -> ModuleType:
    """A script of tools/ imported as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


# Tiny test networks gain nothing from several threads, and on a shared 2-core machine OpenMP
# threads waiting for each other (beside the predictor's I/O threads) make them 10-50x slower.
torch.set_num_threads(1)


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    tiled: bool = True,
    blocksize: int = 64,
    alpha: np.ndarray | None = None,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF; returns its path.

    ``alpha`` (rows, cols; 0 = transparent) is appended as an alpha band.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    if transform is None:
        transform = from_origin(500000.0, 5300000.0, 10.0, 10.0)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count + (alpha is not None),
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled and height >= blocksize and width >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, indexes=list(range(1, count + 1)))
        if alpha is not None:
            dst.write(alpha.astype(data.dtype), count + 1)
            dst.colorinterp = [rasterio.enums.ColorInterp.undefined] * count + [
                rasterio.enums.ColorInterp.alpha
            ]
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path


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
