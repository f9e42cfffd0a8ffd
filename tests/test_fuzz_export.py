"""Hostile inputs to export-tiles, evaluate, preview and predict-raster (issue 12).

Each case is a bad raster or a bad option generated here; each must stop with exit status 1,
one line ``geotranslate: error: ...`` naming the file or option, no traceback, and nothing
written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from builders import make_chips, make_model
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin
from shapely.geometry import Point, box

from geotranslate.cli import main
from geotranslate.evaluate import evaluate_rasters

ORIGIN = (500000.0, 5300000.0)
ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *names: str) -> str:
    """The command's stderr: exactly one ``geotranslate: error:`` line naming ``names``."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("geotranslate: error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def rasters(make_raster, tmp_path):
    """Bad and good rasters: alpha only, all nodata, a 4-band scene, pixel-space ones."""
    rng = np.random.default_rng(0)
    alpha_only = tmp_path / "alpha_only.tif"
    with rasterio.open(alpha_only, "w", driver="GTiff", width=64, height=64, count=1,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(*ORIGIN, 10.0, 10.0)) as dst:
        dst.write(np.full((1, 64, 64), 255, np.uint8))
        dst.colorinterp = [ColorInterp.alpha]
    return {
        "alpha_only": alpha_only,
        "all_nodata": make_raster("all_nodata.tif", np.zeros((1, 64, 64), np.uint16), nodata=0),
        "scene": make_raster("scene.tif", rng.integers(1, 4000, (4, 64, 64)).astype(np.uint16)),
    }


# ---- 1: a raster whose only band is alpha ---------------------------------------------------


@pytest.mark.parametrize("command", ["export-a", "export-b", "preview", "evaluate"])
def test_alpha_only_raster_is_refused_in_one_line(rasters, tmp_path, capsys, command):
    alpha, scene = str(rasters["alpha_only"]), str(rasters["scene"])
    out = tmp_path / "out"
    args = {
        "export-a": ["export-tiles", alpha, "--out", str(out), "--tile-size", "32"],
        "export-b": ["export-tiles", scene, "--b", alpha, "--out", str(out), "--tile-size", "32"],
        "preview": ["preview", alpha, "--out", str(out / "p.png")],
        "evaluate": ["evaluate", alpha, alpha, "--json", str(out / "r.json")],
    }[command]
    assert main([*args, "--no-progress"] if command.startswith("export") else args) == 1
    one_line_error(capsys, "alpha_only.tif", "alpha")
    assert files_under(out) == []


# ---- 3: evaluate --data-range of the wrong length ---------------------------------------------


@pytest.mark.parametrize("spec", ["1,2", "", "1,2,3,4,5", "0", "nan"])
def test_data_range_of_wrong_length_is_refused_in_one_line(rasters, capsys, spec):
    scene = str(rasters["scene"])
    assert main(["evaluate", scene, scene, "--data-range", spec]) == 1
    err = one_line_error(capsys, "data range" if spec else "--data-range")
    if spec == "1,2":
        assert "scene.tif has 4" in err


def test_data_range_of_one_value_or_one_per_band_is_used(rasters):
    scene = rasters["scene"]
    one = evaluate_rasters(scene, scene, data_range=10.0)
    per_band = evaluate_rasters(scene, scene, data_range=[1, 2, 3, 4])
    assert one.settings["data_range"] == [10.0] * 4
    assert per_band.settings["data_range"] == [1.0, 2.0, 3.0, 4.0]


# ---- messages that name the file, values refused instead of reinterpreted ---------------------


def test_all_nodata_source_is_named(rasters, tmp_path, capsys):
    out = tmp_path / "out"
    source = str(rasters["all_nodata"])
    args = ["export-tiles", source, "--out", str(out), "--tile-size", "32", "--max-nodata", "1"]
    assert main([*args, "--no-progress"]) == 1
    one_line_error(capsys, "all_nodata.tif", "no valid pixel")
    assert files_under(out) == []


@pytest.mark.parametrize("option", [["--stride", "0"], ["--tile-size", "0"],
                                    ["--stride", "-3"]])
def test_export_zero_or_negative_sizes_are_refused(rasters, tmp_path, capsys, option):
    out = tmp_path / "out"
    args = ["export-tiles", str(rasters["scene"]), "--out", str(out), *option, "--no-progress"]
    assert main(args) == 1
    one_line_error(capsys, option[0].lstrip("-").replace("-", " "))
    assert files_under(out) == []


