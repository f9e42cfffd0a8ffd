"""Benchmark what a user gets from ``geotranslate`` with its defaults, on real paired rasters.

Each task cuts a real co-registered pair from ``/work/shared/data/real`` into a training area
and a spatially held-out test area (never seen in training: the training chips are exported
from crops that exclude it), then

1. export-tiles on the training crops (library ``export_tiles``),
2. ``train`` Pix2Pix with the tool's defaults for a fixed number of iterations (``--budget``),
   so the figures do not depend on machine load (the wall time is reported too),
3. ``predict_raster`` on the held-out input at tile 256 and tile 128,
4. metrics (``geotranslate.metrics.compute_metrics``, what ``evaluate`` uses) of the model,
   of the flat baseline (the mean target of the training area as a flat image) and of the
   untrained model (same network, initial weights) against the held-out truth, over the same
   pixels and with the same data range (the training target's min-max, from meta.json, so
   figures of runs with different settings compare).

With ``--methods`` each method (``train --dataset-type``) is trained in the same iteration
budget on the same task. A paired method gets the paired chips; an unpaired method
(``METHODS[name].paired`` False) gets chips exported with ``mode="unpaired"`` in which no
pairing remains: every training crop is cut in two halves along its longer side, A is tiled
from the first half only and B from the second half only, so no A chip has its B counterpart
among the training chips (the unpaired method sees half of the A and half of the B area).
All methods are scored the same way (a2b on the held-out area, against the same flat and
untrained baselines); the table names the method and a line names the winner (highest PSNR)
per task.

Every task is trained once per seed (``--seeds``, default 0 and 1); the first table gives
each (task, method, settings) as the mean over the seeds ± half their range, the second every
run.

Tile dependence is the mean |prediction at tile 128 - at tile 256| in 8-bit units of that
range (255 * difference / range). Two checkerboard figures, in the same 8-bit units:
"checker" (:func:`phase_pattern`) is the pattern fixed to the decoder's pixel grid in the
held-out prediction — the high-pass of the image averaged over every cell of ``period`` px
(the chip size / 8, 2 to 16 px) for each phase, and the spread of those phase means; real
content averages out over the phases, a transposed convolution's pattern does not (the truth's
figure is given beside it as the floor); "constant-input std" (:func:`constant_input_std`) is
the output's standard deviation for a constant input chip (every band at its training mean),
away from the borders by half the receptive field: a decoder without a checkerboard gives a
constant. "PSNR per-tile stats" scores the same model predicted at
tile 256 with ``norm_stats="tile"`` (every tile normalized by its own statistics, the
behaviour before scene statistics), which shows what the tile-independent default costs
against the truth. "per-pixel linear fit" is a third baseline (:func:`linear_fit`): B as a
least-squares linear function of the same pixel's A bands, fitted on the training crops;
where even it does not beat the flat image, a pixel's A values say little about its B.

Tasks (a task whose data is absent is skipped):

* ``hillshade``: Mt Hood LANDFIRE DEM (30 m) -> its hillshade (Horn's gradient, sun azimuth
  315°, altitude 45°, uint8 1-255, 0 = nodata); held out: a strip east of the summit.
* ``naip_nir``: NAIP RGB -> NIR; training on the west of 4 dates, test on the east of a 5th.
* ``sen12ms_s1s2``: SEN12MS-CR S1 (VV, VH) -> cloud-free S2 RGB; training on the north half
  of two patches, test on the south half of one.
* ``floods_s1s2``: Sen1Floods11 S1 (VV, VH) -> S2 RGB; test on the south quarter.
* ``dsm_ortho``: drone DSM (0.25 m) -> RGB ortho mosaic; test on the middle of the east
  quarter.
* ``naip_nir_scene``: ``naip_nir`` trained with ``norm_scope="scene"`` (each date matched to
  the training radiometry by its own statistics; geotranslate/inputs.py).
* ``dsm_ortho_relative``: ``dsm_ortho`` with the DSM exported as elevation relative to its
  surroundings (``relative_elevation=32`` px, 8 m).
* ``hillshade_relative``: ``hillshade`` with the DEM exported as elevation relative to its
  surroundings (``relative_elevation=32`` px, 960 m): a hillshade depends on slopes alone.
* ``cloud_removal``: SEN12MS-CR, A = ``fuse:`` S1 (VV, VH dB) + cloudy S2 (13 bands), B =
  cloud-free S2 (13 bands); training on the north half of both patches, test on the south
  half of one. Its own table (:func:`run_cloud_task`): the model, the same model trained on
  S1 alone, the flat image and the cloudy input copied, in reflectance / 10000 clipped to
  [0, 1] (MAE, PSNR, SSIM, SAM), beside the published SEN12MS-CR rows (other data, budgets).

Expected run time on 2 free CPU cores at the default budget (1500 iterations; the default
Pix2Pix, U-Net depth 4, ngf 64, bf16 on a CPU with AMX, trains at about 0.1 s per iteration
with 2 threads on 128 px chips): 1-3 minutes per task and seed; the default, the five tasks
of :data:`TARGET_TASKS` at two seeds, about 25 minutes, ``--tasks all`` about twice that. The
figures depend on the budget and the thread count (which changes the order of float sums),
not on the machine's load; the wall and CPU times are reported next to them. Everything temporary
goes to one temporary directory, removed at the end (``--keep`` keeps it and prints where).

    nice -n 5 python tools/bench_quality.py                      # the five, seeds 0 and 1
    nice -n 5 python tools/bench_quality.py --tasks all          # every task
    nice -n 5 python tools/bench_quality.py --tasks hillshade --budget 100 --out table.md
    python tools/bench_quality.py --tasks hillshade --set net_norm=instance --seeds 0  # compare
    nice -n 5 python tools/bench_quality.py --tasks hillshade,sen12ms_s1s2 --budget 60 \
        --methods Pix2Pix,CycleGAN,Pix2PixHD,CUT,FastCUT           # methods compared
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REAL = Path(os.environ.get("GEOTRANSLATE_REAL_DATA", "/work/shared/data/real"))
DEFAULT_BUDGET = 1500
NODATA_SHADE = 0


# ---- hillshade -------------------------------------------------------------------------------


def hillshade(dem: np.ndarray, x_res: float, y_res: float, valid: np.ndarray | None = None, *,
              azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Hillshade of a north-up DEM as uint8: 1 (no direct light) to 255 (facing the sun),
    0 where the 3 x 3 neighbourhood has an invalid pixel.

    Gradients are Horn's (1981) 3 x 3 weights (as gdaldem); beyond the edges the surface is
    extrapolated linearly (odd reflection), so a plane shades evenly up to its border.
    The value is 1 + 254 * max(0, n · s), n the unit surface normal, s the unit vector to the
    sun (``azimuth`` clockwise from north, ``altitude`` above the horizon, in degrees).
    ``x_res``/``y_res`` are the pixel width and height in the DEM's height units.
    """
    z = np.pad(np.asarray(dem, dtype=np.float64), 1, mode="reflect", reflect_type="odd")
    if valid is None:
        valid = np.ones(dem.shape, dtype=bool)
    v = np.pad(valid, 1, mode="edge")
    z = np.where(v, z, 0.0)

    def at(dr: int, dc: int) -> np.ndarray:
        return z[1 + dr: z.shape[0] - 1 + dr, 1 + dc: z.shape[1] - 1 + dc]

    dz_east = ((at(-1, 1) + 2 * at(0, 1) + at(1, 1)) -
               (at(-1, -1) + 2 * at(0, -1) + at(1, -1))) / (8 * x_res)
    dz_north = ((at(-1, -1) + 2 * at(-1, 0) + at(-1, 1)) -
                (at(1, -1) + 2 * at(1, 0) + at(1, 1))) / (8 * y_res)
    az, alt = math.radians(azimuth), math.radians(altitude)
    sun = (math.cos(alt) * math.sin(az), math.cos(alt) * math.cos(az), math.sin(alt))
    lit = (-dz_east * sun[0] - dz_north * sun[1] + sun[2]) / np.sqrt(
        dz_east**2 + dz_north**2 + 1.0)
    shade = np.rint(1 + 254 * np.clip(lit, 0.0, 1.0)).astype(np.uint8)
    all_valid = np.ones(dem.shape, dtype=bool)
    rows, cols = dem.shape
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            all_valid &= v[1 + dr: 1 + dr + rows, 1 + dc: 1 + dc + cols]
    shade[~all_valid] = NODATA_SHADE
    return shade


