"""Checks on the committed synthetic sample data, so docs and demos can rely on its layout."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from builders import ROOT, load_tool
from rasterio.warp import transform_bounds

SAMPLE = ROOT / "sample_data"
MAX_BYTES = 8 * 1024 * 1024

# name: (crs, res, width x height or None when computed by the warp, count, dtype, nodata, bands)
EXPECTED = {
    "dsm.tif": ("EPSG:32633", 10.0, (512, 512), 1, "float32", -9999.0, ("DSM (m)",)),
    "optical.tif": (
        "EPSG:32633",
        10.0,
        (512, 512),
        4,
        "uint16",
        0.0,
        ("blue", "green", "red", "nir"),
    ),
    "sar.tif": ("EPSG:32633", 10.0, (512, 512), 2, "float32", -9999.0, ("VV", "VH")),
    "map.tif": ("EPSG:32633", 10.0, (512, 512), 3, "uint8", None, ("red", "green", "blue")),
    "optical_utm32_15m.tif": (
        "EPSG:32632",
        15.0,
        None,
        4,
        "uint16",
        0.0,
        ("blue", "green", "red", "nir"),
    ),
}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """The generator script imported as a module (tools/ is not a package)."""
    return load_tool("make_sample_data")


@pytest.fixture(scope="module")
def classes(generator: ModuleType) -> np.ndarray:
    """Land-cover class map of the committed scene (cheap to rebuild, < 1 s)."""
    return generator.build_scene().classes


def read(name: str | Path, band: int | None = None) -> np.ndarray:
    """Read a whole raster (or one band); a bare name means a committed sample file."""
    with rasterio.open(SAMPLE / name) as src:
        return src.read(band) if band else src.read()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_file_metadata(name: str) -> None:
    crs, res, size, count, dtype, nodata, bands = EXPECTED[name]
    with rasterio.open(SAMPLE / name) as src:
        assert src.crs.to_string() == crs
        assert src.res == pytest.approx((res, res))
        if size is not None:
            assert (src.width, src.height) == size
        assert src.count == count
        assert set(src.dtypes) == {dtype}
        assert src.nodata == nodata
        assert src.descriptions == bands
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name == "deflate"


def test_colour_interpretation() -> None:
    ci = rasterio.enums.ColorInterp
    with rasterio.open(SAMPLE / "optical.tif") as src:
        assert src.colorinterp == (ci.blue, ci.green, ci.red, ci.undefined)
    with rasterio.open(SAMPLE / "map.tif") as src:
        assert src.colorinterp == (ci.red, ci.green, ci.blue)


def test_dsm_has_nodata_patch_and_plausible_heights() -> None:
    dsm = read("dsm.tif", 1)
    gap = dsm == -9999.0
    assert 1000 <= gap.sum() <= 5000
    valid = dsm[~gap]
    assert 150.0 < valid.min() and valid.max() < 700.0


def test_optical_and_sar_ranges() -> None:
    optical = read("optical.tif")
    assert optical.min() >= 1  # 0 is nodata, so valid pixels never hold it
    sar = read("sar.tif")
    assert -40.0 < np.percentile(sar[0], 1) and np.percentile(sar[0], 99) < 10.0
    # VH is several dB below VV on average.
    assert 5.0 < float(np.median(sar[0] - sar[1])) < 9.0


def test_water_darker_than_land(classes: np.ndarray) -> None:
    water, land = classes == 1, classes != 1
    assert water.sum() > 2000
    vv = read("sar.tif", 1)
    nir = read("optical.tif", 4).astype(np.float64)
    assert vv[water].mean() < vv[land].mean() - 8.0
    assert nir[water].mean() < 0.3 * nir[land].mean()


def test_darkest_sar_is_dark_in_nir() -> None:
    vv = read("sar.tif", 1)
    nir = read("optical.tif", 4)
    darkest = vv <= np.percentile(vv, 5)
    assert (nir[darkest] < 1000).mean() > 0.6


def test_warped_optical_inside_main_grid() -> None:
    with rasterio.open(SAMPLE / "dsm.tif") as ref:
        ref_bounds = ref.bounds
    with rasterio.open(SAMPLE / "optical_utm32_15m.tif") as src:
        left, bottom, right, top = transform_bounds(src.crs, ref.crs, *src.bounds, densify_pts=21)
        data = src.read()
    assert ref_bounds.left < left and right < ref_bounds.right
    assert ref_bounds.bottom < bottom and top < ref_bounds.top
    nodata = (data == 0).all(axis=0)
    assert nodata.any() and (data == 0).any(axis=0).sum() == nodata.sum()
    assert 0.02 < nodata.mean() < 0.3  # the rotated corners of the footprint


def test_total_size() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < MAX_BYTES


def test_regeneration_reproduces_committed_files(generator: ModuleType, tmp_path: Path) -> None:
    """Determinism check: a fresh run reproduces the committed rasters and README.

    Pixels are compared to within float32 rounding rather than bytes: compressed bytes can
    change with the zlib or GDAL build, which says nothing about the generator.
    """
    written = generator.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in SAMPLE.iterdir() if p.is_file()
    )
    for path in written:
        if path.suffix == ".tif":
            committed, fresh = read(path.name), read(path)
            # one rounding step: 1 unit for integers, 0.01 dB/m for the rounded floats
            atol = 1 if np.issubdtype(committed.dtype, np.integer) else 0.011
            np.testing.assert_allclose(fresh, committed, rtol=0, atol=atol)
        else:
            assert path.read_text() == (SAMPLE / path.name).read_text(), path.name
