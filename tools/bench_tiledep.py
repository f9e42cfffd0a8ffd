"""Benchmark tile dependence: mean |tile 128 - tile 256| of predict-raster, and its quality.

On a real, deterministic mapping (the Mt Hood LANDFIRE DEM -> its hillshade, sun azimuth
315 deg, altitude 45 deg; a synthetic terrain when ../shared/data/real is absent) it trains a
Pix2Pix (U-Net) and a CycleGAN (ResNet) model for a fixed small budget on the northern 70 %
of the scene, then translates the held-out southern 30 % with ``--tile-size`` 128 and 256, with
per-tile statistics (``--norm-stats tile``, the old behaviour) and scene statistics (the
default), and reports for each:

* the tile dependence: mean |tile 128 - tile 256| in grey levels of the 8-bit output;
* the error against the true hillshade (MAE, PSNR in 8-bit units, tile 256), next to a flat
  image of the mean target;
* the time of the statistics pass (sample + calibration) against a whole prediction of a
  ``--time-size`` square raster (default 4096; a smaller size is scaled up by area).

    .venv/bin/python tools/bench_tiledep.py --steps 300 --norms instance batch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEM = ROOT.parent / "shared" / "data" / "real" / "gdalraster" / "lf_elev_220_mt_hood_utm.tif"


def hillshade(dem: np.ndarray, pixel: float, azimuth: float = 315.0, altitude: float = 45.0):
    """Standard (Horn-free, central-difference) hillshade in 0..255, as gdaldem computes it."""
    dy, dx = np.gradient(dem.astype(np.float64), pixel)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(-dx, dy)
    az, alt = math.radians(360.0 - azimuth + 90.0), math.radians(altitude)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(255.0 * shade, 1, 255).astype(np.uint8)


def scene(tmp: Path) -> tuple[Path, Path, Path, Path, str]:
    """(train A, train B, test A, test B) GeoTIFFs and the data's name."""
    import rasterio

    sys.path.insert(0, str(ROOT / "tests"))
    from builders import write_raster

    if DEM.exists():
        with rasterio.open(DEM) as ds:
            dem = ds.read(1).astype(np.float32)
            nodata, pixel, crs, transform = ds.nodata, ds.res[0], ds.crs, ds.transform
        dem[dem == nodata] = np.nan
        fill = np.nanmin(dem)
        dem = np.where(np.isnan(dem), fill, dem)
        name = "Mt Hood DEM -> hillshade"
    else:
        rng = np.random.default_rng(0)
        spectrum = np.fft.fft2(rng.normal(size=(800, 1000)))
        fy, fx = np.meshgrid(np.fft.fftfreq(800), np.fft.fftfreq(1000), indexing="ij")
        dem = np.real(np.fft.ifft2(spectrum / (1e-3 + np.hypot(fx, fy)) ** 1.6))
        dem = ((dem - dem.min()) / np.ptp(dem) * 2500 + 500).astype(np.float32)
        pixel, crs, transform = 30.0, "EPSG:32610", None
        name = "synthetic terrain -> hillshade"
    shade = hillshade(dem, pixel)
    cut = int(dem.shape[0] * 0.7)
    paths = []
    for part, rows in (("train", slice(0, cut)), ("test", slice(cut, None))):
        for key, arr in (("a", dem), ("b", shade)):
            paths.append(write_raster(tmp / f"{part}_{key}.tif", arr[rows], crs=crs,
                                      transform=transform))
    return (*paths, name)


def train_model(tmp: Path, chips: Path, model_type: str, norm: str, steps: int) -> Path:
    """Train ``model_type`` ("Pix2Pix", "CycleGAN" or e.g. "Pix2Pix:resnet") with ``norm``."""
    from geotranslate.train import TrainConfig, train

    dataset_type, _, generator = model_type.partition(":")
    config = TrainConfig(
        dataset_type=dataset_type, generator=generator or None, data_dir=str(chips),
        out=str(tmp / f"{model_type.replace(':', '-')}-{norm}"),
        ngf=16, ndf=16, net_norm=norm, batch_size=8, max_steps=steps, augment=False,
        norm_method="minmax", device="cpu", preview=False, progress=False, tensorboard=False,
    )
    return train(config)


