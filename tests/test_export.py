"""export-tiles: chips match their source windows, pairs share the ground, filters and splits."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from shapely.geometry import box

from geotranslate.chips.export import export_tiles
from geotranslate.cli import main
from geotranslate.errors import GeotranslateError
from geotranslate.raster.io import read_window

ORIGIN = (500000.0, 5300000.0)


def ramp(bands: int, height: int, width: int, dtype="uint16") -> np.ndarray:
    """Every pixel different, so a chip from the wrong offset cannot match."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([(rows * width + cols + 1000 * b) % 60000 for b in range(bands)]).astype(dtype)


def chips_in(out: Path, split: str, domain: str) -> dict[str, Path]:
    return {p.name: p for p in sorted((out / f"{split}_{domain}").glob("*.tif"))}


def offsets_of(name: str) -> tuple[int, int]:
    row, col = name[:-4].split("_")[-2:]
    return int(row), int(col)


def export(*args, **kwargs):
    kwargs.setdefault("progress", False)
    return export_tiles(*args, **kwargs)


def test_chip_pixels_and_georeference_match_source_windows(make_raster, tmp_path):
    data = ramp(2, 150, 200)
    src = make_raster("scene.tif", data, descriptions=["VV", "VH"])
    out = tmp_path / "chips"
    summary = export([src], out_dir=out, tile_size=64)
    chips = chips_in(out, "train", "a")
    # rows 0, 64, 86 x cols 0, 64, 128, 136: the last tile of each axis is flush with the end
    assert sorted(offsets_of(n) for n in chips) == [
        (r, c) for r in (0, 64, 86) for c in (0, 64, 128, 136)
    ]
    assert summary.written["train"]["a"] == 12
    src_transform = from_origin(*ORIGIN, 10.0, 10.0)
    for name, path in chips.items():
        row, col = offsets_of(name)
        with rasterio.open(path) as chip:
            assert chip.dtypes[0] == "uint16" and chip.count == 2 and chip.shape == (64, 64)
            assert chip.descriptions == ("VV", "VH")
            assert chip.crs == CRS.from_epsg(32633)
            np.testing.assert_array_equal(chip.read(), data[:, row : row + 64, col : col + 64])
            # corners of the chip land on the ground coordinates of the source pixels
            for dc, dr in ((0, 0), (64, 0), (0, 64), (64, 64)):
                assert chip.transform @ (dc, dr) == pytest.approx(
                    src_transform @ (col + dc, row + dr)
                )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pairing"] == "unpaired" and meta["tile_size"] == 64
    assert meta["domains"]["a"]["band_descriptions"] == ["VV", "VH"]
    assert meta["chips"]["train"]["a"] == 12
    assert "12" in str(summary) and "train" in str(summary)


def test_index_has_one_row_per_chip_with_its_footprint(make_raster, tmp_path):
    src = make_raster("scene.tif", ramp(1, 128, 128))
    out = tmp_path / "chips"
    export([src], out_dir=out, tile_size=64)
    layers = [name for name, _ in pyogrio.list_layers(out / "index.gpkg")]
    assert layers == ["chips_EPSG_32633"]
    index = gpd.read_file(out / "index.gpkg", layer=layers[0])
    assert index.crs.to_epsg() == 32633
    assert sorted(index["name"]) == sorted(chips_in(out, "train", "a"))
    for _, row in index.iterrows():
        with rasterio.open(out / "train_a" / row["name"]) as chip:
            assert row["geometry"].symmetric_difference(box(*chip.bounds)).area < 1e-6
        assert row["domain"] == "a" and row["split"] == "train"
        assert row["invalid_fraction"] == 0.0
        assert Path(row["source"]).name == "scene.tif"