# ---- raster crops ----------------------------------------------------------------------------


def write_crop(src: Path, window, dst: Path, bands: list[int] | None = None,
               data: np.ndarray | None = None, nodata=None) -> Path:
    """``window`` of ``src`` (``bands``, 1-based; or ``data`` on src's grid) as a GeoTIFF."""
    import rasterio

    with rasterio.open(src) as ds:
        bands = bands or list(range(1, ds.count + 1))
        if data is None:
            values = ds.read(bands, window=window)
            nodata = ds.nodata if nodata is None else nodata
        else:
            values = data[:, window.row_off: window.row_off + window.height,
                          window.col_off: window.col_off + window.width]
        profile = {"driver": "GTiff", "width": int(window.width), "height": int(window.height),
                   "count": values.shape[0], "dtype": values.dtype.name, "crs": ds.crs,
                   "transform": ds.window_transform(window), "nodata": nodata}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(values)
    return dst


@dataclasses.dataclass
class Prepared:
    train: list[tuple[Path, Path]]  # (A, B) crops of the training area
    test: tuple[Path, Path]  # (A, B) of the held-out area
    tile_size: int
    stride: int


@dataclasses.dataclass
class Task:
    name: str
    what: str
    files: list[str]  # relative to REAL; the task is skipped when one is missing
    prepare: Callable[[Path], Prepared]
    export_options: dict = dataclasses.field(default_factory=dict)  # export_tiles keywords
    settings: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields of the task
    run: Callable | None = None  # a task of its own kind (its own rows and table)

    def available(self) -> bool:
        return all((REAL / f).exists() for f in self.files)


def _w(col_off, row_off, width, height):
    from rasterio.windows import Window

    return Window(col_off, row_off, width, height)


def _size(path: Path) -> tuple[int, int]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.width, ds.height


def _split_pair(tmp: Path, a: Path, b: Path, bands_a, bands_b, train_windows, test_window,
                tag: str, b_data: np.ndarray | None = None, b_nodata=None) -> tuple[list, tuple]:
    pairs = []
    for i, window in enumerate(train_windows):
        pairs.append((write_crop(a, window, tmp / "train_a" / f"{tag}_{i}.tif", bands_a),
                      write_crop(a if b_data is not None else b, window,
                                 tmp / "train_b" / f"{tag}_{i}.tif", bands_b, b_data, b_nodata)))
    test = None
    if test_window is not None:
        test = (write_crop(a, test_window, tmp / "test" / f"{tag}_a.tif", bands_a),
                write_crop(a if b_data is not None else b, test_window,
                           tmp / "test" / f"{tag}_b.tif", bands_b, b_data, b_nodata))
    return pairs, test


