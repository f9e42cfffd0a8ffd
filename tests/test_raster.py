"""The raster foundation: opening/validation, valid masks, windows and padding, statistics."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from geotranslate.errors import GeotranslateError
from geotranslate.files import atomic_path
from geotranslate.raster.io import (
    open_raster,
    parse_bands,
    raster_info,
    read_window,
    valid_from_data,
)
from geotranslate.raster.opening import spectral_bands
from geotranslate.raster.windows import Grid, grid_offset, reflect_pad, tile_offsets, tile_windows
from geotranslate.stats import Normalizer, StatsAccumulator, cast_to_dtype, stats_from_dict

# ---- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "stride", "expected"),
    [
        (256, 64, 64, [0, 64, 128, 192]),
        (150, 64, 64, [0, 64, 86]),  # last tile flush with the end
        (150, 64, 32, [0, 32, 64, 86]),
        (40, 64, 64, [0]),  # smaller than a tile: one tile, padded by the caller
        (64, 64, 64, [0]),
    ],
)
def test_tile_offsets_cover_the_length_flush_with_the_end(length, tile, stride, expected):
    offsets = tile_offsets(length, tile, stride)
    assert offsets == expected
    covered = np.zeros(max(length, tile), dtype=bool)
    for off in offsets:
        covered[off : off + tile] = True
    assert covered[:length].all()
    assert all(off + tile <= max(length, tile) for off in offsets)


def test_tile_offsets_refuse_non_positive_sizes():
    with pytest.raises(ValueError):
        tile_offsets(100, 0, 10)
    with pytest.raises(ValueError):
        tile_offsets(100, 10, 0)


def test_tile_offsets_with_a_margin_reach_outside_the_raster():
    """Prediction's grid: tiles start ``overlap`` before the raster and end as far past it."""
    rows = tile_offsets(100 + 16, 64, 32, start=-16)
    cols = tile_offsets(120 + 16, 64, 32, start=-16)
    assert rows[0] == -16 and rows[-1] + 64 == 116
    assert cols[0] == -16 and cols[-1] + 64 == 136


def test_tile_windows_cover_the_grid_row_by_row():
    windows = list(tile_windows(100, 120, 64, 32))
    rows = sorted({w.row_off for w in windows})
    cols = sorted({w.col_off for w in windows})
    assert rows == [0, 32, 36] and cols == [0, 32, 56]
    assert all((w.width, w.height) == (64, 64) for w in windows)
    assert len(windows) == len(rows) * len(cols)


def test_reflect_pad_mirrors_edges_and_validity():
    inner = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    valid = np.ones((3, 4), dtype=bool)
    valid[0, 1] = False
    padded, padded_valid = reflect_pad(inner, valid, ((2, 0), (2, 1)))
    assert padded.shape == (1, 5, 7) and padded_valid.shape == (5, 7)
    # row -1 mirrors row 1, column -1 mirrors column 1, column 4 mirrors column 2
    np.testing.assert_array_equal(padded[0, 2:, 2:6], inner[0])
    np.testing.assert_array_equal(padded[0, 1, 2:6], inner[0, 1])
    np.testing.assert_array_equal(padded[0, 2:, 1], inner[0, :, 1])
    np.testing.assert_array_equal(padded[0, 2:, 6], inner[0, :, 2])
    assert not padded_valid[2, 3] and padded_valid[2:, 2:6].sum() == 11


def test_reflect_pad_handles_padding_larger_than_the_raster():
    inner = np.array([[[1.0, 2.0]]], dtype=np.float32)  # 1 x 2 raster
    padded, padded_valid = reflect_pad(inner, np.ones((1, 2), bool), ((0, 3), (0, 3)))
    assert padded.shape == (1, 4, 5) and padded_valid.all()
    np.testing.assert_array_equal(padded[0, 3], [1.0, 2.0, 1.0, 2.0, 1.0])


# ---- opening and reading ---------------------------------------------------------------------


