"""Benchmark ``geotranslate train``: iterations/s and peak memory against the bare network step.

For CycleGAN, CUT, FastCUT (ResNet generators), Pix2Pix (U-Net) and Pix2PixHD (ResNet,
multi-scale discriminator) with the default networks at 256 px, at each batch size and
precision, it measures

* trainer: the full training loop (data loader, loss logging to metrics.csv, progress bar),
  timed between the starts of successive iterations, and
* in-loop bare: the time spent inside the update itself (forward, backward and optimizer steps
  of the two or four networks on the batch already in memory), measured on the same
  iterations, so machine load affects both alike;
  ``ratio`` = trainer time / bare time (target <= 1.15);
* with ``--bare-process``: the bare update again, on one in-memory batch in a separate
  process, with its own peak memory.

Each configuration runs in its own subprocess, so peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on GPU) is per configuration. bf16 runs use channels_last.
On 2 CPU cores the default networks at 256 px take 10-40 s per iteration: keep ``--iters``
small there (the defaults run the 8 configurations in about 10-15 minutes; ``--batch-sizes 1``
halves that).

    python tools/bench_train.py                       # all 8 configurations, few iterations
    python tools/bench_train.py --models pix2pix --batch-sizes 1 --iters 3
    python tools/bench_train.py --models cyclegan,cut,fastcut,pix2pix,pix2pixhd --batch-sizes 1

``--loader`` measures the data loader's ceiling instead: chips/s of one worker (one process
calling ``ChipDataset.__getitem__``: read or take from the cache, normalize, crop, flip/rotate,
to tensors) for 256-px paired chips, 4-band uint16 and 13-band uint16, with and without the
in-memory cache. A DataLoader worker does exactly this, so N workers feed about N times this.

    python tools/bench_train.py --loader
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import peak_rss_mib

#: --models names -> dataset types
MODELS = {"cyclegan": "CycleGAN", "pix2pix": "Pix2Pix", "pix2pixhd": "Pix2PixHD", "cut": "CUT",
          "fastcut": "FastCUT"}


def make_chips(root: Path, n: int, size: int, bands_a: int = 2, bands_b: int = 3,
               dtype: str = "float32") -> Path:
    """n paired chips (float32 noise, or uint16 0..6000) of size px, export-tiles layout."""
    import rasterio
    from rasterio.transform import from_origin

    from geotranslate.stats import StatsAccumulator

    rng = np.random.default_rng(0)
    acc = {"a": StatsAccumulator(bands_a), "b": StatsAccumulator(bands_b)}
    for d, bands in (("a", bands_a), ("b", bands_b)):
        (root / f"train_{d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if dtype == "float32":
                data = rng.normal(size=(bands, size, size)).astype(np.float32)
            else:
                data = rng.integers(0, 6000, (bands, size, size)).astype(dtype)
            acc[d].add(data, np.ones((size, size), bool))
            with rasterio.open(root / f"train_{d}" / f"chip_{i}_0.tif", "w", driver="GTiff",
                               width=size, height=size, count=bands, dtype=dtype,
                               crs="EPSG:32633", transform=from_origin(0, 0, 10, 10)) as dst:
                dst.write(data)
    meta = {"format": "geotranslate-chips", "format_version": 1, "dataset_type": "paired",
            "tile_size": size, "stride": size,
            "domains": {d: {"band_count": b, "dtype": dtype, "nodata": None, "sources": [],
                            "bands": list(range(1, b + 1)),
                            "band_descriptions": [None] * b, "stats": acc[d].to_dict()}
                        for d, b in (("a", bands_a), ("b", bands_b))}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


def run_one(spec: dict) -> dict:
    """One measurement in this process: spec = model, batch, precision, mode, sizes."""
    import torch

    from geotranslate.train import TrainConfig, train
    from geotranslate.train import trainer as trainer_module

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    from geotranslate.methods import METHODS

    dataset_type = MODELS[spec["model"]]
    steps = spec["warmup"] + spec["iters"] + 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        chips = make_chips(tmp / "chips", spec["batch"] * steps, spec["size"],
                           spec.get("bands_a", 2), spec.get("bands_b", 3))
        channels_last = spec["precision"] == "bf16"
        config = TrainConfig(dataset_type, data_dir=str(chips), out=str(tmp / "run"), epochs=1,
                             epochs_decay=0, batch_size=spec["batch"], max_steps=steps,
                             precision=spec["precision"], channels_last=channels_last,
                             device=spec["device"], preview=False, progress=True, workers=0,
                             cache=True, seed=0)
        starts: list[float] = []
        step_seconds: list[float] = []

        def sync() -> None:
            if spec["device"] == "cuda" or (spec["device"] == "auto" and torch.cuda.is_available()):
                torch.cuda.synchronize()

        if spec["mode"] == "trainer":
            real_step = trainer_module.Trainer.step

            def timed_step(self, batch):
                sync()
                starts.append(time.perf_counter())
                losses = real_step(self, batch)
                float(sum(losses.values()))  # the loop reads the losses right after, too
                sync()
                step_seconds.append(time.perf_counter() - starts[-1])
                return losses

            trainer_module.Trainer.step = timed_step
            train(config)  # intervals between step starts: the last step's is not measured
        else:
            from geotranslate.data import ChipDataset, read_meta
            from geotranslate.device import resolve_device, resolve_precision
            from geotranslate.train.distributed import DistContext

            meta = read_meta(chips)
            dataset = ChipDataset(chips, paired=METHODS[dataset_type].paired, cache=True,
                                  meta=meta)
            device = resolve_device(spec["device"])
            precision = resolve_precision(spec["precision"], device)
            trainer = trainer_module.Trainer(config, meta, dataset.chip_size, device, precision,
                                             DistContext(), log=lambda message: None)
            items = [dataset[i] for i in range(spec["batch"])]
            batch = {k: torch.stack([it[k] for it in items]) for k in
                     ("a", "b", "valid_a", "valid_b")}
            batch = trainer.method.to_device(batch)  # already in memory (and on the device)
            for _ in range(steps):
                sync()
                starts.append(time.perf_counter())
                float(sum(trainer.step(batch).values()))
                sync()
                step_seconds.append(time.perf_counter() - starts[-1])
            starts.append(time.perf_counter())
    finally:
        # chips, checkpoints and model: about 0.9 GB a measurement at 256 px, batch 4
        shutil.rmtree(tmp, ignore_errors=True)
    intervals = np.diff(starts)[spec["warmup"]:]
    inside = step_seconds[spec["warmup"]:len(intervals) + spec["warmup"]]
    return {**spec, "s_per_it": float(statistics.median(intervals)),
            "it_per_s": float(1 / statistics.median(intervals)),
            "step_s": float(statistics.median(inside)),
            "overhead_ratio": float(np.sum(intervals) / np.sum(inside)),
            "peak_mb": round(peak_memory_mb(spec["device"]), 1)}


def loader_ceiling(chips_n: int, seconds: float) -> None:
    """Chips/s of one worker, cached and uncached, 4- and 13-band uint16 256-px pairs."""
    from geotranslate.data import ChipDataset

    print("| bands (A and B) | cache | chips/s (wall) | chips per CPU second (one worker's "
          "ceiling on an idle core) |\n|---|---|---|---|")
    for bands in (4, 13):
        with tempfile.TemporaryDirectory() as tmp:
            chips = make_chips(Path(tmp), chips_n, 256, bands, bands, dtype="uint16")
            for cache in (True, False):
                dataset = ChipDataset(chips, paired=True, cache=cache, crop_size=256)
                n, start, cpu = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - start < seconds:
                    dataset[(0, n % len(dataset))]
                    n += 1
                rate = n / (time.perf_counter() - start)
                per_cpu = n / (time.process_time() - cpu)
                print(f"| {bands} | {'cached' if cache else 'uncached'} | {rate:.0f} | "
                      f"{per_cpu:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loader", action="store_true",
                        help="the data loader's ceiling (chips/s per worker), no training")
    parser.add_argument("--loader-seconds", type=float, default=3.0)
    parser.add_argument("--models", default="cyclegan,pix2pix")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="bf16 runs with channels_last")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", default="2,3", help="bands of A and B (CUT's identity NCE "
                        "needs equal counts, e.g. 3,3)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--bare-process", action="store_true",
                        help="also time the bare step in a separate process (its own peak "
                        "memory; timings across processes are noisy on a shared machine)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader:
        import torch

        torch.set_num_threads(1)
        loader_ceiling(64, args.loader_seconds)
        return
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    results = []
    header = (f"{'model':9} {'batch':>5} {'precision':>9} {'trainer it/s':>12} "
              f"{'in-loop bare':>14} {'ratio':>6} {'peak MB':>9}")
    if args.bare_process:
        header += f" {'process bare':>13} {'ratio(proc)':>11} {'bare MB':>8}"
    print(header)
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for precision in args.precisions.split(","):
                row = {}
                for mode in ("bare", "trainer") if args.bare_process else ("trainer",):
                    spec = {"model": model, "batch": batch, "precision": precision,
                            "mode": mode, "size": args.size, "iters": args.iters,
                            "warmup": args.warmup, "device": args.device,
                            "threads": args.threads,
                            "bands_a": int(args.bands.split(",")[0]),
                            "bands_b": int(args.bands.split(",")[1])}
                    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                          capture_output=True, text=True)
                    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                    if done.returncode or not lines:
                        sys.exit(f"{model} b{batch} {precision} {mode} failed:\n"
                                 f"{done.stderr[-2000:]}")
                    row[mode] = json.loads(lines[-1][7:])
                t = row["trainer"]
                label = precision + ("+cl" if precision == "bf16" else "")
                line = (f"{model:9} {batch:5d} {label:>9} {t['it_per_s']:12.4f} "
                        f"{1 / t['step_s']:14.4f} {t['overhead_ratio']:6.3f} {t['peak_mb']:9.0f}")
                if "bare" in row:
                    b = row["bare"]
                    line += (f" {b['it_per_s']:13.4f} {t['s_per_it'] / b['s_per_it']:11.3f} "
                             f"{b['peak_mb']:8.0f}")
                print(line, flush=True)
                results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
