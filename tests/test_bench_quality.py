"""tools/bench_quality.py: its hillshade target and its table (the benchmark itself is not run
here: it trains for minutes)."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
from builders import load_tool


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_tool("bench_quality")


def _plane(dz_east: float, dz_north: float, size: int = 9, res: float = 30.0) -> np.ndarray:
    """A north-up DEM plane: height rises by dz_east per metre east, dz_north per metre north
    (row 0 is the north edge)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    return 1000.0 + dz_east * cols * res - dz_north * rows * res


def _expected(dz_east: float, dz_north: float, azimuth: float, altitude: float) -> float:
    """1 + 254 * cos(angle between the surface normal and the sun), from slope and aspect
    (the textbook formula, independent of the implementation's vector form)."""
    slope = math.atan(math.hypot(dz_east, dz_north))
    zenith = math.radians(90 - altitude)
    # aspect: compass direction the slope faces (downhill), clockwise from north
    aspect = math.atan2(-dz_east, -dz_north)
    cos_i = (math.cos(zenith) * math.cos(slope) +
             math.sin(zenith) * math.sin(slope) * math.cos(math.radians(azimuth) - aspect))
    return 1 + 254 * max(cos_i, 0.0)


def test_hillshade_of_planes_matches_the_analytic_values(bench):
    flat = bench.hillshade(_plane(0, 0), 30.0, 30.0)
    assert flat.dtype == np.uint8
    assert (flat == round(1 + 254 * math.sin(math.radians(45)))).all()  # 181
    # a 45° plane facing the sun (NW, down towards 315°) is lit head-on
    g = math.sqrt(0.5)
    facing = bench.hillshade(_plane(g, -g), 30.0, 30.0)
    assert (facing == 255).all()
    # facing away (SE) at 45°: the sun grazes it, no direct light
    assert (bench.hillshade(_plane(-g, g), 30.0, 30.0) == 1).all()
    # a north-facing slope of 20° against other sun positions
    dz = -math.tan(math.radians(20))
    for azimuth, altitude in [(315, 45), (0, 30), (90, 60), (200, 10)]:
        got = bench.hillshade(_plane(0.0, dz), 30.0, 30.0, azimuth=azimuth, altitude=altitude)
        assert np.abs(got.astype(int) - _expected(0.0, dz, azimuth, altitude)).max() <= 0.5 + 1e-9


def test_hillshade_uses_the_pixel_size_and_marks_invalid_neighbourhoods(bench):
    g = math.sqrt(0.5)
    dem = _plane(g, -g, size=12, res=10.0)  # 45° at 10 m pixels
    assert (bench.hillshade(dem, 10.0, 10.0) == 255).all()
    # the same heights read as 30 m pixels are a gentler slope: less light
    assert (bench.hillshade(dem, 30.0, 30.0) < 255).all()
    valid = np.ones(dem.shape, dtype=bool)
    valid[5, 5] = False
    shade = bench.hillshade(dem, 10.0, 10.0, valid)
    assert (shade[4:7, 4:7] == bench.NODATA_SHADE).all()
    assert (shade[valid] > 0).sum() == valid.sum() - 8


def test_table_reports_skipped_tasks_and_the_gain_over_flat(bench):
    figures = {"psnr": 20.0, "ssim": 0.5, "sam_deg": None}
    result = {"task": "hillshade", "what": "DEM -> hillshade", "chips": 10, "tile_size": 128,
              "iterations": 5, "train_seconds": 3.0, "tile_dependence_8bit": 0.25,
              "model": figures, "flat": {**figures, "psnr": 14.5}, "untrained": figures}
    table = bench.format_table([result, {"task": "naip_nir", "skipped": "data absent"}])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 17 for line in lines)
    assert "| +5.50 | 0.25 | – | – |" in lines[2]
    assert "naip_nir | – | skipped: data absent" in lines[3]


def test_table_names_the_method_and_the_winner_per_task(bench):
    def row(task, method, psnr, flat=15.0):
        figures = {"psnr": psnr, "ssim": 0.5, "sam_deg": None}
        return {"task": task, "what": task, "method": method, "chips": 4, "tile_size": 64,
                "iterations": 5, "train_seconds": 1.0, "tile_dependence_8bit": 0.1,
                "model": figures, "flat": {**figures, "psnr": flat}, "untrained": figures}

    results = [row("hillshade", "Pix2Pix", 18.0), row("hillshade", "CycleGAN", 19.5),
               row("sar", "Pix2Pix", 12.0, flat=14.0), row("sar", "CUT", 11.0, flat=14.0),
               row("solo", "FastCUT", 30.0)]
    lines = bench.format_table(results).splitlines()
    assert all(line.count("|") == 17 for line in lines)
    assert [line.split("|")[2].strip() for line in lines[2:]] == [
        "Pix2Pix", "CycleGAN", "Pix2Pix", "CUT", "FastCUT"]
    # a task with one method has no winner to name
    assert bench.winners(results) == ("Winner per task (highest PSNR): hillshade: CycleGAN "
                                      "(19.50 dB, +4.50 dB over flat); sar: Pix2Pix "
                                      "(12.00 dB, -2.00 dB over flat).")
    assert bench.winners(results[-1:]) == ""


