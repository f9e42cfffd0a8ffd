"""Prediction in fp32 and in bf16 with one trained model: PSNR / SSIM against the truth.

Takes a task directory that ``tools/bench_quality.py --keep`` left (``run/`` the trained
model, ``data/test/*_a.tif`` and ``*_b.tif`` the held-out input and truth,
``chips_paired/meta.json`` the training target's range), predicts the held-out input at
tile 256 in each precision on the CPU, and scores both the way bench_quality does (the
training target's min-max as data range, over the pixels valid in both predictions and the
truth). This is the check behind ``--precision auto`` choosing bf16 on a CPU with native
bf16 (within 0.1 dB of fp32).

    python tools/bench_quality.py --tasks hillshade --budget 400 --keep
    python tools/bench_precision.py /tmp/bench_quality_XXXX/hillshade/Pix2Pix
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_quality import _read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task_dir", type=Path, help="a task directory bench_quality --keep left")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()

    from geotranslate.chips.meta import read_chip_meta
    from geotranslate.metrics import compute_metrics
    from geotranslate.predict import predict_raster

    work = args.task_dir
    test_a = next((work / "data" / "test").glob("*_a.tif"))
    test_b = next((work / "data" / "test").glob("*_b.tif"))
    meta = read_chip_meta(work / "chips_paired" / "meta.json")
    data_range = np.array([max(s.max - s.min, 1e-12) for s in meta.domains["b"].band_stats])
    truth, valid = _read(test_b)
    predictions = {}
    for precision in args.precisions:
        out = work / f"precision_{precision}.tif"
        start = time.process_time()
        predict_raster(test_a, work / "run", out, tile_size=256, device="cpu", progress=False,
                       precision=precision, overwrite=True)
        cpu = time.process_time() - start
        predictions[precision] = (*_read(out), cpu)
        valid &= predictions[precision][1]
    print("| precision | PSNR (dB) | SSIM | CPU (s) |\n|---|---|---|---|")
    for precision, (pred, _, cpu) in predictions.items():
        m = compute_metrics(pred, truth, valid, data_range)["overall"]
        print(f"| {precision} | {m['psnr']:.3f} | {m['ssim']:.4f} | {cpu:.1f} |")
    if {"fp32", "bf16"} <= set(predictions):
        diff = np.abs(predictions["fp32"][0] - predictions["bf16"][0])[:, valid]
        print(f"|bf16 - fp32| in the output's units: mean {diff.mean():.3f}, max {diff.max():.1f}")


if __name__ == "__main__":
    main()