def test_open_raster_refuses_bad_files_with_one_line_errors(make_raster, tmp_path):
    with pytest.raises(GeotranslateError, match="no such file"):
        open_raster(tmp_path / "missing.tif")
    with pytest.raises(GeotranslateError, match="is a directory"):
        open_raster(tmp_path)
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(GeotranslateError, match="cannot open as a raster"):
        open_raster(tmp_path / "text.tif")
    with pytest.raises(GeotranslateError, match="complex"):
        open_raster(make_raster("c.tif", np.ones((1, 8, 8), dtype="complex64")))
    with pytest.raises(GeotranslateError, match="int64"):
        open_raster(make_raster("i.tif", np.ones((1, 8, 8), dtype="int64")))
    nocrs = make_raster("n.tif", np.ones((1, 8, 8), dtype="uint8"), crs=None)
    with pytest.raises(GeotranslateError, match="no CRS"):
        open_raster(nocrs)
    with open_raster(nocrs, allow_no_crs=True) as ds:
        assert ds.crs is None


def test_open_raster_refuses_gcp_only_rasters(tmp_path):
    path = tmp_path / "gcp.tif"
    gcps = [GroundControlPoint(r, c, 10 + c, 50 - r) for r, c in ((0, 0), (0, 8), (8, 0))]
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 8, 8), dtype="uint8"))
        dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(4326))
    with pytest.raises(GeotranslateError, match="3 GCPs"):
        open_raster(path)


def test_bands_alpha_is_a_mask_not_a_band(make_raster):
    rgb = np.ones((3, 16, 16), dtype="uint8")
    path = make_raster(
        "rgba.tif", rgb, alpha=np.full((16, 16), 255, dtype="uint8"), descriptions=["r", "g", "b"]
    )
    with open_raster(path) as ds:
        assert spectral_bands(ds) == [1, 2, 3]
        assert parse_bands(None, ds) == [1, 2, 3]
        assert parse_bands("3,1", ds) == [3, 1]
        with pytest.raises(GeotranslateError, match="alpha"):
            parse_bands("4", ds)
        with pytest.raises(GeotranslateError, match="out of range"):
            parse_bands("5", ds)
        with pytest.raises(GeotranslateError, match="expected a list"):
            parse_bands("red", ds)
        info = raster_info(ds)
        assert info.count == 3 and info.band_descriptions == ("r", "g", "b")
        assert info.pixel_size == (10.0, 10.0) and info.crs == "EPSG:32633"


def test_valid_from_data_nodata_and_nan():
    data = np.array([[[1.0, -9999.0], [np.nan, 4.0]], [[1.0, 2.0], [3.0, np.inf]]])
    np.testing.assert_array_equal(valid_from_data(data, -9999.0), [[True, False], [False, False]])
    np.testing.assert_array_equal(valid_from_data(data, None), [[True, True], [False, False]])
    np.testing.assert_array_equal(
        valid_from_data(data, float("nan")), [[True, True], [False, False]]
    )
    ints = np.array([[[0, 5]]], dtype=np.uint16)
    np.testing.assert_array_equal(valid_from_data(ints, 0), [[False, True]])


