"""Benchmark ``predict_raster``: throughput, overhead over the bare generator, and peak memory.

For each raster size (4-band uint16, tiled, deflate, written window by window with
compressible content) and each precision, a fresh subprocess translates the raster with a
small U-Net on the CPU and reports:

* Mpx/s end to end;
* the ratio of end-to-end time to the time the generator alone takes on the same number of
  tiles already in memory (timed on a sample of batches and scaled up; target <= 1.15);
* peak RSS of the subprocess, from /proc/self/status VmHWM (target: the largest size within
  1.2x of the smallest).

    .venv/bin/python tools/bench_predict.py --sizes 2048 8192 --precisions fp32 bf16

``--ceiling`` measures the pipeline's ceiling instead: the same path with a generator that
costs nothing (it returns its input's first bands: same band counts, no arithmetic), in
Mpx/s and in Mpx/s per CPU thread used
(CPU seconds of all threads / wall seconds): what reading, normalization, blending, casting
and compression can feed a GPU at most.

    .venv/bin/python tools/bench_predict.py --ceiling --sizes 2048 16384 --precisions fp32
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import peak_rss_mib, run_child, write_test_raster

BANDS = 4
TILE = 256


class FreeGenerator(torch.nn.Module):
    """A generator that costs nothing: its input's first ``bands`` bands (the ceiling)."""

    def __init__(self, bands: int):
        super().__init__()
        self.in_channels = self.out_channels = self.bands = bands

    def forward(self, x):
        return x[:, : self.bands]


def make_model(run_dir: Path) -> None:
    import torch

    from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
    from geotranslate.models import build_generator
    from geotranslate.stats import Normalizer

    torch.manual_seed(0)
    kwargs = {"ngf": 8, "num_downs": 6, "norm": "instance"}
    g_ab = build_generator("unet", BANDS, BANDS, **kwargs)
    normalizer = Normalizer("minmax", (0.0,) * BANDS, (6000.0,) * BANDS)
    domain = DomainSpec(BANDS, "uint16", ["blue", "green", "red", "nir"], 0, normalizer)
    model = TranslationModel(
        "Pix2Pix", {"a2b": g_ab},
        {"a2b": {"arch": "unet", "in_channels": BANDS, "out_channels": BANDS, "kwargs": kwargs}},
        {"a": domain, "b": domain}, chip_size=TILE,
    )
    save_model(model, run_dir)


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from geotranslate.modelfile import load_model
    from geotranslate.predict import predict_raster

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.ceiling:
        model.generators["a2b"] = FreeGenerator(BANDS)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    summary = predict_raster(
        args.raster, model, args.out, precision=args.precision, batch_size=args.batch_size,
        device="cpu", overwrite=True, progress=False,
        # the ceiling keeps the usual quarter-tile overlap (a free generator has no context)
        **({"overlap": TILE // 4} if args.ceiling else {}),
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before  # all threads: compute + I/O
    peak_rss_mb = peak_rss_mib()
    if args.ceiling:
        threads_used = cpu_s / summary.seconds
        print(json.dumps({
            "size": summary.width, "precision": args.precision,
            "tiles": summary.tiles - summary.tiles_skipped,
            "seconds": round(summary.seconds, 2),
            "mpx_per_s": round(summary.megapixels_per_second, 2),
            "threads_used": round(threads_used, 2),
            "mpx_per_s_per_thread": round(summary.megapixels_per_second / threads_used, 2),
            "peak_rss_mb": round(peak_rss_mb, 1),
        }))
        return
    # the generator alone on real tiles already in memory, same batch size, precision and
    # CPU settings as predict_raster (flush-to-zero of denormals)
    import rasterio

    generator = model.generator("a2b")
    with rasterio.open(args.raster) as ds:
        data = ds.read(window=((0, TILE), (0, ds.width)))
    x = torch.from_numpy(model.source_domain("a2b").normalizer.to_model(data))
    cols = np.linspace(0, data.shape[2] - TILE, args.batch_size).astype(int)
    x = torch.stack([x[:, :, c : c + TILE] for c in cols])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    batches = max(1, min(args.sample_batches, summary.tiles // args.batch_size))
    torch.set_flush_denormal(True)
    with torch.inference_mode(), autocast:
        generator(x)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            generator(x)
        per_tile = (time.perf_counter() - start) / (batches * args.batch_size)
    computed = summary.tiles - summary.tiles_skipped
    print(json.dumps({
        "size": summary.width, "precision": args.precision, "tiles": computed,
        "seconds": round(summary.seconds, 2), "mpx_per_s": round(summary.megapixels_per_second, 3),
        "generator_only_s": round(per_tile * computed, 2),
        "ratio": round(summary.seconds / (per_tile * computed), 3),
        "cpu_s": round(cpu_s, 2),
        "input_wait_s": round(summary.input_wait_seconds, 2),
        "output_wait_s": round(summary.output_wait_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--sample-batches", type=int, default=25,
                        help="batches timed for the generator-only figure")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--ceiling", action="store_true",
                        help="a generator that costs nothing: the pipeline's ceiling")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raster", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        make_model(work / "run")
        results = []
        for size in args.sizes:
            raster = work / f"bench_{size}.tif"
            t0 = time.perf_counter()
            write_test_raster(raster, size)
            print(f"# generated {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)
            for precision in args.precisions:
                cmd = [sys.executable, __file__, "--child", "--raster", str(raster),
                       "--model", str(work / "run"), "--out", str(work / f"out_{size}.tif"),
                       "--precision", precision, "--batch-size", str(args.batch_size),
                       "--threads", str(args.threads),
                       "--sample-batches", str(args.sample_batches)]
                if args.ceiling:
                    cmd.append("--ceiling")
                result = run_child(__file__, *cmd[3:])
                results.append(result)
                print(json.dumps(result), flush=True)
            raster.unlink()
        if args.ceiling:
            print("\n| size | precision | time (s) | Mpx/s | CPU threads used "
                  "| Mpx/s per thread | peak RSS (MB) |")
            print("|---|---|---|---|---|---|---|")
            for r in results:
                print(f"| {r['size']}² | {r['precision']} | {r['seconds']} | {r['mpx_per_s']} "
                      f"| {r['threads_used']} | {r['mpx_per_s_per_thread']} "
                      f"| {r['peak_rss_mb']} |")
            return
        print("\n| size | precision | tiles | time (s) | Mpx/s | generator alone (s) | ratio "
              "| CPU (s, all threads) | waited for input (s) | waited for output (s) "
              "| peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['size']}² | {r['precision']} | {r['tiles']} | {r['seconds']} | "
                  f"{r['mpx_per_s']} | {r['generator_only_s']} | {r['ratio']} | "
                  f"{r['cpu_s']} | {r['input_wait_s']} | {r['output_wait_s']} | "
                  f"{r['peak_rss_mb']} |")
        for precision in args.precisions:
            rss = [r["peak_rss_mb"] for r in results if r["precision"] == precision]
            if len(rss) > 1:
                print(f"peak RSS {precision}: largest / smallest = {rss[-1] / rss[0]:.2f}")


if __name__ == "__main__":
    main()