MT_HOOD = "gdalraster/lf_elev_220_mt_hood_utm.tif"


def _prepare_hillshade(tmp: Path) -> Prepared:
    import rasterio

    src = REAL / MT_HOOD
    with rasterio.open(src) as ds:
        dem, valid = ds.read(1), ds.read_masks(1) > 0
        shade = hillshade(dem, ds.res[0], ds.res[1], valid)[None]
    width, height = _size(src)
    test = _w(560, 0, 253, height)  # east of the summit (row 401, col 502): high flanks
    train = [_w(0, 0, 560, height), _w(813, 0, width - 813, height)]
    pairs, test_pair = _split_pair(tmp, src, src, None, None, train, test, "mthood",
                                   b_data=shade, b_nodata=NODATA_SHADE)
    return Prepared(pairs, test_pair, 128, 64)


NAIP = "naip_rgbnir_opengeos/m_4709963_se_14_1_{}.tif"
NAIP_TRAIN = ("20090818", "20120731", "20150926", "20180716")
NAIP_TEST = "20200831"


def _prepare_naip(tmp: Path) -> Prepared:
    pairs = []
    for date in NAIP_TRAIN:
        src = REAL / NAIP.format(date)
        width, height = _size(src)
        got, _ = _split_pair(tmp, src, src, [1, 2, 3], [4], [_w(0, 0, 700, height)], None,
                             f"naip{date}")
        pairs += got
    src = REAL / NAIP.format(NAIP_TEST)
    width, height = _size(src)
    _, test = _split_pair(tmp, src, src, [1, 2, 3], [4], [], _w(700, 0, width - 700, height),
                          f"naip{NAIP_TEST}")
    return Prepared(pairs, test, 128, 128)


SEN12 = ("ROIs1970_fall_139_p839", "ROIs2017_winter_112_p797")


def _prepare_sen12(tmp: Path) -> Prepared:
    pairs, test = [], None
    for i, roi in enumerate(SEN12):
        a = REAL / f"sen12mscr_glfcr/s1__{roi}.tif"
        b = REAL / f"sen12mscr_glfcr/s2_cloudfree__{roi}.tif"
        got, held = _split_pair(tmp, a, b, [1, 2], [4, 3, 2], [_w(0, 0, 256, 128)],
                                _w(0, 128, 256, 128) if i == 0 else None, f"sen12_{i}")
        pairs += got
        test = test or held
    return Prepared(pairs, test, 64, 32)


FLOODS = "sen1floods11_sample/Spain_7370579_{}.tif"


def _prepare_floods(tmp: Path) -> Prepared:
    a, b = REAL / FLOODS.format("S1Hand"), REAL / FLOODS.format("S2Hand")
    pairs, test = _split_pair(tmp, a, b, [1, 2], [4, 3, 2], [_w(0, 0, 512, 384)],
                              _w(0, 384, 512, 128), "floods")
    return Prepared(pairs, test, 128, 64)


DRONE = "odm_tuniu_dsm_ortho_orthority/{}.tif"