def test_read_window_valid_from_nodata_alpha_mask_and_boundless(make_raster, tmp_path):
    data = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    data[0, 0, 0] = -1.0
    data[0, 1, 1] = np.nan
    with open_raster(make_raster("nd.tif", data, nodata=-1.0)) as ds:
        got, valid = read_window(ds, Window(0, 0, 4, 4), [1])
        np.testing.assert_array_equal(got[0], data[0, :4, :4])
        assert not valid[0, 0] and not valid[1, 1] and valid.sum() == 14
        # boundless: outside pixels are invalid, inside ones read as usual
        got, valid = read_window(ds, Window(6, 6, 4, 4), [1], boundless=True)
        np.testing.assert_array_equal(got[0, :2, :2], data[0, 6:, 6:])
        assert valid[:2, :2].all() and valid.sum() == 4
        assert (got[0, 2:] == -1.0).all() and (got[0, :, 2:] == -1.0).all()  # nodata outside
        got, valid = read_window(ds, Window(-3, -2, 5, 4), [1], boundless=True)
        np.testing.assert_array_equal(got[0, 2:, 3:], data[0, :2, :2])
        np.testing.assert_array_equal(valid[2:, 3:], [[False, True], [True, False]])
        assert valid.sum() == 2
        got, valid = read_window(ds, Window(20, 0, 4, 4), [1], boundless=True)
        assert not valid.any() and (got == -1.0).all()

    alpha = np.full((8, 8), 255, dtype="uint8")
    alpha[:, :3] = 0
    with open_raster(make_raster("a.tif", np.ones((3, 8, 8), "uint8"), alpha=alpha)) as ds:
        _, valid = read_window(ds, Window(0, 0, 8, 8), [1, 2, 3])
        np.testing.assert_array_equal(valid, alpha > 0)

    path = tmp_path / "mask.tif"
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=8,
            height=8,
            count=1,
            dtype="uint8",
            crs="EPSG:32633",
            transform=rasterio.transform.from_origin(0, 80, 10, 10),
        ) as dst,
    ):
        dst.write(np.ones((1, 8, 8), "uint8"))
        dst.write_mask(np.where(np.eye(8, dtype=bool), 0, 255).astype("uint8"))
    with open_raster(path) as ds:
        _, valid = read_window(ds, Window(0, 0, 8, 8), [1])
        np.testing.assert_array_equal(valid, ~np.eye(8, dtype=bool))


def test_grid_offset_only_for_rasters_on_the_same_pixel_grid(make_raster):
    grid = Grid(CRS.from_epsg(32633), from_origin(500000.0, 5300000.0, 10.0, 10.0), 64, 64)
    cases = {
        "same": (from_origin(500000.0, 5300000.0, 10.0, 10.0), "EPSG:32633", (0, 0)),
        "shifted": (from_origin(500030.0, 5299950.0, 10.0, 10.0), "EPSG:32633", (5, 3)),
        "before": (from_origin(499980.0, 5300010.0, 10.0, 10.0), "EPSG:32633", (-1, -2)),
        "half pixel": (from_origin(500005.0, 5300000.0, 10.0, 10.0), "EPSG:32633", None),
        "other size": (from_origin(500000.0, 5300000.0, 20.0, 20.0), "EPSG:32633", None),
        "other crs": (from_origin(500000.0, 5300000.0, 10.0, 10.0), "EPSG:32632", None),
    }
    for name, (transform, crs, expected) in cases.items():
        path = make_raster(f"{name}.tif", np.zeros((1, 8, 8), "uint8"), crs=crs,
                           transform=transform)
        with open_raster(path) as ds:
            assert grid_offset(ds, grid) == expected, name
    # south-up and rotated grids: pixel (0, 0) of B is pixel (3, 5) of the grid
    for name, g in {"south-up": Affine(10, 0, 500000, 0, 10, 5300000),
                    "rotated": Affine(10, 2, 500000, 2, -10, 5300000)}.items():
        grid = Grid(CRS.from_epsg(32633), g, 64, 64)
        x, y = g * (5, 3)
        b = Affine(g.a, g.b, x, g.d, g.e, y)
        path = make_raster(f"{name}.tif", np.zeros((1, 8, 8), "uint8"), transform=b)
        with open_raster(path) as ds:
            assert grid_offset(ds, grid) == (3, 5), name


# ---- statistics and normalization ------------------------------------------------------------