@pytest.mark.parametrize("option", [["--columns", "0"], ["--window", "-5,0,10,10"],
                                    ["--window", "0,-1,10,10"]])
def test_preview_bad_values_are_refused(rasters, tmp_path, capsys, option):
    out = tmp_path / "p.png"
    assert main(["preview", str(rasters["scene"]), "--out", str(out), *option]) == 1
    one_line_error(capsys, option[1])
    assert not out.exists()


@pytest.mark.parametrize("command", ["preview", "evaluate"])
def test_output_file_with_trailing_slash_is_refused(rasters, tmp_path, capsys, command):
    scene = str(rasters["scene"])
    target = str(tmp_path / "newdir") + "/"
    args = (["preview", scene, "--out", target] if command == "preview"
            else ["evaluate", scene, scene, "--json", target])
    assert main(args) == 1
    one_line_error(capsys, "newdir/")
    assert files_under(tmp_path / "newdir") == [] and not (tmp_path / "newdir").is_file()


@pytest.mark.parametrize("option", ["--aoi", "--exclude"])
def test_point_aoi_is_refused(rasters, tmp_path, capsys, option):
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(geometry=[Point(ORIGIN[0] + 100, ORIGIN[1] - 100)],
                     crs="EPSG:32633").to_file(points)
    out = tmp_path / "out"
    args = ["export-tiles", str(rasters["scene"]), "--out", str(out), "--tile-size", "32",
            option, str(points), "--no-progress"]
    assert main(args) == 1
    one_line_error(capsys, "points.gpkg", "Point", option)
    assert files_under(out) == []