def test_linear_fit_recovers_a_linear_mapping_from_valid_pixels_only(bench):
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 100, (2, 40, 50))
    b = np.stack([2 * a[0] - a[1] + 5, 0.5 * a[1] - 3])
    valid = rng.random((40, 50)) > 0.3
    b_corrupt = b.copy()
    b_corrupt[:, ~valid] = 1e6  # nodata pixels must not enter the fit
    test = rng.uniform(0, 100, (2, 7, 9))
    pred = bench.linear_fit([(a, b_corrupt, valid)], test, max_samples=500)
    expected = np.stack([2 * test[0] - test[1] + 5, 0.5 * test[1] - 3])
    assert pred.shape == (2, 7, 9)
    np.testing.assert_allclose(pred, expected, atol=1e-6)


def test_unpaired_crops_share_no_pixel(bench, tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": 40, "height": 24, "count": 1, "dtype": "float32",
               "crs": "EPSG:32610", "transform": from_origin(500000, 4000000, 10, 10)}
    paths = []
    for name, scale in (("a", 1.0), ("b", -1.0)):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(scale * np.arange(40 * 24, dtype=np.float32).reshape(1, 24, 40))
        paths.append(path)
    (a_crop,), (b_crop,) = bench.unpaired_crops([tuple(paths)], tmp_path / "out")
    with rasterio.open(a_crop) as a, rasterio.open(b_crop) as b:
        assert (a.width, a.height, b.width, b.height) == (20, 24, 20, 24)  # split the long side
        a_left, b_left = a.bounds.left, b.bounds.left
        assert a.bounds.right == b_left == 500000 + 200  # A west half, B east half
        assert a_left == 500000
        assert (-b.read(1) == np.arange(40 * 24).reshape(24, 40)[:, 20:]).all()
        assert (a.read(1) == np.arange(40 * 24).reshape(24, 40)[:, :20]).all()


def test_summary_gives_the_mean_and_half_range_over_seeds(bench):
    def row(seed, psnr, ssim):
        return {"task": "hillshade", "what": "DEM -> hillshade", "method": "Pix2Pix",
                "seed": seed, "settings": {"net_norm": "layer"}, "tile_dependence_8bit": 0.1,
                "checker_8bit": 0.2, "constant_input_std_8bit": 0.0,
                "model": {"psnr": psnr, "ssim": ssim}, "flat": {"psnr": 15.0, "ssim": 0.25}}

    lines = bench.summary_table([row(0, 24.0, 0.80), row(1, 25.0, 0.84),
                                 {"task": "naip_nir", "skipped": "data absent"}]).splitlines()
    assert len(lines) == 3 and all(line.count("|") == 14 for line in lines)
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:4] == ["DEM -> hillshade", "Pix2Pix", "net_norm=layer", "2"]
    assert cells[4:10] == ["24.50 ± 0.50", "15.00 ± 0.00", "9.50 ± 0.50", "0.820 ± 0.020",
                           "0.250 ± 0.000", "0.570 ± 0.020"]


def test_phase_pattern_sees_a_decoder_grid_pattern_not_content(bench):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:128, 0:128]
    content = 100 + 40 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 5, (128, 128))
    checker = 2.0 * ((yy % 2) ^ (xx % 2)) - 1.0  # +-1 at the stride of a decoder
    valid = np.ones((128, 128), dtype=bool)
    data_range = np.array([255.0])
    clean = bench.phase_pattern(content[None], valid, data_range, 8)
    painted = bench.phase_pattern((content + 3 * checker)[None], valid, data_range, 8)
    assert clean < 0.5 < 2.0 < painted
    # invalid pixels stay out: a pattern painted only where pixels are invalid is not seen
    valid[:, 64:] = False
    half = content.copy()
    half[:, 64:] += 30 * checker[:, 64:]
    assert bench.phase_pattern(half[None], valid, data_range, 8) < 0.5


def test_set_takes_json_and_python_spellings_and_refuses_a_wrong_type(bench):
    assert bench._parse_set(["pretrained=False", "ngf=32", "net_norm=none", "lr=5e-4"]) == {
        "pretrained": False, "ngf": 32, "net_norm": "none", "lr": 5e-4}
    assert bench._parse_set(["pretrained=false", "unet_depth=None", "dropout=0"]) == {
        "pretrained": False, "unet_depth": None, "dropout": 0}
    with pytest.raises(SystemExit, match="--ngf 8.5: expected a whole number"):
        bench._parse_set(["ngf=8.5"])
    with pytest.raises(SystemExit, match="expected FIELD=VALUE"):
        bench._parse_set(["no_such_field=1"])


def test_tasks_default_to_the_five_targets_and_all_means_every_task(bench, capsys):
    assert bench.task_names("hillshade, dsm_ortho") == ["hillshade", "dsm_ortho"]
    assert bench.task_names("all") == list(bench.TASKS)
    assert set(bench.TARGET_TASKS) < set(bench.TASKS)
    with pytest.raises(ValueError, match="unknown task.*hilshade"):
        bench.task_names("hillshade,hilshade")
    with pytest.raises(ValueError, match="no task given"):
        bench.task_names(" , ")
    with pytest.raises(SystemExit) as stop:  # refused before any work, in one line
        bench.main(["--tasks", "nope"])
    assert stop.value.code == 2
    assert "unknown task(s) nope" in capsys.readouterr().err