def _prepare_drone(tmp: Path) -> Prepared:
    a, b = REAL / DRONE.format("dsm_0.25m_bilinear"), REAL / DRONE.format("ortho_rgb_0.25m")
    width, height = _size(a)
    pairs, test = _split_pair(tmp, a, b, [1], [1, 2, 3], [_w(0, 0, 1170, height)],
                              _w(1170, height // 4, width - 1170, height // 2), "drone")
    return Prepared(pairs, test, 128, 128)


# ---- cloud removal (SEN12MS-CR): A = S1 + cloudy S2 fused, B = cloud-free S2 ----------------

#: published SEN12MS-CR test-split figures (Ebel et al.; other data and budgets than ours):
#: (method, PSNR dB, SSIM, SAM °, MAE)
CLOUD_PUBLISHED = [("SAR-Opt-cGAN (pix2pix-type)", 25.59, 0.764, 15.49, 0.043),
                   ("DSen2-CR", 27.76, 0.874, 9.47, 0.031),
                   ("UnCRtainTS", 28.90, 0.880, 8.32, 0.027)]
CLOUD_KINDS = ("s1", "s2_cloudy", "s2_cloudfree")


def _prepare_cloud(tmp: Path) -> dict:
    """Crops of the two SEN12MS-CR patches: training on the north half of both, test on the
    south half of the first (spatially separate). A is ``fuse:`` of the S1 and cloudy-S2
    crops (2 float32 dB + 13 uint16 bands), B the cloud-free S2 crop (13 bands)."""
    train, test = [], None
    for i, roi in enumerate(SEN12):
        crops = {}
        for kind in CLOUD_KINDS:
            src = REAL / f"sen12mscr_glfcr/{kind}__{roi}.tif"
            crops[kind] = (write_crop(src, _w(0, 0, 256, 128), tmp / "train" / f"{kind}_{i}.tif"),
                           write_crop(src, _w(0, 128, 256, 128), tmp / "test" / f"{kind}_{i}.tif")
                           if i == 0 else None)
        train.append({k: v[0] for k, v in crops.items()})
        if i == 0:
            test = {k: v[1] for k, v in crops.items()}
    return {"train": train, "test": test, "tile_size": 64, "stride": 32}


def _reflectance(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """S2 digital numbers as reflectance / 10000 clipped to [0, 1], and validity."""
    data, valid = _read(path)
    return np.clip(data / 10000.0, 0.0, 1.0), valid


def run_cloud_task(task: Task, work: Path, budget: int, overrides: dict, log) -> dict:
    """The model given S1 + cloudy S2, the same model given S1 alone, the flat image (the
    training target's mean) and the cloudy input copied, scored in reflectance (/10000,
    clipped to [0, 1], data range 1) on the held-out half: MAE, PSNR, SSIM, SAM."""
    from geotranslate.chips.export import export_tiles
    from geotranslate.metrics import compute_metrics
    from geotranslate.predict import predict_raster
    from geotranslate.train import TrainConfig, train

    prep = _prepare_cloud(work / "data")
    fuse = "fuse:{s1}+{s2_cloudy}".format
    inputs = {"s1_cloudy_s2": ([fuse(**t) for t in prep["train"]], fuse(**prep["test"])),
              "s1_only": ([t["s1"] for t in prep["train"]], prep["test"]["s1"])}
    targets = [t["s2_cloudfree"] for t in prep["train"]]
    truth, valid = _reflectance(prep["test"]["s2_cloudfree"])
    settings = {**default_overrides(), **task.settings, **overrides}
    result = {"task": task.name, "what": task.what, "iterations": budget, "settings": settings,
              "rows": {}}
    for name, (train_a, test_a) in inputs.items():
        chips = work / f"chips_{name}"
        summary = export_tiles(train_a, targets, chips, tile_size=prep["tile_size"],
                               stride=prep["stride"], progress=False)
        config = TrainConfig("Pix2Pix", data_dir=str(chips), out=str(work / f"run_{name}"),
                             max_steps=budget, preview=False, progress=False,
                             tensorboard=False, **settings)
        t0, cpu0 = time.perf_counter(), time.process_time()
        run = train(config)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out = work / f"pred_{name}.tif"
        predict_raster(test_a, run, out, device="cpu", progress=False)
        pred, pred_valid = _reflectance(out)
        valid &= pred_valid
        result["rows"][name] = {"pred": pred, "chips": summary.written["train"]["a"],
                                "train_seconds": seconds, "train_cpu_seconds": cpu}
        log(f"{task.name}: {name}: trained {budget} iterations in {seconds:.0f} s "
            f"({cpu:.0f} CPU s)")
    train_truth = [_reflectance(t) for t in targets]
    mean = sum(d[:, v].sum(axis=1) for d, v in train_truth) / sum(v.sum() for _, v in train_truth)
    cloudy, cloudy_valid = _reflectance(prep["test"]["s2_cloudy"])
    valid &= cloudy_valid
    preds = {**{k: r.pop("pred") for k, r in result["rows"].items()},
             "flat": np.broadcast_to(mean[:, None, None], truth.shape), "cloudy_copy": cloudy}
    for key, pred in preds.items():
        overall = compute_metrics(pred, truth, valid, 1.0)["overall"]
        result["rows"].setdefault(key, {}).update(
            {k: overall[k] for k in ("mae", "psnr", "ssim", "sam_deg")})
    result["test_pixels"] = int(valid.sum())
    return result


CLOUD_LABELS = {"s1_cloudy_s2": "Pix2Pix, A = S1 + cloudy S2 (15 bands)",
                "s1_only": "Pix2Pix, A = S1 only (same settings)",
                "flat": "flat image (training target mean)",
                "cloudy_copy": "cloudy input copied as the prediction"}


def format_cloud_table(result: dict) -> str:
    lines = [f"{result['what']}: {result['iterations']} iterations, B = the 13 cloud-free S2 "
             f"bands, scored in reflectance / 10000 clipped to [0, 1] over "
             f"{result['test_pixels']} held-out pixels", "",
             "| prediction | PSNR dB | SSIM | SAM ° | MAE | train s (CPU s) |",
             "|---|---|---|---|---|---|"]
    for key, label in CLOUD_LABELS.items():
        r = result["rows"][key]
        timing = (f"{r['train_seconds']:.0f} ({r['train_cpu_seconds']:.0f})"
                  if "train_seconds" in r else "–")
        lines.append(f"| {label} | {r['psnr']:.2f} | {_f(r['ssim'], 3)} | "
                     f"{_f(r['sam_deg'], 2)} | {r['mae']:.4f} | {timing} |")
    for method, p, ssim, sam, mae in CLOUD_PUBLISHED:
        lines.append(f"| published: {method} (other data and budget: SEN12MS-CR test split) "
                     f"| {p:.2f} | {ssim:.3f} | {sam:.2f} | {mae:.3f} | – |")
    return "\n".join(lines)


DRONE_RELATIVE_RADIUS = 32  # px: 8 m at 0.25 m, about a house
HILLSHADE_RELATIVE_RADIUS = 32  # px: 960 m at 30 m, a valley side


TASKS = {
    t.name: t for t in [
        Task("hillshade", "DEM -> hillshade (Mt Hood, 30 m)", [MT_HOOD], _prepare_hillshade),
        Task("naip_nir", "RGB -> NIR (NAIP, 4 dates -> a 5th)",
             [NAIP.format(d) for d in (*NAIP_TRAIN, NAIP_TEST)], _prepare_naip),
        Task("sen12ms_s1s2", "S1 -> S2 RGB (SEN12MS-CR)",
             [f"sen12mscr_glfcr/{k}__{r}.tif" for r in SEN12 for k in ("s1", "s2_cloudfree")],
             _prepare_sen12),
        Task("floods_s1s2", "S1 -> S2 RGB (Sen1Floods11)",
             [FLOODS.format("S1Hand"), FLOODS.format("S2Hand")], _prepare_floods),
        Task("dsm_ortho", "drone DSM -> RGB ortho",
             [DRONE.format("dsm_0.25m_bilinear"), DRONE.format("ortho_rgb_0.25m")],
             _prepare_drone),
        Task("naip_nir_scene", "RGB -> NIR (NAIP, 4 dates -> a 5th), per-scene norm",
             [NAIP.format(d) for d in (*NAIP_TRAIN, NAIP_TEST)], _prepare_naip,
             settings={"norm_scope": "scene"}),
        Task("dsm_ortho_relative",
             f"drone DSM -> RGB ortho, relative elevation r={DRONE_RELATIVE_RADIUS} px",
             [DRONE.format("dsm_0.25m_bilinear"), DRONE.format("ortho_rgb_0.25m")],
             _prepare_drone, export_options={"relative_elevation": DRONE_RELATIVE_RADIUS}),
        Task("hillshade_relative",
             f"DEM -> hillshade, relative elevation r={HILLSHADE_RELATIVE_RADIUS} px",
             [MT_HOOD], _prepare_hillshade,
             export_options={"relative_elevation": HILLSHADE_RELATIVE_RADIUS}),
        Task("cloud_removal", "cloud removal: S1 + cloudy S2 -> cloud-free S2 (SEN12MS-CR)",
             [f"sen12mscr_glfcr/{k}__{r}.tif" for r in SEN12 for k in CLOUD_KINDS],
             _prepare_cloud, run=run_cloud_task),
    ]
}


#: the tasks run unless ``--tasks`` names others: the five that the quality targets (issue 16)
#: are stated on; the others are variants of them (issue 17's inputs) and cloud removal
TARGET_TASKS = ("hillshade", "naip_nir", "sen12ms_s1s2", "floods_s1s2", "dsm_ortho")


def task_names(text: str) -> list[str]:
    """``--tasks``: comma-separated names, or ``all``; raises ValueError naming unknown ones."""
    names = list(TASKS) if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(TASKS)} or all" if unknown else "no task given")
    return names


# ---- one task --------------------------------------------------------------------------------


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(bands, rows, cols) float64 values and the (rows, cols) mask valid in every band."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float64)
        valid = (ds.read_masks() > 0).all(axis=0) & np.isfinite(data).all(axis=0)
    return data, valid


def _halves(window):
    """The two halves of ``window`` along its longer side."""
    if window.width >= window.height:
        half = window.width // 2
        return (_w(0, 0, half, window.height), _w(half, 0, window.width - half, window.height))
    half = window.height // 2
    return (_w(0, 0, window.width, half), _w(0, half, window.width, window.height - half))


def unpaired_crops(train: list[tuple[Path, Path]], tmp: Path) -> tuple[list[Path], list[Path]]:
    """A from the first half of each training crop, B from the second half: no pairs remain."""
    a_out, b_out = [], []
    for i, (a, b) in enumerate(train):
        width, height = _size(a)
        first, second = _halves(_w(0, 0, width, height))
        a_out.append(write_crop(a, first, tmp / "unpaired_a" / f"{i}_{a.name}"))
        b_out.append(write_crop(b, second, tmp / "unpaired_b" / f"{i}_{b.name}"))
    return a_out, b_out


def _untrained_model(run: Path, out: Path, seed: int) -> Path:
    import torch

    from geotranslate import load_model
    from geotranslate.modelfile import save_model
    from geotranslate.models import GeneratorSpec

    model = load_model(run)
    torch.manual_seed(seed)
    spec = GeneratorSpec.from_dict(model.generator_specs["a2b"])
    model.generators = {"a2b": spec.build(init=True)}
    model.generator_specs = {"a2b": model.generator_specs["a2b"]}
    save_model(model, out)
    return out


def linear_fit(train: list[tuple[np.ndarray, np.ndarray, np.ndarray]], test_a: np.ndarray,
               max_samples: int = 200_000, seed: int = 0) -> np.ndarray:
    """The per-pixel least-squares baseline: B ≈ W·[A bands, 1] fitted on the training
    pixels valid in A and B (``train``: (a, b, valid) arrays, a random sample of at most
    ``max_samples`` pixels), applied to every pixel of ``test_a``. A model that does not beat
    it has learned nothing a pixel's own A values do not already give; where it does not
    beat the flat image either, A's pixels say little about B's."""
    xs, ys = [], []
    for a, b, valid in train:
        xs.append(a[:, valid].T)
        ys.append(b[:, valid].T)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_samples:
        keep = np.random.default_rng(seed).choice(len(x), max_samples, replace=False)
        x, y = x[keep], y[keep]
    design = np.column_stack([x, np.ones(len(x))])
    weights, *_ = np.linalg.lstsq(design, y, rcond=None)  # (A bands + 1, B bands)
    flat_a = test_a.reshape(test_a.shape[0], -1).T
    pred = np.column_stack([flat_a, np.ones(len(flat_a))]) @ weights
    return pred.T.reshape(weights.shape[1], *test_a.shape[1:])


def phase_pattern(pred: np.ndarray, valid: np.ndarray, data_range: np.ndarray,
                  period: int) -> float:
    """The checkerboard figure of a prediction, in 8-bit units of ``data_range``.

    A decoder that upsamples by transposed convolutions adds the same small pattern to every
    ``period`` x ``period`` cell of its output (``period``: its total stride, or any stride
    whose pattern survives). The image is high-passed (minus its 3 x 3 mean), and the
    high-pass is averaged over all cells for each of the period² phases (row % period, col %
    period), valid pixels only. Real content falls at every phase alike and averages out; a
    pattern fixed to the decoder's grid does not. The figure is the standard deviation of the
    phase means, averaged over bands (255 * value / range).
    """
    from scipy.ndimage import uniform_filter

    rows, cols = np.indices(valid.shape)
    phase = (rows % period) * period + cols % period
    inner = valid.copy()
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    values = []
    for band, band_range in zip(pred, data_range, strict=True):
        high = band - uniform_filter(band, size=3, mode="nearest")
        sums = np.bincount(phase[inner], weights=high[inner], minlength=period**2)
        counts = np.bincount(phase[inner], minlength=period**2)
        means = sums[counts > 0] / counts[counts > 0]
        values.append(255 * means.std() / band_range)
    return float(np.mean(values))


def constant_input_std(model_dir: Path, a_mean: np.ndarray, size: int,
                       data_range: np.ndarray, border: int) -> float:
    """Standard deviation (8-bit units of ``data_range``) of the generator's output for a
    constant input chip (every band at its training mean), ``border`` px from the edges
    left out: a constant in gives a constant out unless the decoder paints a pattern."""
    import torch

    from geotranslate import load_model

    model = load_model(model_dir)
    domain_a, domain_b = model.source_domain("a2b"), model.target_domain("a2b")
    chip = np.broadcast_to(a_mean[:, None, None], (len(a_mean), size, size)).copy()
    x = torch.from_numpy(domain_a.normalizer.to_model(chip)[None].astype(np.float32))
    net = model.generator("a2b").eval()
    with torch.no_grad():
        y = net(x)[0].double().numpy()
    out = domain_b.normalizer.from_model(y)[:, border:size - border, border:size - border]
    return float(np.mean(255 * out.reshape(len(out), -1).std(axis=1) / data_range))


def default_overrides() -> dict:
    """Settings the benchmark sets on top of the defaults: none, except ``augment=False``
    while the default is still the old flips-and-rotations (a bool that defaults to True)."""
    from geotranslate.train import TrainConfig

    field = TrainConfig.__dataclass_fields__["augment"]
    return {"augment": False} if field.default is True else {}


def run_task(task: Task, work: Path, budget: int, overrides: dict, log,
             method: str = "Pix2Pix", seed: int = 0) -> dict:
    from geotranslate.chips.export import export_tiles
    from geotranslate.chips.meta import read_chip_meta
    from geotranslate.methods import METHODS
    from geotranslate.metrics import compute_metrics
    from geotranslate.predict import predict_raster
    from geotranslate.train import TrainConfig, train

    prep = task.prepare(work / "data")
    t0 = time.perf_counter()
    paired = export_tiles([a for a, _ in prep.train], [b for _, b in prep.train],
                          work / "chips_paired", tile_size=prep.tile_size, stride=prep.stride,
                          progress=False, **task.export_options)
    if METHODS[method].paired:
        summary, chips_dir = paired, work / "chips_paired"
    else:
        chips_dir = work / "chips"
        a_crops, b_crops = unpaired_crops(prep.train, work / "data")
        summary = export_tiles(a_crops, b_crops, work / "chips", tile_size=prep.tile_size,
                               stride=prep.stride, mode="unpaired", progress=False,
                               **task.export_options)
    chips = summary.written["train"]["a"]
    log(f"{task.name}: {method}: {chips} training chips of {prep.tile_size} px"
        + ("" if METHODS[method].paired else f" (A) and {summary.written['train']['b']} (B)"))
    settings = {**default_overrides(), **task.settings, **overrides}
    config = TrainConfig(method, data_dir=str(chips_dir), out=str(work / "run"),
                         max_steps=budget, preview=False, progress=False, tensorboard=False,
                         **{"seed": seed, **settings})
    t1, cpu1 = time.perf_counter(), time.process_time()
    run = train(config)
    train_seconds = time.perf_counter() - t1
    train_cpu_seconds = time.process_time() - cpu1
    # the data range: the (paired) training target's min-max, whatever the settings or the
    # method compared
    meta = read_chip_meta(work / "chips_paired" / "meta.json")
    target_stats = meta.domains["b"].band_stats
    data_range = np.array([max(s.max - s.min, 1e-12) for s in target_stats])

    test_a, test_b = prep.test
    preds = {}
    untrained = _untrained_model(run, work / "untrained", config.seed)
    for key, model_dir, tile, norm_stats in [("model", run, 256, "scene"),
                                             ("tile128", run, 128, "scene"),
                                             ("per_tile", run, 256, "tile"),
                                             ("untrained", untrained, 256, "scene")]:
        out = work / f"pred_{key}.tif"
        predict_raster(test_a, model_dir, out, tile_size=tile, device="cpu", progress=False,
                       norm_stats=norm_stats)
        preds[key] = _read(out)
    truth, valid = _read(test_b)
    valid &= preds["model"][1] & preds["tile128"][1]

    train_targets = [_read(b) for _, b in prep.train]
    total = sum(v.sum() for _, v in train_targets)
    mean = sum(d[:, v].sum(axis=1) for d, v in train_targets) / total
    flat = np.broadcast_to(mean[:, None, None], truth.shape)
    train_inputs = [_read(a) for a, _ in prep.train]
    test_input, test_input_valid = _read(test_a)
    linear = linear_fit([(a, b, va & vb) for (a, va), (b, vb)
                         in zip(train_inputs, train_targets, strict=True)], test_input)
    linear_valid = valid & test_input_valid

    result = {"task": task.name, "what": task.what, "method": method, "seed": config.seed,
              "chips": chips,
              "tile_size": prep.tile_size,
              "iterations": budget, "train_seconds": train_seconds,
              "train_cpu_seconds": train_cpu_seconds,
              "total_seconds": None, "test_pixels": int(valid.sum()), "settings": settings}
    for key, pred in [("model", preds["model"][0]), ("flat", flat),
                      ("untrained", preds["untrained"][0])]:
        overall = compute_metrics(pred, truth, valid, data_range)["overall"]
        result[key] = {k: overall[k] for k in ("psnr", "ssim", "sam_deg")}
    # the same model with per-tile instance-norm statistics (the behaviour before scene
    # statistics): what the tile-independent default costs or gains against the truth
    result["per_tile_psnr"] = compute_metrics(preds["per_tile"][0], truth, valid,
                                              data_range)["overall"]["psnr"]
    # the per-pixel linear fit, on the pixels where the held-out A is valid too
    result["linear_psnr"] = compute_metrics(linear, truth, linear_valid,
                                            data_range)["overall"]["psnr"]
    diff = np.abs(preds["model"][0] - preds["tile128"][0])[:, valid].mean(axis=1)
    result["tile_dependence_8bit"] = float((255 * diff / data_range).mean())
    # checkerboards: the pattern fixed to the decoder's grid in the held-out prediction (and in
    # the truth, for scale), and the output's spread for a constant input chip
    model_file = json.loads((run / "model.json").read_text())
    period = min(16, max(2, 2 ** round(math.log2(max(2, prep.tile_size // 8)))))
    result["checker_period"] = period
    result["checker_8bit"] = phase_pattern(preds["model"][0], valid, data_range, period)
    result["checker_truth_8bit"] = phase_pattern(truth, valid, data_range, period)
    a_mean = np.array([band.mean for band in meta.domains["a"].band_stats])
    field = int(model_file["receptive_field"]["a2b"])  # edges reach in half a field
    result["constant_input_std_8bit"] = constant_input_std(
        run, a_mean, prep.tile_size, data_range,
        border=min(prep.tile_size // 2 - 4, field // 2 + 1))
    result["generator"] = model_file["generators"]["a2b"]["kwargs"]
    result["total_seconds"] = time.perf_counter() - t0
    return result


# ---- table -----------------------------------------------------------------------------------


def _f(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_table(results: list[dict]) -> str:
    header = ("| task | method | chips | iterations | train s | PSNR dB model / flat / untrained "
              "| SSIM model / flat / untrained | SAM ° model / flat / untrained "
              "| model − flat dB | tile 128 vs 256 (8-bit) | PSNR dB per-tile stats "
              "| PSNR dB per-pixel linear fit | checker (8-bit) model / truth "
              "| constant-input std (8-bit) | seed | settings |")
    lines = [header, "|" + "---|" * 16]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['task']} | {r.get('method', '–')} | skipped: {r['skipped']} |"
                         + " |" * 13)
            continue
        trio = {m: " / ".join(_f(r[k][m], d) for k in ("model", "flat", "untrained"))
                for m, d in (("psnr", 2), ("ssim", 3), ("sam_deg", 1))}
        gain = r["model"]["psnr"] - r["flat"]["psnr"]
        lines.append(
            f"| {r['what']} | {r.get('method', 'Pix2Pix')} | {r['chips']} × {r['tile_size']} px "
            f"| {r['iterations']} "
            f"| {r['train_seconds']:.0f} | {trio['psnr']} | {trio['ssim']} "
            f"| {trio['sam_deg'] if r['model']['sam_deg'] is not None else '–'} "
            f"| {gain:+.2f} | {r['tile_dependence_8bit']:.2f} | {_f(r.get('per_tile_psnr'), 2)} "
            f"| {_f(r.get('linear_psnr'), 2)} "
            f"| {_f(r.get('checker_8bit'), 2)} / {_f(r.get('checker_truth_8bit'), 2)} "
            f"| {_f(r.get('constant_input_std_8bit'), 2)} | {r.get('seed', 0)} "
            f"| {_settings(r)} |"
        )
    return "\n".join(lines)


def _settings(r: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(r.get("settings", {}).items())) or "defaults"


def summary_table(results: list[dict]) -> str:
    """One row per (task, method, settings) over its seeds: mean, and ± half the range."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if "skipped" not in r:
            groups.setdefault((r["task"], r["method"], _settings(r)), []).append(r)

    def stat(rows: list[dict], get, digits: int = 2) -> str:
        values = np.array([get(r) for r in rows], dtype=float)
        spread = (values.max() - values.min()) / 2
        return (f"{values.mean():.{digits}f} ± {spread:.{digits}f}" if len(values) > 1
                else f"{values[0]:.{digits}f}")

    lines = ["| task | method | settings | seeds | PSNR dB model | flat | model − flat dB "
             "| SSIM model | flat | model − flat SSIM | tile 128 vs 256 (8-bit) "
             "| checker (8-bit) | constant-input std (8-bit) |", "|" + "---|" * 13]
    for (_task, method, settings), rows in groups.items():
        lines.append(
            f"| {rows[0]['what']} | {method} | {settings} | {len(rows)} "
            f"| {stat(rows, lambda r: r['model']['psnr'])} "
            f"| {stat(rows, lambda r: r['flat']['psnr'])} "
            f"| {stat(rows, lambda r: r['model']['psnr'] - r['flat']['psnr'])} "
            f"| {stat(rows, lambda r: r['model']['ssim'], 3)} "
            f"| {stat(rows, lambda r: r['flat']['ssim'], 3)} "
            f"| {stat(rows, lambda r: r['model']['ssim'] - r['flat']['ssim'], 3)} "
            f"| {stat(rows, lambda r: r['tile_dependence_8bit'])} "
            f"| {stat(rows, lambda r: r.get('checker_8bit', float('nan')))} "
            f"| {stat(rows, lambda r: r.get('constant_input_std_8bit', float('nan')))} |")
    return "\n".join(lines)


def winners(results: list[dict]) -> str:
    """"Winner per task: ..." — the method with the highest model PSNR on each task (with its
    gain over the flat baseline), for tasks where more than one method ran."""
    by_task: dict[str, list[dict]] = {}
    for r in results:
        if "skipped" not in r:
            by_task.setdefault(r["task"], []).append(r)
    parts = []
    for task, rows in by_task.items():
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda r: r["model"]["psnr"])
        gain = best["model"]["psnr"] - best["flat"]["psnr"]
        parts.append(f"{task}: {best['method']} ({best['model']['psnr']:.2f} dB, "
                     f"{gain:+.2f} dB over flat)")
    return "Winner per task (highest PSNR): " + "; ".join(parts) + "." if parts else ""


def _parse_set(items: list[str]) -> dict:
    from geotranslate.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        if key not in fields or not text:
            raise SystemExit(f"bench_quality: error: --set {item!r}: expected FIELD=VALUE with "
                             "a TrainConfig field")
        python = {"True": True, "False": False, "None": None}  # Python's spellings too
        try:
            out[key] = python[text] if text in python else json.loads(text)
        except ValueError:
            out[key] = text
    try:  # a value of the wrong type or out of bounds: one line now, not after the export
        TrainConfig("Pix2Pix", **out).validate()
    except ValueError as e:
        raise SystemExit(f"bench_quality: error: --set: {e}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Expected time on 2 free CPU cores with bf16 at the default budget: 1-3 min "
               "per task and seed, about 25 min for the default five tasks at two seeds.",
    )
    parser.add_argument("--tasks", default=",".join(TARGET_TASKS),
                        help=f"comma-separated, from {', '.join(TASKS)}, or all "
                             f"(default: %(default)s, the five the quality targets are "
                             f"stated on)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                        help="training iterations per task (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (chips, runs, predictions)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig default, e.g. norm_method=percentile "
                             "(for comparisons; repeatable)")
    parser.add_argument("--seeds", default="0,1",
                        help="comma-separated training seeds; each task is trained once per "
                             "seed and summarised as mean ± half the range "
                             "(default: %(default)s)")
    parser.add_argument("--methods", default="Pix2Pix",
                        help="comma-separated dataset types (train --dataset-type), each trained "
                             "in the same budget; unpaired ones get chips with no pairing left: "
                             "A tiled from one half of each training crop, B from the other "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    from geotranslate.methods import METHODS

    try:
        names = task_names(args.tasks)
    except ValueError as e:
        parser.error(str(e))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad_methods = [m for m in methods if m not in METHODS]
    if bad_methods or not methods or args.budget < 1:
        parser.error(f"unknown method(s) {', '.join(bad_methods)}: choose from "
                     f"{', '.join(METHODS)}" if bad_methods else
                     "no method given" if not methods else "budget must be >= 1")
    overrides = _parse_set(args.set)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers, e.g. 0,1")
    if not seeds:
        parser.error("--seeds: give at least one seed")

    def log(message: str) -> None:
        print(f"[bench_quality] {message}", file=sys.stderr, flush=True)

    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_quality_"))
    try:
        for name in names:
            task = TASKS[name]
            if not task.available():
                log(f"{name}: data absent under {REAL}, skipped")
                results.append({"task": name, "skipped": "data absent"})
                continue
            if task.run is not None:  # a task of its own kind, with its own table
                for seed in seeds:
                    log(f"{name}: {task.what}, {args.budget} iterations, seed {seed}")
                    results.append(task.run(task, tmp / name / f"seed{seed}", args.budget,
                                            {"seed": seed, **overrides}, log))
                continue
            for method, seed in [(m, s) for m in methods for s in seeds]:
                log(f"{name}: {task.what}, {method}, {args.budget} iterations, seed {seed}")
                result = run_task(task, tmp / name / method / f"seed{seed}", args.budget,
                                  overrides, log, method, seed)
                log(f"{name}: {method} seed {seed}: PSNR {result['model']['psnr']:.2f} dB "
                    f"(flat {result['flat']['psnr']:.2f},"
                    f" untrained {result['untrained']['psnr']:.2f}); trained in "
                    f"{result['train_seconds']:.0f} s ({result['train_cpu_seconds']:.0f} CPU s), "
                    f"task {result['total_seconds']:.0f} s")
                results.append(result)
                if args.json:  # rows so far survive an interrupted run
                    args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    common = [r for r in results if "rows" not in r]
    tables = ([summary_table(common) + "\n\nEvery run:\n\n" + format_table(common)]
              if common else [])
    tables += [format_cloud_table(r) for r in results if "rows" in r]
    table = "\n\n".join(tables)
    if winners(results):
        table += "\n\n" + winners(results)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