def test_polygon_aoi_still_selects(rasters, tmp_path):
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN[0], ORIGIN[1] - 300, ORIGIN[0] + 300, ORIGIN[1])],
                     crs="EPSG:32633").to_file(aoi)
    out = tmp_path / "out"
    args = ["export-tiles", str(rasters["scene"]), "--out", str(out), "--tile-size", "32",
            "--aoi", str(aoi), "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "train_a").glob("*.tif")) == ["scene_0_0.tif"]


def test_crop_smaller_than_the_generator_stride_gets_a_possible_hint(tmp_path, capsys):
    """A 16 px crop for a 5-level U-Net (stride 32) was told "use --crop-size 0"."""
    chips = make_chips(tmp_path / "chips", n_train=2, size=32)
    args = ["train", str(chips), "--dataset-type", "Pix2Pix", "--unet-depth", "5",
            "--crop-size", "16", "--ngf", "4", "--ndf", "4", "--epochs", "1",
            "--epochs-decay", "0", "--out", str(tmp_path / "run"), "--no-progress",
            "--no-preview", "--device", "cpu"]
    assert main(args) == 1
    err = one_line_error(capsys, "16 px", "32")
    assert "--crop-size 0" not in err and "smaller than 32" in err


# ---- 19: evaluate rasters without georeference -------------------------------------------------


def pixel_space(path: Path, data: np.ndarray, transform: Affine | None = None) -> Path:
    """A GeoTIFF (or PNG) without CRS: identity transform unless given."""
    count, height, width = data.shape
    driver = "PNG" if path.suffix == ".png" else "GTiff"
    profile = {"driver": driver, "width": width, "height": height, "count": count,
               "dtype": data.dtype.name}
    if transform is not None:
        profile["transform"] = transform
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning) if transform is None else \
            _no_warning():
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def numpy_mae_rmse(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = pred.astype(np.float64) - ref.astype(np.float64)
    return float(np.abs(diff).mean()), float(np.sqrt((diff**2).mean()))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_png_against_png_evaluates(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 40, 48)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    pa, pb = pixel_space(tmp_path / "a.png", a), pixel_space(tmp_path / "b.png", b)
    report = evaluate_rasters(pa, pb, allow_no_crs=True, data_range=255.0)
    mae, rmse = numpy_mae_rmse(a, b)
    assert report.metrics["overall"]["mae"] == pytest.approx(mae)
    assert report.metrics["overall"]["rmse"] == pytest.approx(rmse)
    assert report.metrics["valid_pixels"] == 40 * 48
    itself = evaluate_rasters(pa, pa, allow_no_crs=True)
    assert itself.metrics["overall"]["mae"] == 0.0


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_no_crs_geotiff_against_itself_and_a_shifted_copy(tmp_path, capsys):
    rng = np.random.default_rng(2)
    big = rng.integers(0, 1000, (2, 60, 70)).astype(np.uint16)
    pred = big[:, 3:43, 5:55] + 7  # a prediction off by 7 everywhere
    pred_path = pixel_space(tmp_path / "pred.tif", pred.astype(np.uint16))
    # the reference covers more: its pixel (3, 5) is the prediction's (0, 0)
    ref_path = pixel_space(tmp_path / "ref.tif", big, Affine.translation(-5, -3))
    assert main(["evaluate", str(pred_path), str(pred_path), "--allow-no-crs"]) == 0
    assert "overall" in capsys.readouterr().out
    report = evaluate_rasters(pred_path, ref_path, allow_no_crs=True)
    assert report.metrics["overall"]["mae"] == pytest.approx(7.0)
    assert report.settings["common_window"] == {"col_off": 0, "row_off": 0,
                                                "width": 50, "height": 40}
    # the other way round: the common area is the prediction's extent inside the reference
    back = evaluate_rasters(ref_path, pred_path, allow_no_crs=True)
    assert back.settings["common_window"] == {"col_off": 5, "row_off": 3,
                                              "width": 50, "height": 40}
    assert back.metrics["overall"]["mae"] == pytest.approx(7.0)
    # a half-pixel shift cannot be aligned without a CRS: one line
    half = pixel_space(tmp_path / "half.tif", big, Affine.translation(-5.5, -3))
    assert main(["evaluate", str(pred_path), str(half), "--allow-no-crs"]) == 1
    one_line_error(capsys, "half.tif", "without a CRS")


# ---- 15, 16: the dataset directory's lock; unfinished add-runs --------------------------------


def cli_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from geotranslate.dirlock import DirectoryLock
    DirectoryLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_export_into_a_locked_directory_names_the_holder(rasters, tmp_path, capsys):
    out = tmp_path / "chips"
    out.mkdir()
    holder = cli_process("-c", HOLD_LOCK, str(out))
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["export-tiles", str(rasters["scene"]), "--out", str(out), "--tile-size", "32",
                "--no-progress"]
        assert main(args) == 1
        err = one_line_error(capsys, str(out), f"PID {holder.pid}", socket.gethostname())
        assert "another export-tiles run" in err
        assert files_under(out) == [out / "export.lock"]  # nothing of this run
        with pytest.raises(Exception, match=f"PID {holder.pid}.*writing into it now"):
            from geotranslate.data import read_meta

            read_meta(out)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (SIGKILL): its lock is stale, taken over with a note
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"PID {holder.pid}" in err and "did not finish" in err
    assert not (out / "export.lock").exists()
    assert len(list((out / "train_a").glob("*.tif"))) == 4


def test_two_exports_at_once_keep_every_source_they_report(make_raster, tmp_path):
    """Two real processes, different sources, one directory: whatever the timing, each run
    that exits 0 is fully in meta.json and index.gpkg; one that is refused says why."""
    rng = np.random.default_rng(3)
    sources = [make_raster(f"s{i}.tif", rng.integers(1, 999, (1, 128, 128)).astype(np.uint16))
               for i in range(2)]
    out = tmp_path / "chips"
    runs = [cli_process("-m", "geotranslate", "export-tiles", str(s), "--out", str(out),
                        "--tile-size", "16", "--no-progress") for s in sources]
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    assert any(code == 0 for code, _ in results)
    meta = json.loads((out / "meta.json").read_text())
    index = gpd.read_file(out / "index.gpkg")
    for source, (code, err) in zip(sources, results, strict=True):
        if code == 0:
            assert str(source.resolve()) in meta["domains"]["a"]["sources"]
            assert (index["source"] == str(source)).sum() == 64
        else:
            assert code == 1 and "another export-tiles run" in err and "PID" in err, err
    on_disk = len(list((out / "train_a").glob("*.tif")))
    assert len(index) == on_disk == meta["chips"]["train"]["a"]
    assert not (out / "export.lock").exists()


def test_killed_add_run_is_noticed_by_train_and_completed_by_a_rerun(make_raster, tmp_path,
                                                                     capsys):
    from geotranslate.data import ChipDataset, read_meta
    from geotranslate.errors import GeotranslateError

    rng = np.random.default_rng(4)
    first = make_raster("first.tif", rng.integers(1, 999, (1, 64, 64)).astype(np.uint16))
    big = make_raster("big.tif", rng.integers(1, 999, (1, 320, 320)).astype(np.uint16))
    out = tmp_path / "chips"
    for d in ("a", "b"):  # a two-domain dataset: export each domain, then add to A
        args = ["export-tiles", str(first), "--domain", d, "--out", str(out),
                "--tile-size", "16", "--no-progress"]
        assert main(args) == 0
    capsys.readouterr()
    assert read_meta(out).chip_count("train", "a") == 16
    add = ["-m", "geotranslate", "export-tiles", str(big), "--domain", "a", "--out", str(out),
           "--tile-size", "16", "--no-progress"]
    run = cli_process(*add)
    deadline = time.monotonic() + 60
    while len(list((out / "train_a").glob("big_*.tif"))) < 1 and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.kill()
    run.wait()
    run.stdout.close()
    run.stderr.close()
    assert run.returncode == -9, "the add-run finished before it could be killed"
    on_disk = len(list((out / "train_a").glob("*.tif")))
    assert on_disk > 16 and json.loads((out / "meta.json").read_text())["chips"]["train"]["a"] == 16
    with pytest.raises(GeotranslateError, match=rf"PID {run.pid}.*re-run the same export-tiles"):
        read_meta(out)
    # without the lock file (removed by hand) the chips meta.json does not describe are noticed
    lock = (out / "export.lock").read_bytes()
    (out / "export.lock").unlink()
    with pytest.raises(GeotranslateError, match=rf"{on_disk} chips, but .*describes 16"):
        ChipDataset(out, paired=False)
    (out / "export.lock").write_bytes(lock)
    assert main(add[2:]) == 0  # the same command completes it
    assert f"PID {run.pid}" in capsys.readouterr().err
    meta = read_meta(out)
    assert meta.chip_count("train", "a") == 16 + 20 * 20
    assert len(ChipDataset(out, paired=False, cache=False)) == 16 + 20 * 20
    assert not (out / "export.lock").exists()


# ---- 2: tile sizes that cannot fit in memory ---------------------------------------------------


def test_export_tile_size_beyond_memory_is_refused(rasters, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export-tiles", str(rasters["scene"]), "--out", str(out), "--tile-size", "100000",
            "--no-progress"]
    assert main(args) == 1
    err = one_line_error(capsys, "--tile-size 100000", "iB of memory", "available")
    number, unit = err.split("needs about ")[1].split()[:2]
    needed = float(number) * {"GiB": 2**30, "TiB": 2**40}[unit]
    # 10^10 pixels of 4 uint16 bands and a mask, a few windows in flight
    assert needed > 1e10 * 9
    assert not out.exists()


def test_export_memory_estimate_against_available_memory(rasters, tmp_path, monkeypatch,
                                                         capsys):
    import geotranslate.memory

    monkeypatch.setattr(geotranslate.memory, "available_memory", lambda: 10 * 2**20)
    base = ["export-tiles", str(rasters["scene"]), "--no-progress", "--max-nodata", "1"]
    assert main([*base, "--out", str(tmp_path / "big"), "--tile-size", "512"]) == 1
    one_line_error(capsys, "--tile-size 512", "10.0 MiB is available")
    assert main([*base, "--out", str(tmp_path / "fits"), "--tile-size", "256"]) == 0


def test_predict_tile_size_beyond_memory_is_refused(rasters, tmp_path, make_raster, capsys):
    run = make_model(tmp_path, bands_a=2, bands_b=3)
    src = make_raster("in.tif", np.ones((2, 20, 20), np.float32))
    out = tmp_path / "out.tif"
    args = ["predict-raster", str(src), "--model", str(run), "--out", str(out),
            "--tile-size", "100000", "--device", "cpu", "--no-progress"]
    assert main(args) == 1
    one_line_error(capsys, "--tile-size 100000", "iB of memory")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()
                                       if p.name.startswith(".")) == []
    # the default tile (the model's chip size) fits
    assert main(args[:-5] + ["--device", "cpu", "--no-progress"]) == 0 and out.exists()


