"""Benchmark of ``export-tiles``: chips/s, time vs one plain read, and peak memory vs raster size.

Usage: ``python tools/bench_export.py [--speed-size 8192] [--sizes 4096 16384] [--tile 256]
[--workers 1 2] [--repeat 2]``

At the speed size, export runs with each ``--workers`` count (default 1, 2 and all usable
cores), ``--repeat`` times each (the fastest counts): time / plain read, the speed-up over
one worker and per added worker, and peak RSS. The other sizes run with all cores.

Each measurement runs in its own subprocess (generation too), so memory figures are not
polluted by the parent or by earlier runs. The child reports its own peak RSS
(``VmHWM``, see ``benchlib.peak_rss_mib``); the parent's ``RUSAGE_CHILDREN`` figure is a running
maximum over all children waited for, so it cannot tell two sizes apart on its own.

Rasters are 4-band uint16, tiled 256 x 256 and deflate-compressed, written strip by strip
(bounded memory even for 16384 x 16384 = 2 GiB uncompressed) into a temp dir that is deleted
afterwards.

Beside wall seconds, each child reports its CPU seconds (all threads); ``export/read CPU``
compares them (target <= 3.0), and the per-chip CPU of export is split into where it goes
(each part timed on the thread that runs it): chip encoding and file (``_write_chip``),
statistics, the per-window bookkeeping (filters, names, index rows) and the end of the run
(index file, meta.json); what is left is reading and the loop itself.

    python tools/bench_export.py --speed-size 4096 --sizes 4096 --workers 1 --repeat 1
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import peak_rss_mib, run_child, write_test_raster


def plain_read(path: Path) -> None:
    import rasterio

    with rasterio.open(path) as ds:
        for _, window in ds.block_windows(1):
            ds.read(window=window)


#: (module, function) -> the part of an export's CPU it stands for
PARTS = {("geotranslate.chips.writer", "_write_chip"): "chip encoding and file",
         ("geotranslate.chips.export", "_handle_window"): "window bookkeeping and index rows",
         ("geotranslate.chips.export", "_finish_run"): "index file and meta.json",
         ("geotranslate.chips.export", "_passes_filters"): "filters"}


def _timed_parts() -> collections.Counter:
    """Wrap the functions of :data:`PARTS` (and the statistics' add and flush) so that their
    CPU seconds, on whichever thread runs them, add up in the returned counter."""
    import importlib

    from geotranslate.chips.band_stats import StatsBuffer

    seconds: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def wrap(owner, name: str, part: str) -> None:
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    seconds[part] += time.thread_time() - start

        setattr(owner, name, timed)

    for (module, name), part in PARTS.items():
        wrap(importlib.import_module(module), name, part)
    wrap(StatsBuffer, "add", "statistics")
    wrap(StatsBuffer, "flush", "statistics")
    return seconds


def export(path: Path, out: Path, tile: int, workers: int | None = None) -> int:
    from geotranslate.chips.export import export_tiles

    summary = export_tiles([path], out_dir=out, tile_size=tile, progress=False, workers=workers)
    return summary.chips_written


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(argv: list[str]) -> None:
    """Run one measurement in this process and print its figures as JSON."""
    task, path = argv[0], Path(argv[1])
    parts = _timed_parts() if task == "export" else None
    started, cpu = time.perf_counter(), cpu_seconds()
    result: dict = {}
    if task == "generate":
        write_test_raster(path, int(argv[2]))
    elif task == "read":
        plain_read(path)
    elif task == "export":
        workers = int(argv[4]) if len(argv) > 4 else None
        result["chips"] = export(path, Path(argv[2]), int(argv[3]), workers)
        result["parts_cpu_s"] = dict(parts)
    result["seconds"] = time.perf_counter() - started
    result["cpu_s"] = cpu_seconds() - cpu
    result["peak_rss_mb"] = peak_rss_mib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed-size", type=int, default=8192, help="raster for chips/s")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[4096, 16384],
        help="rasters whose peak memory is compared",
    )
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts at the speed size [default: 1, 2, all cores]")
    parser.add_argument("--repeat", type=int, default=2, help="runs per worker count")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    from geotranslate.chips.export import default_workers

    cores = default_workers()
    worker_counts = args.workers or sorted({1, 2, cores})
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    rows = []
    sweep = []
    try:
        for size in sorted({args.speed_size, *args.sizes}):
            raster = tmp / f"r{size}.tif"
            gen = run_child(__file__, "generate", raster, size)
            read_a = run_child(__file__, "read", raster)
            exp = run_child(__file__, "export", raster, tmp / f"chips{size}", args.tile)
            read_b = run_child(__file__, "read", raster)
            read_s = min(read_a["seconds"], read_b["seconds"])
            read_cpu = min(read_a["cpu_s"], read_b["cpu_s"])
            if size == args.speed_size:
                for workers in worker_counts:
                    runs = []
                    for _ in range(args.repeat):
                        shutil.rmtree(tmp / "sweep", ignore_errors=True)
                        runs.append(run_child(__file__, "export", raster, tmp / "sweep",
                                              args.tile, workers))
                    best = min(runs, key=lambda r: r["seconds"])
                    sweep.append({"workers": workers, "export_s": best["seconds"],
                                  "all_s": [r["seconds"] for r in runs], "ratio":
                                  best["seconds"] / read_s, "rss_mb": best["peak_rss_mb"]})
                shutil.rmtree(tmp / "sweep", ignore_errors=True)
            rows.append(
                {
                    "size": size,
                    "generate_s": gen["seconds"],
                    "read_s": read_s,
                    "export_s": exp["seconds"],
                    "chips": exp["chips"],
                    "chips_per_s": exp["chips"] / exp["seconds"],
                    "ratio": exp["seconds"] / read_s,
                    "read_cpu_s": read_cpu,
                    "export_cpu_s": exp["cpu_s"],
                    "cpu_ratio": exp["cpu_s"] / read_cpu,
                    "parts_cpu_s": exp["parts_cpu_s"],
                    "export_rss_mb": exp["peak_rss_mb"],
                    "read_rss_mb": max(read_a["peak_rss_mb"], read_b["peak_rss_mb"]),
                }
            )
            raster.unlink()
            shutil.rmtree(tmp / f"chips{size}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{'size':>7} {'chips':>6} {'read s':>7} {'export s':>9} {'chips/s':>8} "
        f"{'export/read':>11} {'read CPU-s':>10} {'export CPU-s':>12} {'CPU ratio':>9} "
        f"{'CPU ms/chip':>11} {'peak RSS MB':>11}"
    )
    for r in rows:
        print(
            f"{r['size']:>7} {r['chips']:>6} {r['read_s']:>7.2f} {r['export_s']:>9.2f} "
            f"{r['chips_per_s']:>8.1f} {r['ratio']:>11.2f} {r['read_cpu_s']:>10.2f} "
            f"{r['export_cpu_s']:>12.2f} {r['cpu_ratio']:>9.2f} "
            f"{1000 * r['export_cpu_s'] / r['chips']:>11.2f} {r['export_rss_mb']:>11.0f}"
        )
    for r in rows:  # where an export's CPU goes, per chip
        parts = dict(r["parts_cpu_s"])
        parts["reading and the rest"] = r["export_cpu_s"] - sum(parts.values())
        parts["plain read (for comparison)"] = r["read_cpu_s"]
        print(f"{r['size']}²: CPU ms per chip: " + ", ".join(
            f"{name} {1000 * value / r['chips']:.2f}" for name, value in parts.items()))
    by_size = {r["size"]: r for r in rows}
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        ratio = by_size[large]["export_rss_mb"] / by_size[small]["export_rss_mb"]
        print(f"peak RSS {large}² / {small}²: {ratio:.2f}x (target <= 1.2x, < 1024 MB)")
    print(
        f"export / plain read at {args.speed_size}² ({cores} workers): "
        f"{by_size[args.speed_size]['ratio']:.2f} (target <= 2.0); in CPU seconds "
        f"{by_size[args.speed_size]['cpu_ratio']:.2f} (target <= 3.0)"
    )
    if sweep:
        one = next((s for s in sweep if s["workers"] == 1), sweep[0])
        print(f"\nat {args.speed_size}² (plain read {by_size[args.speed_size]['read_s']:.2f} s; "
              f"{cores} usable cores; fastest of {args.repeat}):")
        print(f"{'workers':>7} {'export s':>9} {'runs s':>16} {'export/read':>11} "
              f"{'speed-up':>8} {'per added':>9} {'peak RSS MB':>11}")
        for s in sweep:
            speedup = one["export_s"] / s["export_s"]
            added = (speedup - 1) / (s["workers"] - 1) if s["workers"] > 1 else float("nan")
            runs = ", ".join(f"{x:.2f}" for x in s["all_s"])
            print(f"{s['workers']:>7} {s['export_s']:>9.2f} {runs:>16} {s['ratio']:>11.2f} "
                  f"{speedup:>8.2f} {added:>9.2f} {s['rss_mb']:>11.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