def smooth_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A value that is linear in EPSG:32633 ground coordinates (so bilinear warping keeps it)."""
    return ((x - ORIGIN[0]) / 10.0 + 2.0 * (ORIGIN[1] - y) / 10.0).astype(np.float32)


def test_paired_across_two_crs_gives_coinciding_chips_with_warped_values(make_raster, tmp_path):
    a_data = ramp(1, 128, 160, dtype="float32")
    a = make_raster("a.tif", a_data)
    # B in UTM 32N at 15 m covering A's area with a margin; its pixels carry the A-CRS field
    left, bottom, right, top = rasterio.warp.transform_bounds(
        "EPSG:32633", "EPSG:32632", ORIGIN[0], ORIGIN[1] - 1280, ORIGIN[0] + 1600, ORIGIN[1]
    )
    b_transform = from_origin(left - 300, top + 300, 15.0, 15.0)
    b_w, b_h = int((right - left + 600) / 15), int((top - bottom + 600) / 15)
    rows, cols = np.mgrid[0:b_h, 0:b_w]
    xs, ys = b_transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    x33, y33 = warp_transform("EPSG:32632", "EPSG:32633", xs, ys)
    b_data = smooth_field(np.array(x33), np.array(y33)).reshape(b_h, b_w)
    b = make_raster("b.tif", b_data, crs="EPSG:32632", transform=b_transform, nodata=-9999.0)
    out = tmp_path / "chips"
    export([a], [b], out, tile_size=64)
    a_chips, b_chips = chips_in(out, "train", "a"), chips_in(out, "train", "b")
    assert set(a_chips) == set(b_chips) and len(a_chips) == 6
    for name in a_chips:
        with rasterio.open(a_chips[name]) as ca, rasterio.open(b_chips[name]) as cb:
            assert (ca.crs, ca.shape) == (cb.crs, cb.shape)
            # footprints coincide within half a pixel
            for corner in ((0, 0), (64, 64)):
                ax, ay = ca.transform @ corner
                bx, by = cb.transform @ corner
                assert abs(ax - bx) < 5.0 and abs(ay - by) < 5.0
            rows, cols = np.mgrid[0:64, 0:64]
            xs, ys = ca.transform @ (cols + 0.5, rows + 0.5)
            expected = smooth_field(np.asarray(xs), np.asarray(ys))
            np.testing.assert_allclose(cb.read(1), expected, atol=0.5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pairing"] == "paired"
    assert meta["domains"]["b"]["crs"] == "EPSG:32632"


def test_paired_skips_chips_where_b_does_not_cover(make_raster, tmp_path):
    a = make_raster("a.tif", ramp(1, 128, 128))
    # B covers only the left half of A, and declares no nodata: validity comes from the warp
    b = make_raster("b.tif", ramp(3, 128, 64, dtype="uint8"))
    out = tmp_path / "chips"
    summary = export([a], [b], out, tile_size=64)
    assert sorted(chips_in(out, "train", "b")) == ["a_0_0.tif", "a_64_0.tif"]
    assert summary.skipped_nodata == 2


def test_paired_on_the_same_pixel_grid_reads_b_exactly(make_raster, tmp_path):
    # B on A's pixel grid, 32 px right and 16 px down, not covering A's top-left corner:
    # its pixels are read as they are (no resampling), and its edges are exact
    a = make_raster("a.tif", ramp(1, 128, 128))
    b_data = ramp(2, 128, 128, dtype="uint16") + 7
    b = make_raster("b.tif", b_data, transform=from_origin(ORIGIN[0] + 320, ORIGIN[1] - 160,
                                                           10.0, 10.0))
    out = tmp_path / "chips"
    export([a], [b], out, tile_size=32, max_nodata=0.6)
    chips = chips_in(out, "train", "b")
    assert "a_0_0.tif" not in chips and "a_16_32.tif" not in chips  # tiles are 32 px apart
    assert {"a_32_32.tif", "a_0_32.tif", "a_96_96.tif"} <= set(chips)
    for name, path in chips.items():
        row, col = offsets_of(name)
        with rasterio.open(path) as chip:
            got, valid = read_window(chip, rasterio.windows.Window(0, 0, 32, 32), [1, 2])
        rows = np.arange(row, row + 32)[:, None] - 16
        cols = np.arange(col, col + 32)[None, :] - 32
        inside = (rows >= 0) & (cols >= 0)
        np.testing.assert_array_equal(valid, inside)
        r, c = rows[inside[:, -1], 0], cols[0, inside[-1]]
        np.testing.assert_array_equal(got[:, valid].reshape(2, len(r), len(c)),
                                      b_data[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1])


def test_chips_of_a_single_value_are_counted_and_reported(make_raster, tmp_path):
    # a black collar without declared nodata: those chips are valid but hold one value
    data = ramp(2, 128, 128)
    data[:, :, :64] = 0
    data[1, :64, 64:] = 9  # band 2 constant there, band 1 not: not a constant chip
    summary = export([make_raster("collar.tif", data)], out_dir=tmp_path / "c", tile_size=64)
    assert summary.constant == {"a": 2}
    assert "2 a chips hold a single value in every band" in str(summary)
    assert "collar_0_0.tif in a, value 0" in str(summary)
    clean = export([make_raster("ramp.tif", ramp(2, 128, 128))], out_dir=tmp_path / "r",
                   tile_size=64)
    assert clean.constant == {} and "Warning" not in str(clean)


def test_unpaired_tiles_domains_independently(make_raster, tmp_path):
    a = make_raster("a.tif", ramp(1, 128, 128))
    b = make_raster(
        "b.tif",
        ramp(3, 192, 192, dtype="uint8"),
        crs="EPSG:4326",
        transform=from_origin(10.0, 50.0, 0.001, 0.001),
    )
    out = tmp_path / "chips"
    summary = export([a], [b], out, tile_size=64, mode="unpaired")
    assert len(chips_in(out, "train", "a")) == 4 and len(chips_in(out, "train", "b")) == 9
    assert summary.pairing == "unpaired"
    assert sorted(n for n, _ in pyogrio.list_layers(out / "index.gpkg")) == [
        "chips_EPSG_32633",
        "chips_EPSG_4326",
    ]


def test_invalid_pixels_nodata_nan_alpha_and_padding(make_raster, tmp_path):
    data = np.full((1, 128, 128), 5.0, dtype="float32")
    data[0, :20, :64] = -9999.0  # 20 / 64 rows of chip (0, 0) are nodata: skipped
    data[0, 64:70, :64] = np.nan  # 6 rows of chip (64, 0): under 10 %, kept, NaN (invalid)
    src = make_raster("f.tif", data, nodata=-9999.0)
    out = tmp_path / "f"
    summary = export([src], out_dir=out, tile_size=64)
    assert sorted(chips_in(out, "train", "a")) == ["f_0_64.tif", "f_64_0.tif", "f_64_64.tif"]
    assert summary.skipped_nodata == 1
    with rasterio.open(out / "train_a" / "f_64_0.tif") as chip:
        assert chip.nodata == -9999.0
        _, valid = read_window(chip, rasterio.windows.Window(0, 0, 64, 64), [1])
        assert (~valid).sum() == 6 * 64 and not valid[:6].any()

    # alpha: not written as a band, it becomes the chip's mask
    rgb = ramp(3, 64, 64, dtype="uint8")
    alpha = np.full((64, 64), 255, dtype="uint8")
    alpha[:4, :] = 0
    src = make_raster("rgba.tif", rgb, alpha=alpha)
    export([src], out_dir=tmp_path / "rgba", tile_size=64)
    with rasterio.open(tmp_path / "rgba" / "train_a" / "rgba_0_0.tif") as chip:
        assert chip.count == 3
        data_back, valid = read_window(chip, rasterio.windows.Window(0, 0, 64, 64), [1, 2, 3])
        np.testing.assert_array_equal(valid, alpha > 0)
        np.testing.assert_array_equal(data_back[:, 4:], rgb[:, 4:])

    # smaller than the tile: one padded chip whose padding is masked
    small = ramp(1, 40, 50)
    src = make_raster("small.tif", small)
    summary = export([src], out_dir=tmp_path / "small", tile_size=64, max_nodata=1.0)
    assert "Padded" in str(summary) and summary.padded_sources == ["small"]
    with rasterio.open(tmp_path / "small" / "train_a" / "small_0_0.tif") as chip:
        assert chip.shape == (64, 64)
        data_back, valid = read_window(chip, rasterio.windows.Window(0, 0, 64, 64), [1])
        np.testing.assert_array_equal(data_back[0, :40, :50], small[0])
        assert valid[:40, :50].all() and valid.sum() == 40 * 50


def test_meta_statistics_match_numpy_over_valid_pixels_and_reruns(make_raster, tmp_path):
    rng = np.random.default_rng(3)
    first = rng.normal(100, 20, (2, 96, 96)).astype("float32")
    first[:, 10:30, 10:30] = -9999.0
    first[1, 50, 50] = np.nan
    second = rng.normal(50, 5, (2, 64, 64)).astype("float32")
    a1 = make_raster("one.tif", first, nodata=-9999.0)
    a2 = make_raster("two.tif", second, nodata=-9999.0)
    out = tmp_path / "chips"
    export([a1], out_dir=out, tile_size=32, stride=16)  # overlapping windows: counted once

    def check(arrays):
        meta = json.loads((out / "meta.json").read_text())
        stats = meta["domains"]["a"]["stats"]
        assert stats["method"] == "exact"
        valid = [((x != -9999.0) & np.isfinite(x)).all(axis=0) for x in arrays]
        for band, got in enumerate(stats["bands"]):
            parts = [x[band][v] for x, v in zip(arrays, valid, strict=True)]
            values = np.concatenate(parts).astype(float)
            assert got["count"] == values.size
            assert got["min"] == pytest.approx(values.min())
            assert got["max"] == pytest.approx(values.max())
            assert got["mean"] == pytest.approx(values.mean(), rel=1e-9)
            assert got["std"] == pytest.approx(values.std(), rel=1e-9)
            assert got["p2"] == pytest.approx(np.percentile(values, 2))
            assert got["p98"] == pytest.approx(np.percentile(values, 98))
        return meta

    check([first])
    export([a2], out_dir=out, tile_size=32, stride=16)  # adds to the directory
    meta = check([first, second])
    assert [Path(p).name for p in meta["domains"]["a"]["sources"]] == ["one.tif", "two.tif"]
    index = gpd.read_file(out / "index.gpkg")
    assert {Path(s).name for s in index["source"]} == {"one.tif", "two.tif"}
    assert len(index) == sum(meta["chips"]["train"].values())
    # a re-run of the same source adds nothing and keeps the counts
    summary = export([a2], out_dir=out, tile_size=32, stride=16)
    assert summary.chips_written == 0 and summary.already_present > 0
    assert json.loads((out / "meta.json").read_text())["chips"] == meta["chips"]


def test_two_single_domain_runs_build_a_dataset_and_refuse_changes(make_raster, tmp_path):
    a = make_raster("sar.tif", ramp(2, 64, 64, dtype="float32"))
    b = make_raster("opt.tif", ramp(4, 64, 64))
    out = tmp_path / "chips"
    export([a], out_dir=out, tile_size=32, domain="a")
    export([b], out_dir=out, tile_size=32, domain="b")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["domains"]["a"]["band_count"] == 2 and meta["domains"]["b"]["band_count"] == 4
    assert meta["chips"]["train"] == {"a": 4, "b": 4}
    other = make_raster("opt3.tif", ramp(3, 64, 64))
    with pytest.raises(GeotranslateError, match="band_count 4"):
        export([other], out_dir=out, tile_size=32, domain="b")
    other_dtype = make_raster("optf.tif", ramp(4, 64, 64, dtype="float32"))
    with pytest.raises(GeotranslateError, match="dtype uint16"):
        export([other_dtype], out_dir=out, tile_size=32, domain="b")
    with pytest.raises(GeotranslateError, match="32 px chips"):
        export([b], out_dir=out, tile_size=16, domain="b")
    assert len(chips_in(out, "train", "b")) == 4  # nothing added by the refused runs


def write_polygons(path: Path, polygons, crs: str) -> Path:
    gpd.GeoDataFrame({"id": range(len(polygons))}, geometry=polygons, crs=crs).to_file(path)
    return path


def test_aoi_and_exclude_in_another_crs(make_raster, tmp_path):
    src = make_raster("s.tif", ramp(1, 256, 256))
    # a polygon over ground pixels rows 10..40, cols 70..100 (chips (0, 64)), given in lon/lat
    x0, y0 = ORIGIN[0] + 700, ORIGIN[1] - 100
    ring_x = [x0, x0 + 300, x0 + 300, x0]
    ring_y = [y0, y0, y0 - 300, y0 - 300]
    lon, lat = warp_transform("EPSG:32633", "EPSG:4326", ring_x, ring_y)
    aoi = write_polygons(
        tmp_path / "aoi.geojson", [box(min(lon), min(lat), max(lon), max(lat))], "EPSG:4326"
    )
    out = tmp_path / "aoi_out"
    summary = export([src], out_dir=out, tile_size=64, aoi=aoi)
    assert sorted(chips_in(out, "train", "a")) == ["s_0_64.tif"]
    assert summary.skipped_aoi == 15
    out = tmp_path / "excl_out"
    summary = export([src], out_dir=out, tile_size=64, exclude=aoi)
    assert len(chips_in(out, "train", "a")) == 15 and "s_0_64.tif" not in chips_in(
        out, "train", "a"
    )
    assert summary.skipped_exclude == 1


def window_of(name: str, tile: int) -> tuple[int, int, int, int]:
    row, col = offsets_of(name)
    return row, row + tile, col, col + tile


def test_validation_split_shares_no_pixel_with_training(make_raster, tmp_path):
    src = make_raster("s.tif", ramp(1, 320, 320))
    out = tmp_path / "chips"
    summary = export([src], out_dir=out, tile_size=32, stride=16, val_fraction=0.2, seed=1)
    train, val = chips_in(out, "train", "a"), chips_in(out, "val", "a")
    total = 19 * 19
    assert 0.1 * total < len(val) < 0.35 * total
    assert summary.dropped_buffer > 0
    assert len(train) + len(val) + summary.dropped_buffer == total
    for v in val:
        r0, r1, c0, c1 = window_of(v, 32)
        for t in train:
            s0, s1, d0, d1 = window_of(t, 32)
            assert not (r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1), (v, t)
    index = gpd.read_file(out / "index.gpkg")
    assert set(index.loc[index["split"] == "val", "name"]) == set(val)


def test_bad_inputs_give_one_line_errors_and_write_nothing(make_raster, tmp_path, capsys):
    out = tmp_path / "out"
    good = make_raster("good.tif", ramp(1, 64, 64))

    def fails(args: list[str], needle: str) -> None:
        assert main(["export-tiles", *args, "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("geotranslate: error:") and len(err.splitlines()) == 1, err
        assert needle in err
        assert not out.exists()

    fails([str(tmp_path / "missing.tif")], "no such file")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    fails([str(tmp_path / "junk.tif")], "cannot open as a raster")
    fails([str(make_raster("nocrs.tif", ramp(1, 64, 64), crs=None))], "no CRS")
    fails([str(make_raster("c.tif", np.ones((1, 64, 64), dtype="complex64")))], "complex")
    fails([str(good), "--bands", "3"], "band 3 out of range")
    far = make_raster("far.tif", ramp(1, 64, 64), transform=from_origin(900000, 5300000, 10, 10))
    fails([str(good), "--b", str(far)], "does not overlap")
    empty = make_raster("empty.tif", np.zeros((1, 64, 64), dtype="uint16"), nodata=0)
    fails([str(empty), "--tile-size", "32"], "zero chips")
    # pixel space on request
    nocrs = tmp_path / "nocrs.tif"
    assert (
        main(
            [
                "export-tiles",
                str(nocrs),
                "--allow-no-crs",
                "--out",
                str(out),
                "--tile-size",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    with rasterio.open(out / "train_a" / "nocrs_0_0.tif") as chip:
        assert chip.crs is None


def test_read_failure_midway_removes_the_chips_of_the_run(make_raster, tmp_path):
    path = make_raster("broken.tif", ramp(1, 256, 256), tiled=False)
    # cut off the last quarter of the (uncompressed, row-ordered) pixel data: it opens, the
    # first chips read fine, then a read fails
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 3 // 4])
    with rasterio.open(path) as ds:
        ds.read(1, window=rasterio.windows.Window(0, 0, 64, 64))
    out = tmp_path / "out"
    with pytest.raises(GeotranslateError, match="read failed"):
        export([path], out_dir=out, tile_size=64)
    assert not out.exists()


@pytest.mark.parametrize("workers", ["1", "3"])
@pytest.mark.parametrize("failing", ["chips", "index"])
def test_full_disk_fails_in_one_line_and_rolls_back(make_raster, small_disk, tmp_path, capsys,
                                                    failing, workers):
    # a real ENOSPC on a tiny tmpfs, with room for about half the chips, then for all of them
    # but not the index: the run stops with one line naming the file, and what it wrote is
    # removed (GDAL alone would print a failed chip write to stderr and leave the chip
    # truncated; SQLite words a full disk in several ways)
    noise = np.random.default_rng(0).integers(0, 60000, (4, 256, 256)).astype("uint16")
    src = make_raster("noise.tif", noise)
    args = [str(src), "--tile-size", "64", "--no-progress"]
    assert main(["export-tiles", *args, "--out", str(tmp_path / "probe")]) == 0
    chips = list((tmp_path / "probe" / "train_a").iterdir())
    room = sum(-(-p.stat().st_size // 4096) * 4096 for p in chips) + 4 * 4096  # pages + dirs
    out = small_disk(room // 2 if failing == "chips" else room + 16 * 4096) / "chips"
    capsys.readouterr()
    status = main(["export-tiles", *args, "--workers", workers, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("geotranslate")]
    assert status == 1 and len(lines) == 1 and len(lines[0]) < 300, err
    where = f"{out}/train_a/noise_" if failing == "chips" else f"{out}/index.gpkg"
    assert lines[0].startswith(f"geotranslate: error: {where}"), err
    assert "write failed" in lines[0] and "the disk is full" in lines[0], err
    assert not out.exists()


# ---- real public rasters (skipped when ../shared/data/real is absent) ------------------------


def test_real_rgba_alpha_becomes_mask(real_data, tmp_path):
    out = tmp_path / "rgba"
    export([real_data / "rasterio" / "RGBA.byte.tif"], out_dir=out, tile_size=128)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["domains"]["a"]["band_count"] == 3 and meta["domains"]["a"]["bands"] == [1, 2, 3]
    chips = chips_in(out, "train", "a")
    assert chips
    with rasterio.open(real_data / "rasterio" / "RGBA.byte.tif") as src:
        for name, path in chips.items():
            row, col = offsets_of(name)
            window = rasterio.windows.Window(col, row, 128, 128)
            alpha = src.read(4, window=window)
            with rasterio.open(path) as chip:
                assert chip.count == 3
                _, valid = read_window(chip, rasterio.windows.Window(0, 0, 128, 128), [1, 2, 3])
                np.testing.assert_array_equal(valid, alpha > 0)


def test_real_bad_files(real_data, tmp_path):
    with pytest.raises(GeotranslateError, match="zero chips"):
        export([real_data / "rasterio" / "all-nodata.tif"], out_dir=tmp_path / "n")
    assert not (tmp_path / "n").exists()
    with pytest.raises(GeotranslateError, match="read failed"):
        export([real_data / "rasterio" / "corrupt.tif"], out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(GeotranslateError, match="GCPs"):
        export([real_data / "georust_gdal" / "gcp.tif"], out_dir=tmp_path / "g")


def test_real_multi_scene_pairs_in_several_utm_zones(real_data, tmp_path):
    stacked = real_data / "bigearthnet" / "pairs_stacked"
    s1 = sorted(stacked.glob("*_S1_VV_VH.tif"))
    s2 = sorted(stacked.glob("*_S2_B02_B03_B04_B08.tif"))
    out = tmp_path / "chips"
    summary = export(s1, s2, out, tile_size=64, val_fraction=0.2)
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["pairs"]) == 6
    assert all(
        Path(p["b"][0]).name.split("_S2")[0] == Path(p["a"]).name.split("_S1")[0]
        for p in meta["pairs"]
    )
    assert set(meta["domains"]["a"]["crs_all"]) == {"EPSG:32633", "EPSG:32629", "EPSG:32635"}
    for split in ("train", "val"):
        a_chips, b_chips = chips_in(out, split, "a"), chips_in(out, split, "b")
        assert set(a_chips) == set(b_chips)
        for name in a_chips:
            with rasterio.open(a_chips[name]) as ca, rasterio.open(b_chips[name]) as cb:
                assert ca.crs == cb.crs and ca.transform == cb.transform
                assert (ca.count, cb.count) == (2, 4)
    assert summary.chips_written == 2 * 24 - 2 * summary.dropped_buffer
    assert len(pyogrio.list_layers(out / "index.gpkg")) == 3


def test_real_storm_lake_offset_grids(real_data, tmp_path):
    dem = real_data / "gdalraster" / "storml_elev.tif"
    red = real_data / "gdalraster" / "sr_b4_20200829.tif"
    out = tmp_path / "chips"
    export([dem], [red], out, tile_size=64, resampling="nearest")
    with rasterio.open(red) as src_b:
        for name, path in chips_in(out, "train", "b").items():
            with rasterio.open(path) as chip, rasterio.open(out / "train_a" / name) as chip_a:
                assert chip.transform == chip_a.transform
                # nearest resampling: each chip pixel is the B pixel under its centre
                rows, cols = np.mgrid[0:64:7, 0:64:7]
                xs, ys = chip.transform @ (cols + 0.5, rows + 0.5)
                b_rows, b_cols = rasterio.transform.rowcol(src_b.transform, xs.ravel(), ys.ravel())
                expected = src_b.read(1)[np.array(b_rows), np.array(b_cols)]
                np.testing.assert_array_equal(chip.read(1)[rows, cols].ravel(), expected)


def _assert_chips_equal_source(src_path: Path, out: Path, tile: int) -> int:
    """Every chip holds the source window's values, and reads back with its validity."""
    chips = chips_in(out, "train", "a")
    with rasterio.open(src_path) as src:
        bands = [b for b in range(1, src.count + 1)
                 if src.colorinterp[b - 1] != rasterio.enums.ColorInterp.alpha]
        for name, path in chips.items():
            row, col = offsets_of(name)
            window = rasterio.windows.Window(col, row, tile, tile)
            with rasterio.open(path) as chip:
                np.testing.assert_array_equal(chip.read(), src.read(bands, window=window),
                                              err_msg=name)
                _, valid = read_window(chip, rasterio.windows.Window(0, 0, tile, tile), bands)
            _, src_valid = read_window(src, window, bands)
            np.testing.assert_array_equal(valid, src_valid, err_msg=name)
    return len(chips)