def test_stats_accumulator_exact_matches_numpy_in_any_chunking():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 30.0, (3, 60, 70))
    valid = rng.random((60, 70)) > 0.2
    acc = StatsAccumulator(3, max_samples=10_000)
    for r in range(0, 60, 17):  # uneven strips
        acc.add(data[:, r : r + 17], valid[r : r + 17])
    acc.add(data[:, :0], valid[:0])  # empty windows are harmless
    assert acc.exact and acc.count == valid.sum()
    d = acc.to_dict()
    assert d["method"] == "exact" and d["valid_pixels"] == valid.sum()
    for band, s in enumerate(stats_from_dict(d)):
        values = data[band][valid]
        assert s.min == values.min() and s.max == values.max()
        assert s.mean == pytest.approx(values.mean(), rel=1e-12)
        assert s.std == pytest.approx(values.std(), rel=1e-10)
        assert s.p2 == pytest.approx(np.percentile(values, 2))
        assert s.p98 == pytest.approx(np.percentile(values, 98))


def test_stats_accumulator_sample_bounds_memory_and_stays_close():
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, (1, 400, 400))
    valid = np.ones((400, 400), dtype=bool)
    acc = StatsAccumulator(1, max_samples=5_000, seed=2)
    for r in range(0, 400, 50):
        acc.add(data[:, r : r + 50], valid[r : r + 50])
    d = acc.to_dict()
    assert d["method"] == "sample" and d["sample_size"] == 5_000
    s = stats_from_dict(d)[0]
    values = data[0].ravel()
    assert s.mean == pytest.approx(values.mean(), abs=1e-12)  # moments stay exact
    assert s.min == values.min() and s.max == values.max()
    assert s.p2 == pytest.approx(np.percentile(values, 2), abs=0.1)
    assert s.p98 == pytest.approx(np.percentile(values, 98), abs=0.1)
    with pytest.raises(ValueError):
        StatsAccumulator(2).result()


@pytest.mark.parametrize("method", ["robust", "percentile", "minmax", "meanstd"])
def test_normalizer_round_trip(method):
    rng = np.random.default_rng(4)
    data = rng.uniform(100, 200, (2, 16, 16))
    data[1] *= 10
    acc = StatsAccumulator(2)
    acc.add(data, np.ones((16, 16), dtype=bool))
    norm = Normalizer.from_stats(acc.result(), method)
    x = norm.to_model(data)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    inside = (x > -1) & (x < 1)  # unclipped pixels come back exactly
    np.testing.assert_allclose(norm.from_model(x)[inside], data[inside], rtol=1e-5)
    again = Normalizer.from_dict(norm.to_dict())
    assert again == norm
    valid = np.zeros((16, 16), dtype=bool)
    assert (norm.to_model(data, valid) == 0).all()


