"""preview / render: band choice, stretch, nodata, decimated reads, windows, PNG sizes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from rasterio.transform import from_origin

from geotranslate.cli import main
from geotranslate.errors import GeotranslateError
from geotranslate.render import (
    GAP,
    TITLE_HEIGHT,
    Panel,
    parse_window,
    read_for_display,
    render_panels,
    render_rasters,
)

CHECKER = {(235, 235, 235), (205, 205, 205)}


def _pixel(image: Image.Image, col: int, row: int, panel: int = 0, cell_w: int = 0):
    return image.getpixel((panel * (cell_w + GAP) + col, TITLE_HEIGHT + row))[:3]


def test_preview_1_2_3_4_bands_and_nan(make_raster, tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1000, size=(80, 100)).astype(np.float32)
    nan = base.copy()
    nan[:20, :30] = np.nan
    paths = [
        make_raster("one.tif", base[None]),
        make_raster("sar.tif", np.stack([base - 20, base - 30]), descriptions=["VV", "VH"]),
        make_raster("three.tif", np.stack([base, base * 0.5, base * 0.2]).astype(np.uint16)),
        make_raster("four.tif", np.stack([base] * 4).astype(np.uint16),
                    descriptions=["blue", "green", "red", "nir"], nodata=0),
        make_raster("nan.tif", nan[None]),
    ]
    out = tmp_path / "preview.png"
    image = render_rasters(paths, out, max_size=64)
    # 100 x 80 px decimated to 64 x 51 (longest side 64), five panels side by side
    with Image.open(out) as png:
        assert png.size == (5 * 64 + 4 * GAP, 51 + TITLE_HEIGHT)
        assert png.size == image.size
    # gray panels have R == G == B; the NaN corner shows the checkerboard
    for panel in (0, 1, 4):
        r, g, b = _pixel(image, 40, 40, panel, 64)
        assert r == g == b
    assert _pixel(image, 3, 3, 4, 64) in CHECKER


def test_rgb_from_descriptions_and_override(make_raster, tmp_path):
    data = np.full((4, 40, 40), 100, dtype=np.uint16)
    data[2, :, :20] = 3000  # "red" band bright on the left
    data[:2, :, 20:] = 2000  # "blue" and "green" bright on the right
    data[3] = 5000  # nir: not shown
    path = make_raster("bgrn.tif", data, descriptions=["blue", "green", "red", "nir"])
    image = render_rasters([path], tmp_path / "a.png", min_size=0)
    assert _pixel(image, 5, 20) == (255, 0, 0)
    assert _pixel(image, 30, 20) == (0, 255, 255)
    # override: band 3 shown alone, in gray
    image = render_rasters([path], tmp_path / "b.png", rgb_bands="3", min_size=0)
    r, g, b = _pixel(image, 5, 20)
    assert r == g == b == 255
    with pytest.raises(GeotranslateError, match="band 7 out of range"):
        render_rasters([path], tmp_path / "c.png", rgb_bands="3,2,7")
    with pytest.raises(GeotranslateError, match="1 or 3 bands"):
        render_rasters([path], tmp_path / "c.png", rgb_bands="3,2")


def test_colour_interpretation_used_when_no_descriptions(make_raster, tmp_path):
    import rasterio
    from rasterio.enums import ColorInterp

    data = np.zeros((3, 16, 16), dtype=np.uint8)
    data[0] = np.arange(16, dtype=np.uint8)[None] * 10  # band 1 is blue: a ramp
    path = make_raster("bgr.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    panel = read_for_display(path)
    # RGB order: red (band 3), green (band 2), blue (band 1)
    assert panel.band_descriptions == ["red", "green", "blue"]
    np.testing.assert_array_equal(panel.data[2], data[0])


def test_nodata_transparent_and_small_rasters_enlarged(make_raster, tmp_path):
    data = np.arange(100, dtype=np.int16).reshape(1, 10, 10)
    data[0, 0, :] = -1
    path = make_raster("tiny.tif", data, nodata=-1)
    image = render_rasters([path], tmp_path / "tiny.png", min_size=100)
    assert image.size == (100, 100 + TITLE_HEIGHT)  # enlarged x10
    assert _pixel(image, 50, 5) in CHECKER  # row 0 was nodata
    assert _pixel(image, 50, 95) not in CHECKER


def test_decimated_read_is_bounded(make_raster, tmp_path):
    cols = np.tile(np.arange(3000, dtype=np.float32), (1500, 1))
    path = make_raster("wide.tif", cols[None], blocksize=256)
    start = time.perf_counter()
    panel = read_for_display(path, max_size=300)
    assert time.perf_counter() - start < 5
    assert panel.data.shape == (1, 150, 300)
    assert "(1:10)" in panel.title
    row = panel.data[0, 0]
    assert np.all(np.diff(row) > 0) and row[0] < 10 and row[-1] > 2990  # samples across the width


def test_windows_pixel_and_map(make_raster):
    data = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    path = make_raster("grid.tif", data, transform=from_origin(1000.0, 2000.0, 10.0, 10.0))
    by_pixel = read_for_display(path, window=parse_window("16,8,10,20"))
    np.testing.assert_array_equal(by_pixel.data[0], data[0, 16:26, 8:28])
    # the same region in map coordinates: left 1080, right 1280, top 2000-160, bottom 2000-260
    by_map = read_for_display(path, window=parse_window("map:1080,1740,1280,1840"))
    np.testing.assert_array_equal(by_map.data, by_pixel.data)
    with pytest.raises(GeotranslateError, match="outside the raster"):
        read_for_display(path, window=parse_window("100,100,10,10"))
    with pytest.raises(GeotranslateError, match="ROW_OFF,COL_OFF,HEIGHT,WIDTH"):
        parse_window("1,2,3")
    with pytest.raises(GeotranslateError, match="LEFT < RIGHT"):
        parse_window("map:5,0,1,1")


def test_arrays_and_panels_render_like_training_previews(tmp_path):
    data = np.random.default_rng(2).normal(size=(2, 32, 32))
    data[:, :4, :4] = np.nan
    panel = Panel("fake B", np.random.default_rng(3).normal(size=(3, 32, 32)))
    image = render_rasters([data, panel], tmp_path / "arrays.png", titles=["A", "B"], min_size=0)
    assert image.size == (2 * 32 + GAP, 32 + TITLE_HEIGHT)
    assert _pixel(image, 1, 1) in CHECKER
    image = render_panels([panel, panel, panel], tmp_path / "grid.png", columns=2)
    assert image.size == (2 * 32 + GAP, 2 * (32 + TITLE_HEIGHT) + GAP)


def test_cli_preview(make_raster, tmp_path, capsys):
    a = make_raster("a.tif", np.random.default_rng(4).uniform(size=(1, 50, 40)).astype("float32"))
    out = tmp_path / "p.png"
    assert main(["preview", str(a), str(a), "--out", str(out), "--window", "0,0,25,20"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as png:
        # 25 rows x 20 cols (ROW_OFF,COL_OFF,HEIGHT,WIDTH) enlarged x10 to 200 x 250 px
        assert png.size == (2 * 200 + GAP, 250 + TITLE_HEIGHT)
    assert main(["preview", str(tmp_path / "missing.tif"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing.tif: no such file" in err and err.count("\n") == 1


def test_real_zero_filled_sar_previews_quickly(real_data, tmp_path):
    sar = real_data / "sarsen" / (
        "s1b-iw-grd-vv-20211223t051122-20211223t051147-030148-039993-001.tiff"
    )
    start = time.perf_counter()
    image = render_rasters([sar], tmp_path / "sar.png")  # 26102 x 16705 px, no CRS
    assert time.perf_counter() - start < 20
    assert image.size == (1024, round(16705 / (26102 / 1024)) + TITLE_HEIGHT)
    pixels = np.asarray(image)[TITLE_HEIGHT:]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) == 1  # all zeros: one uniform colour