def test_chips_of_per_band_nodata_hold_the_source_values(make_raster, tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(1, 256, size=(3, 96, 128)).astype("uint8")
    data[:, :10, :] = 0  # a collar: 0 in every band
    one_band = rng.random((96, 128)) < 0.05  # pixels 0 in one band only
    band = rng.integers(0, 3, size=(96, 128))
    for b in range(3):
        data[b][one_band & (band == b)] = 0
    src = make_raster("rgb.tif", data, nodata=0)
    out = tmp_path / "chips"
    export([src], out_dir=out, tile_size=32, max_nodata=1.0)
    assert _assert_chips_equal_source(src, out, 32) == 12
    with rasterio.open(out / "train_a" / "rgb_32_32.tif") as chip:
        _, valid = read_window(chip, rasterio.windows.Window(0, 0, 32, 32), [1, 2, 3])
        # a pixel 0 in any band is invalid, as training has always read it
        np.testing.assert_array_equal(valid, (data[:, 32:64, 32:64] != 0).all(axis=0))
        assert (~valid).any() and chip.nodata == 0
    # with an alpha band too: the values under alpha 0 are kept, the alpha becomes a mask
    alpha = np.full((96, 128), 255, dtype="uint8")
    alpha[40:50, 20:90] = 0
    src = make_raster("rgba.tif", data, nodata=0, alpha=alpha)
    export([src], out_dir=tmp_path / "rgba", tile_size=32, max_nodata=1.0)
    assert _assert_chips_equal_source(src, tmp_path / "rgba", 32) == 12


def test_real_rgb_byte_chips_equal_their_source_windows(real_data, tmp_path):
    src = real_data / "rasterio" / "RGB.byte.tif"  # nodata 0 per band
    out = tmp_path / "rgb"
    export([src], out_dir=out, tile_size=200, max_nodata=1.0)
    assert _assert_chips_equal_source(src, out, 200) == 16


# ---- workers: the same output for any number ---------------------------------------------------


def snapshot(out: Path) -> dict:
    """Everything an export leaves: every file's bytes but the index (SQLite pages differ with
    nothing but timestamps), meta.json parsed, and index.gpkg's rows in file order."""
    files = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("index.gpkg", "meta.json")
    }
    rows = {}
    for layer, _ in pyogrio.list_layers(out / "index.gpkg"):
        frame = gpd.read_file(out / "index.gpkg", layer=layer)
        rows[layer] = [
            (*(r[k] for k in frame.columns if k != "geometry"), r.geometry.wkb)
            for _, r in frame.iterrows()
        ]
    return {"files": files, "meta": json.loads((out / "meta.json").read_text()), "index": rows}