# ---- 18: the validation split meets its fraction over the chips that survive the filters ----


def realized_val_fraction(summary) -> float:
    val, train = summary.written["val"]["a"], summary.written["train"]["a"]
    return val / (val + train)


def west_half_aoi(path: Path, src: Path) -> Path:
    with rasterio.open(src) as ds:
        b, crs = ds.bounds, ds.crs
    gpd.GeoDataFrame(geometry=[box(b.left, b.bottom, (b.left + b.right) / 2, b.top)],
                     crs=crs).to_file(path)
    return path


@pytest.mark.parametrize("stride", [16, 8])
def test_val_fraction_is_met_with_an_aoi_and_nodata_over_many_seeds(make_raster, tmp_path,
                                                                    stride):
    from geotranslate.chips.export import export_tiles

    rng = np.random.default_rng(5)
    data = rng.integers(1, 999, (1, 160, 160)).astype(np.uint16)
    data[:, 116:, :] = 0  # a nodata band along the south: its chips are filtered out
    src = make_raster("scene.tif", data, nodata=0)
    aoi = west_half_aoi(tmp_path / "west.gpkg", src)
    fractions = []
    for seed in range(6):
        summary = export_tiles([src], out_dir=tmp_path / f"s{seed}", tile_size=16, stride=stride,
                               val_fraction=0.2, aoi=aoi, seed=seed, progress=False)
        assert summary.skipped_aoi > 0 and summary.skipped_nodata > 0
        fractions.append(realized_val_fraction(summary))
        assert not summary.val_note
    assert all(abs(f - 0.2) <= 0.05 for f in fractions), fractions
    assert len(set(fractions)) > 1 or stride == 16  # the seed changes the draw