def _dem_like(size: int = 200) -> np.ndarray:
    """Rolling terrain around 700 m with one cone rising to 3400 m: a long, genuine tail
    (the cone is ~1.5 % of the pixels)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    terrain = 700 + 150 * np.sin(cols / 13.0) * np.cos(rows / 17.0)
    r = np.hypot(rows - size / 2, cols - size / 2)
    cone = np.clip(1 - r / 15.0, 0, None) * 2700
    return (terrain + cone)[None]


def test_robust_normalization_keeps_a_genuine_tail():
    dem = _dem_like()
    acc = StatsAccumulator(1)
    acc.add(dem, np.ones(dem.shape[1:], dtype=bool))
    stats = acc.result()
    robust = Normalizer.from_stats(stats, "robust")
    assert (robust.low[0], robust.high[0]) == (dem.min(), dem.max())  # nothing clipped
    x = robust.to_model(dem)
    np.testing.assert_allclose(robust.from_model(x), dem, rtol=1e-5)  # summit comes back
    # the old default flattens the summit into a plateau
    percentile = Normalizer.from_stats(stats, "percentile")
    summit = dem[0] > percentile.high[0]
    assert summit.mean() > 0.01
    assert np.ptp(percentile.from_model(percentile.to_model(dem))[0][summit]) == 0


def test_robust_normalization_clips_only_far_outliers():
    rng = np.random.default_rng(5)
    data = rng.normal(1000, 100, (1, 100, 100))
    data[0, 0, :3] = 1e6  # undeclared fill values / spikes: 0.03 % of the pixels
    acc = StatsAccumulator(1)
    acc.add(data, np.ones((100, 100), dtype=bool))
    (s,) = acc.result()
    norm = Normalizer.from_stats([s], "robust")
    assert norm.low[0] == s.min  # the genuine low tail is kept
    assert norm.high[0] == pytest.approx(np.percentile(data, 99.9))
    assert norm.high[0] < 2000  # the spikes are cut, not the data
    x = norm.to_model(data)
    assert (x[0, 0, :3] == 1).all()
    rest = data < 1e6
    inside = rest & (x < 1)
    assert inside.sum() >= rest.sum() - 10  # only the top 0.1 % of real values clip
    np.testing.assert_allclose(norm.to_data(x, "float64")[inside], data[inside], rtol=1e-6)


def test_band_stats_of_old_meta_json_still_load():
    old = {"min": 0.0, "max": 1000.0, "mean": 300.0, "std": 90.0, "p2": 100.0, "p98": 600.0,
           "count": 50}
    s = stats_from_dict({"bands": [old]})[0]
    assert s.p0_1 is None and s.p99_9 is None
    # without the 0.1/99.9 percentiles robust judges the tails against the 2/98 range:
    # the tail 600..1000 (0.8 of 100..600) is genuine, so min/max are kept
    norm = Normalizer.from_stats([s], "robust")
    assert (norm.low, norm.high) == ((0.0,), (1000.0,))
    far = stats_from_dict({"bands": [{**old, "max": 1e5}]})[0]
    assert Normalizer.from_stats([far], "robust").high == (600.0,)
    assert Normalizer.from_stats([s], "percentile").high == (600.0,)


def test_normalizer_constant_band_and_cast_to_dtype():
    acc = StatsAccumulator(1)
    acc.add(np.full((1, 4, 4), 7.0), np.ones((4, 4), dtype=bool))
    norm = Normalizer.from_stats(acc.result(), "minmax")
    assert norm.high[0] > norm.low[0]
    np.testing.assert_array_equal(
        cast_to_dtype(np.array([-3.6, 2.5, 300.2]), "uint8"), np.array([0, 2, 255], dtype=np.uint8)
    )
    assert cast_to_dtype(np.array([1.25]), "float32").dtype == np.float32


@pytest.mark.parametrize(("dtype", "low", "high"), [("uint16", 0.0, 65535.0),
                                                     ("int16", -3000.0, 12000.0),
                                                     ("float32", -25.0, 5.0),
                                                     ("float64", 1e9, 1e9 + 1.0)])
def test_to_data_in_float32_matches_float64_arithmetic(dtype, low, high):
    # to_data works in float32 for 8/16-bit and float32 targets: integers must round to the
    # same value as exact arithmetic (within one unit at .5 ties), floats agree to 1e-6
    x = np.random.default_rng(5).uniform(-1.05, 1.05, (2, 64, 64)).astype(np.float32)
    norm = Normalizer("minmax", (low, low), (high, high))
    exact = (x.astype(np.float64) + 1.0) / 2.0 * (high - low) + low
    got = norm.to_data(x, dtype)
    assert got.dtype == np.dtype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        expected = np.clip(np.rint(exact), info.min, info.max)
        assert np.abs(got.astype(np.float64) - expected).max() <= 1
        assert (got == expected).mean() > 0.99  # float32 has 1/256 resolution near 65535
    else:
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6 * (high - low))


# ---- atomic writes ---------------------------------------------------------------------------


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "fail.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with (
        pytest.raises(GeotranslateError, match="already exists"),
        atomic_path(target, overwrite=False),
    ):
        pass
    with (
        pytest.raises(GeotranslateError, match="does not exist"),
        atomic_path(tmp_path / "nowhere" / "x.txt"),
    ):
        pass