def translate(src: Path, run: Path, out: Path, tile: int, norm_stats: str) -> np.ndarray:
    import rasterio

    from geotranslate.predict import predict_raster

    predict_raster(src, run, out, tile_size=tile, norm_stats=norm_stats, overwrite=True,
                   progress=False)
    with rasterio.open(out) as ds:
        return ds.read(1).astype(np.float64)


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((pred - truth) ** 2)))


def time_stats_pass(run: Path, size: int, time_size: int) -> dict:
    """Seconds of the statistics pass and of a whole prediction of a ``size`` px raster."""
    import torch
    from rasterio.windows import Window

    sys.path.insert(0, str(ROOT / "tests"))
    from builders import write_raster

    from geotranslate.modelfile import load_model
    from geotranslate.models.norms import scene_normalized
    from geotranslate.predict import predict_raster
    from geotranslate.predict.scene import scene_sample

    model = load_model(run)
    rng = np.random.default_rng(1)
    data = np.cumsum(rng.normal(size=(size, size)), axis=1).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_raster(Path(tmp) / "big.tif", data, blocksize=256)
        started = time.perf_counter()
        sample = scene_sample(src, [1], model.domains["a"], Window(0, 0, size, size),
                              model.chip_size)
        scene_normalized(model.generator("a2b"), torch.from_numpy(sample))
        stats_seconds = time.perf_counter() - started
        started = time.perf_counter()
        predict_raster(src, model, Path(tmp) / "out.tif", tile_size=256, progress=False)
        whole = time.perf_counter() - started
    scale = (time_size / size) ** 2
    return {"raster": size, "stats_pass_s": round(stats_seconds, 2),
            "predict_s": round(whole, 2), f"predict_s_at_{time_size}": round(whole * scale, 1),
            "stats_share_at_size": round(stats_seconds / (whole * scale), 4),
            "scaled_from": size if scale != 1 else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training iterations per model")
    parser.add_argument("--norms", nargs="+", default=["instance"],
                        help="network normalizations to train (instance, batch, none)")
    parser.add_argument("--types", nargs="+", default=["Pix2Pix", "CycleGAN"],
                        help="model types, optionally with a generator: Pix2Pix:resnet")
    parser.add_argument("--chip", type=int, default=64, help="training chip size")
    parser.add_argument("--time-raster", type=int, default=1024,
                        help="raster side actually predicted for the timing")
    parser.add_argument("--time-size", type=int, default=4096,
                        help="raster side the timing is reported for (scaled by area)")
    parser.add_argument("--work", type=Path,
                        help="keep data and trained runs here and reuse them (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args(argv)
    import torch

    from geotranslate.chips.export import export_tiles

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.work or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        train_a, train_b, test_a, test_b, name = scene(tmp)
        print(f"data: {name}", flush=True)
        if not (tmp / "chips" / "meta.json").exists():
            export_tiles([train_a], [train_b], tmp / "chips", tile_size=args.chip,
                         val_fraction=0.1, progress=False)
        import rasterio

        with rasterio.open(test_b) as ds:
            truth = ds.read(1).astype(np.float64)
        flat = psnr(np.full_like(truth, truth.mean()), truth)
        timing = None
        for dataset_type in args.types:
            for norm in args.norms:
                started = time.perf_counter()
                run = tmp / f"{dataset_type.replace(':', '-')}-{norm}"
                if not (run / "model.json").exists():
                    run = train_model(tmp, tmp / "chips", dataset_type, norm, args.steps)
                train_s = time.perf_counter() - started
                row = {"model": dataset_type, "net_norm": norm, "train_s": round(train_s, 1),
                       "flat_psnr": round(flat, 2)}
                for mode in ("tile", "scene"):
                    out = {t: translate(test_a, run, tmp / f"o{t}.tif", t, mode)
                           for t in (128, 256)}
                    row[f"{mode}:tile_dependence"] = round(float(np.abs(out[128] - out[256])
                                                                 .mean()), 3)
                    row[f"{mode}:mae"] = round(float(np.abs(out[256] - truth).mean()), 2)
                    row[f"{mode}:psnr"] = round(psnr(out[256], truth), 2)
                print(json.dumps(row), flush=True)
                if timing is None and norm == "instance":
                    timing = time_stats_pass(run, args.time_raster, args.time_size)
                    timing["model"] = dataset_type
                    print(json.dumps(timing), flush=True)


if __name__ == "__main__":
    main()