def test_val_fraction_that_cannot_be_met_says_so(make_raster, tmp_path):
    from geotranslate.chips.export import export_tiles

    src = make_raster("two.tif", np.ones((1, 16, 32), np.uint16))
    summary = export_tiles([src], out_dir=tmp_path / "out", tile_size=16, val_fraction=0.2,
                           progress=False)
    assert "--val-fraction 0.2 cannot be met" in summary.val_note
    assert "of the 2 chips" in summary.val_note and "Warning: --val-fraction" in str(summary)


def test_val_fraction_on_real_raster_with_aoi(real_data, tmp_path):
    from geotranslate.chips.export import export_tiles

    src = real_data / "rasterio" / "RGB.byte.tif"
    if not src.exists():
        pytest.skip(f"{src} not present")
    aoi = west_half_aoi(tmp_path / "west.gpkg", src)
    for stride, seed in [(None, 0), (32, 0), (32, 1), (32, 2)]:
        summary = export_tiles([src], out_dir=tmp_path / f"o{stride}_{seed}", tile_size=64,
                               stride=stride, val_fraction=0.2, aoi=aoi, seed=seed,
                               progress=False)
        assert abs(realized_val_fraction(summary) - 0.2) <= 0.05, (stride, seed, summary)


@pytest.mark.parametrize("option", [["--tile-size", "0"], ["--out", "OUTDIR/"]])
def test_predict_zero_tile_size_and_trailing_slash_are_refused(tmp_path, make_raster, capsys,
                                                               option):
    run = make_model(tmp_path, bands_a=2, bands_b=3)
    src = make_raster("in.tif", np.ones((2, 20, 20), np.float32))
    if option[0] == "--out":
        option = ["--out", str(tmp_path / "newdir") + "/"]
    args = ["predict-raster", str(src), "--model", str(run), *option, "--device", "cpu",
            "--no-progress"]
    assert main(args) == 1
    one_line_error(capsys, "tile size 0" if option[0] == "--tile-size" else "newdir/")
    assert not (tmp_path / "newdir").exists() and not (tmp_path / "in_translated.tif").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_predict_raster_pixel_space_output_evaluates_against_a_pixel_space_reference(
        tmp_path, capsys):
    from geotranslate.predict import predict_raster

    run = make_model(tmp_path, bands_a=2, bands_b=3)
    rng = np.random.default_rng(6)
    src = pixel_space(tmp_path / "in.tif", rng.uniform(-1, 1, (2, 40, 48)).astype(np.float32))
    ref_data = rng.uniform(-1, 1, (3, 40, 48)).astype(np.float32)
    ref = pixel_space(tmp_path / "ref.tif", ref_data)
    out = tmp_path / "pred.tif"
    predict_raster(src, run, out, device="cpu", progress=False)
    capsys.readouterr()
    with rasterio.open(out) as ds:
        assert ds.crs is None
        pred = ds.read()
    report = evaluate_rasters(out, ref, allow_no_crs=True, data_range=2.0)
    mae, rmse = numpy_mae_rmse(pred, ref_data)
    assert report.metrics["overall"]["mae"] == pytest.approx(mae, rel=1e-6)
    assert report.metrics["overall"]["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert report.metrics["valid_pixels"] == 40 * 48


def test_export_on_a_file_system_without_locks_warns_and_works(rasters, tmp_path, monkeypatch,
                                                               capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "out"
    args = ["export-tiles", str(rasters["scene"]), "--out", str(out), "--tile-size", "32",
            "--no-progress"]
    assert main(args) == 0
    assert "does not support locks" in capsys.readouterr().err
    assert not (out / "export.lock").exists() and len(list((out / "train_a").glob("*"))) == 4