def test_workers_give_byte_identical_chips_meta_and_index(make_raster, tmp_path):
    # paired across grids (B warped) with nodata in both and a validation split; then unpaired
    # with overlapping windows: 2 and 3 workers give what 1 gives, byte for byte
    noise = np.random.default_rng(1).integers(1, 60000, (2, 160, 224)).astype("uint16")
    noise[:, 40:90, 100:170] = 0  # a nodata hole: some windows are skipped, others kept
    a = make_raster("a.tif", noise, nodata=0)
    b_data = np.random.default_rng(2).random((3, 130, 170)).astype("float32")
    b_data[:, :20, :] = np.nan
    b = make_raster("b.tif", b_data,
                    transform=from_origin(ORIGIN[0] - 45, ORIGIN[1] + 37, 13.7, 13.7))
    c = make_raster("c.tif", ramp(3, 150, 120, dtype="uint8"), crs="EPSG:4326",
                    transform=from_origin(10.0, 50.0, 0.001, 0.001))
    runs = {
        "paired": dict(a_paths=[a], b_paths=[b], tile_size=32, stride=24, val_fraction=0.2,
                       max_nodata=0.3),
        "unpaired": dict(a_paths=[a], b_paths=[c], tile_size=32, stride=24, mode="unpaired"),
    }
    for kind, kwargs in runs.items():
        results = {}
        for workers in (1, 2, 3):
            out = tmp_path / f"{kind}{workers}"
            summary = export(out_dir=out, workers=workers, **kwargs)
            results[workers] = snapshot(out)
            counts = (summary.written, summary.skipped_nodata, summary.dropped_buffer)
            if workers == 1:
                first = counts
            assert counts == first, (kind, workers)
        assert len(results[1]["files"]) > 20 and results[1]["index"], kind
        if kind == "paired":
            assert first[1] > 0 and first[0]["val"]["a"] > 0 and first[2] > 0  # all kinds occur
        for workers in (2, 3):
            assert results[workers]["files"] == results[1]["files"], (kind, workers)
            assert results[workers]["meta"] == results[1]["meta"], (kind, workers)
            assert results[workers]["index"] == results[1]["index"], (kind, workers)


