"""Benchmark ``predict_raster``: throughput, overhead over the bare generator, and peak memory.

For each raster size (4-band uint16, tiled, deflate, written window by window with
compressible content) and each precision, a fresh subprocess translates the raster with a
small U-Net on the CPU and reports:

* Mpx/s end to end;
* the ratio of end-to-end time to the time the generator alone takes on the same number of
  tiles already in memory (timed on a sample of batches and scaled up; target <= 1.10), in
  wall seconds and in CPU seconds (all threads, against the generator's; use ``--threads 1``
  on a loaded machine, where wall time says little);
* peak RSS of the subprocess, from /proc/self/status VmHWM (target: the largest size within
  1.2x of the smallest).

    .venv/bin/python tools/bench_predict.py --sizes 2048 8192 --precisions fp32 bf16

The generator alone is the one the pipeline runs: calibrated on the scene sample (scene
statistics), in the run's precision and layout; the end-to-end time includes the calibration.

``--ceiling`` measures the pipeline's ceiling instead: the same path with a generator that
costs nothing (it returns its input's first bands: same band counts, no arithmetic), in
Mpx/s and in Mpx/s per CPU thread used
(CPU seconds of all threads / wall seconds): what reading, normalization, blending, casting
and compression can feed a GPU at most. Beside it, in the same process, the machine's limits
measured the same way: a plain read of the raster (strips of a tile's height), the
normalization of what was read, and a plain write of it with the output's creation options
(``--compress``), each in CPU seconds; ``vs limit`` = (read + normalize + write) / the
pipeline's CPU seconds (target >= 0.7), and the CPU seconds of each pipeline stage.

    .venv/bin/python tools/bench_predict.py --ceiling --sizes 2048 8192 --precisions fp32
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


#: --arch: a small U-Net, or the default CycleGAN generator (ResNet-9, ngf 64)
ARCHS = {"unet-small": ("unet", {"ngf": 8, "num_downs": 6, "norm": "instance"}),
         "resnet9": ("resnet", {"ngf": 64, "n_blocks": 9, "norm": "instance"})}


def make_model(run_dir: Path, arch: str = "unet-small") -> None:
    import torch

    from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
    from geotranslate.models import build_generator
    from geotranslate.stats import Normalizer

    torch.manual_seed(0)
    name, kwargs = ARCHS[arch]
    g_ab = build_generator(name, BANDS, BANDS, **kwargs)
    normalizer = Normalizer("minmax", (0.0,) * BANDS, (6000.0,) * BANDS)
    domain = DomainSpec(BANDS, "uint16", ["blue", "green", "red", "nir"], 0, normalizer)
    model = TranslationModel(
        "Pix2Pix", {"a2b": g_ab},
        {"a2b": {"arch": name, "in_channels": BANDS, "out_channels": BANDS, "kwargs": kwargs}},
        {"a": domain, "b": domain}, chip_size=TILE,
    )
    save_model(model, run_dir)


def machine_limits(raster: Path, model, out: Path, compress: str) -> dict[str, float]:
    """CPU seconds of a plain read (strips a tile high, full width), of normalizing what was
    read, and of a plain write of it with the output's creation options: the work the
    pipeline cannot avoid, each done once, in this process."""
    import rasterio
    from rasterio.windows import Window

    from geotranslate.predict.output import output_profile

    source = model.source_domain("a2b")
    target = model.target_domain("a2b")
    seconds = {"read": 0.0, "normalize": 0.0, "write": 0.0}
    with rasterio.open(raster) as ds:
        profile = output_profile(ds, Window(0, 0, ds.width, ds.height), target, 0.0, False,
                                 compress)
        with rasterio.open(out, "w", **profile) as dst:
            for row in range(0, ds.height, TILE):
                window = Window(0, row, ds.width, min(TILE, ds.height - row))
                start = time.process_time()
                data = ds.read(window=window)
                seconds["read"] += time.process_time() - start
                start = time.process_time()
                source.normalizer.to_model(data, data[0] != 0)
                seconds["normalize"] += time.process_time() - start
                start = time.process_time()
                dst.write(data, window=window)
                seconds["write"] += time.process_time() - start
            start = time.process_time()
        seconds["write"] += time.process_time() - start  # the close: last blocks, directory
    out.unlink()
    return {k: round(v, 2) for k, v in seconds.items()}


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from geotranslate.modelfile import load_model
    from geotranslate.predict import predict_raster

    torch.set_num_threads(args.threads)
    if args.checkpoints == ["off"]:  # what the writes cost without resume's close and reopen
        from geotranslate.predict.resume import Checkpoint

        Checkpoint.due = lambda self, row, height, width: False
    model = load_model(args.model)
    if args.ceiling:
        model.generators["a2b"] = FreeGenerator(BANDS)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    summary = predict_raster(
        args.raster, model, args.out, precision=args.precision, batch_size=args.batch_size,
        device="cpu", overwrite=True, progress=False, compress=args.compress,
        # the ceiling keeps the usual quarter-tile overlap (a free generator has no context)
        **({"overlap": TILE // 4} if args.ceiling else {}),
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before  # all threads: compute + I/O
    peak_rss_mb = peak_rss_mib()
    stages = {k: round(v, 2) for k, v in summary.stage_cpu_seconds.items()}
    if args.ceiling:
        threads_used = cpu_s / summary.seconds
        limits = machine_limits(args.raster, model, args.out.with_name("plain.tif"),
                                args.compress)
        print(json.dumps({
            "size": summary.width, "precision": summary.precision,
            "checkpoints": args.checkpoints[0], "compress": args.compress,
            "tiles": summary.tiles - summary.tiles_skipped,
            "seconds": round(summary.seconds, 2),
            "mpx_per_s": round(summary.megapixels_per_second, 2),
            "threads_used": round(threads_used, 2),
            "mpx_per_s_per_thread": round(summary.megapixels_per_second / threads_used, 2),
            "cpu_s": round(cpu_s, 2), "stages": stages, "limits": limits,
            "vs_limit": round(sum(limits.values()) / cpu_s, 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
        }))
        return
    # the generator alone on real tiles already in memory, as the pipeline runs it: calibrated
    # on the same scene sample, same batch size, precision, layout and CPU settings
    # (flush-to-zero of denormals)
    import rasterio
    from rasterio.windows import Window

    from geotranslate.device import autocast as device_autocast
    from geotranslate.device import default_channels_last
    from geotranslate.models import keep_channels_last
    from geotranslate.predict.scene import scene_generator, scene_sample

    cpu = torch.device("cpu")
    autocast = lambda: device_autocast(cpu, summary.precision)  # noqa: E731
    source = model.source_domain("a2b")
    with rasterio.open(args.raster) as ds:
        region = Window(0, 0, ds.width, ds.height)
        data = ds.read(window=((0, TILE), (0, ds.width)))
    channels_last = default_channels_last(cpu, summary.precision)
    generator = model.generator("a2b").eval()
    if channels_last:
        generator = keep_channels_last(generator).to(memory_format=torch.channels_last)
    generator, _ = scene_generator(
        generator, "scene",
        lambda: scene_sample(args.raster, [1, 2, 3, 4], source, region, TILE), cpu, autocast,
        channels_last=channels_last)
    x = torch.from_numpy(source.normalizer.to_model(data))
    cols = np.linspace(0, data.shape[2] - TILE, args.batch_size).astype(int)
    x = torch.stack([x[:, :, c : c + TILE] for c in cols])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batches = max(1, min(args.sample_batches, summary.tiles // args.batch_size))
    torch.set_flush_denormal(True)
    with torch.inference_mode(), autocast():
        generator(x)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            generator(x)
        per_tile = (time.perf_counter() - start) / (batches * args.batch_size)
        per_tile_cpu = (time.process_time() - cpu) / (batches * args.batch_size)
    computed = summary.tiles - summary.tiles_skipped
    print(json.dumps({
        "size": summary.width, "precision": summary.precision, "tiles": computed,
        "seconds": round(summary.seconds, 2), "mpx_per_s": round(summary.megapixels_per_second, 3),
        "generator_only_s": round(per_tile * computed, 2),
        "ratio": round(summary.seconds / (per_tile * computed), 3),
        "cpu_s": round(cpu_s, 2),
        "generator_only_cpu_s": round(per_tile_cpu * computed, 2),
        "ratio_cpu": round(cpu_s / (per_tile_cpu * computed), 3),
        "input_wait_s": round(summary.input_wait_seconds, 2),
        "output_wait_s": round(summary.output_wait_seconds, 2),
        "stages": stages,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--precisions", nargs="+", default=["auto"],
                        help="auto (the default's choice), fp32, bf16")
    parser.add_argument("--compress", default="zstd", help="the output's --compress")
    parser.add_argument("--checkpoints", nargs="+", default=["on"], choices=["on", "off"],
                        metavar="on|off",
                        help="off: no resume checkpoint closes and reopens the output "
                        "(measures what they cost; a killed run could not be resumed)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="unet-small",
                        help="the generator (resnet9: the default CycleGAN network)")
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
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        make_model(work / "run", args.arch)
        results = []
        for size in args.sizes:
            raster = work / f"bench_{size}.tif"
            t0 = time.perf_counter()
            write_test_raster(raster, size)
            print(f"# generated {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)
            for precision, checkpoints in [(p, c) for p in args.precisions
                                           for c in args.checkpoints]:
                cmd = [sys.executable, __file__, "--child", "--raster", str(raster),
                       "--model", str(work / "run"), "--out", str(work / f"out_{size}.tif"),
                       "--precision", precision, "--batch-size", str(args.batch_size),
                       "--threads", str(args.threads), "--compress", args.compress,
                       "--checkpoints", checkpoints,
                       "--sample-batches", str(args.sample_batches)]
                if args.ceiling:
                    cmd.append("--ceiling")
                result = run_child(__file__, *cmd[3:])
                results.append(result)
                print(json.dumps(result), flush=True)
            raster.unlink()
        if args.ceiling:
            print("\n| size | compress | checkpoints | time (s) | Mpx/s | CPU (s, all threads) "
                  "| stages: read / normalize / blend / cast / write (CPU s) "
                  "| limits: read / normalize / write (CPU s) | vs limit | peak RSS (MB) |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in results:
                st, lim = r["stages"], r["limits"]
                print(f"| {r['size']}² | {args.compress} | {r['checkpoints']} | {r['seconds']} "
                      f"| {r['mpx_per_s']} "
                      f"| {r['cpu_s']} | {st['read']} / {st['normalize']} / {st['blend']} / "
                      f"{st['cast']} / {st['write']} | {lim['read']} / {lim['normalize']} / "
                      f"{lim['write']} | {r['vs_limit']} | {r['peak_rss_mb']} |")
            return
        print("\n| size | precision | tiles | time (s) | Mpx/s | generator alone (s) | ratio "
              "| CPU (s, all threads) | generator alone (CPU s) | ratio (CPU) "
              "| waited for input (s) | waited for output (s) | peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['size']}² | {r['precision']} | {r['tiles']} | {r['seconds']} | "
                  f"{r['mpx_per_s']} | {r['generator_only_s']} | {r['ratio']} | "
                  f"{r['cpu_s']} | {r['generator_only_cpu_s']} | {r['ratio_cpu']} | "
                  f"{r['input_wait_s']} | {r['output_wait_s']} | {r['peak_rss_mb']} |")
        for precision in args.precisions:
            rss = [r["peak_rss_mb"] for r in results if r["precision"] == precision]
            if len(rss) > 1:
                print(f"peak RSS {precision}: largest / smallest = {rss[-1] / rss[0]:.2f}")


if __name__ == "__main__":
    main()