def test_workers_zero_or_negative_are_refused(make_raster, tmp_path, capsys):
    src = make_raster("a.tif", ramp(1, 64, 64))
    for workers in ("0", "-2"):
        out = tmp_path / "out"
        assert main(["export-tiles", str(src), "--workers", workers, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"geotranslate: error: --workers {workers}: must be at least 1", err
        assert not out.exists()


def test_interrupt_with_workers_keeps_complete_chips_and_resumes(make_raster, tmp_path,
                                                                 monkeypatch):
    # Ctrl-C in the middle of a 3-worker export: the chips on disk are complete (no temporary
    # file left), the directory is marked unfinished, and a re-run completes it to exactly
    # what one uninterrupted run gives
    import geotranslate.chips.export as chips_export

    noise = np.random.default_rng(3).integers(1, 60000, (2, 192, 192)).astype("uint16")
    a = make_raster("a.tif", noise)
    b = make_raster("b.tif", noise[:1] // 2)
    whole = tmp_path / "whole"
    export([a], [b], whole, tile_size=32, workers=1)
    real, calls = chips_export._handle_window, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chips_export, "_handle_window", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export([a], [b], out, tile_size=32, workers=3)
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tif"))
    assert 0 < len(kept) < 2 * 36 and not list(out.rglob("*.part")), kept
    for name in kept:
        assert (out / name).read_bytes() == (whole / name).read_bytes()
    assert not (out / "meta.json").exists() and (out / "export.lock").exists()
    monkeypatch.setattr(chips_export, "_handle_window", real)
    export([a], [b], out, tile_size=32, workers=3)
    again, fresh = snapshot(out), snapshot(whole)
    assert again["files"] == fresh["files"] and again["index"] == fresh["index"]
    assert again["meta"] == fresh["meta"]


def test_meta_json_of_earlier_versions_names_the_pairing_dataset_type(make_raster, tmp_path):
    """Chip folders written before ``pairing`` was renamed say ``dataset_type``: training and
    export-tiles read them as before, and an export adding to one writes the new name."""
    from geotranslate.data import ChipDataset, read_meta

    a = make_raster("a.tif", ramp(1, 64, 64))
    b = make_raster("b.tif", ramp(2, 64, 64))
    out = tmp_path / "chips"
    export([a], [b], out, tile_size=32)
    written = json.loads((out / "meta.json").read_text())
    assert written["pairing"] == "paired" and "dataset_type" not in written
    old = {("dataset_type" if k == "pairing" else k): v for k, v in written.items()}
    (out / "meta.json").write_text(json.dumps(old))  # as an earlier version wrote it

    meta = read_meta(out)
    assert meta.pairing == "paired" and meta.tile_size == 32
    assert meta.domains["b"].band_count == 2 and meta.chip_count("train", "a") == 4
    assert len(ChipDataset(out, paired=True)) == 4
    (out / "meta.json").write_text(json.dumps({**old, "dataset_type": "unpaired"}))
    with pytest.raises(GeotranslateError, match="the chips are unpaired"):
        ChipDataset(out, paired=True)
    # export-tiles checks a run against the old file, and rewrites the key in its place
    with pytest.raises(GeotranslateError, match="holds a unpaired dataset, this run is paired"):
        export([a], [b], out, tile_size=32)
    (out / "meta.json").write_text(json.dumps(old))
    c = make_raster("c.tif", ramp(1, 64, 64) + 1)
    export([c], [b], out, tile_size=32)
    rewritten = json.loads((out / "meta.json").read_text())
    assert list(rewritten)[:3] == ["format", "format_version", "pairing"]
    assert rewritten["pairing"] == "paired" and "dataset_type" not in rewritten
    assert [p["a"] for p in rewritten["pairs"]] == [str(a), str(c)]
    assert read_meta(out).chip_count("train", "a") == 8
