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

``--reference PATH`` (a checkout of junyanz/pytorch-CycleGAN-and-pix2pix, kept outside this
project; skipped when the path is absent) also times the reference's networks at the same
architecture (ResNet-9 or the U-Net depth ours uses, instance norm, PatchGAN) through the same
update (G forward and backward, D forward and backward, Adam steps) on the same in-memory
batch, in fp32 as the reference trains, and prints ``vs ref`` = reference CPU-s / ours. Run
it with ``--threads 1``. ``--profile`` adds a torch.profiler summary of one in-loop step:
the ``copy_`` share (layout and dtype conversions) and the top operators by self CPU time.

    python tools/bench_train.py --models cyclegan,pix2pix --batch-sizes 1 --bands 3,3 \
        --threads 1 --reference /work/ref/pytorch-CycleGAN-and-pix2pix --profile
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
    meta = {"format": "geotranslate-chips", "format_version": 1, "pairing": "paired",
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


def profile_summary(step, top: int = 4) -> dict:
    """One call of ``step`` under torch.profiler: copy_ share and the top ops by self CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    copy = sum(e.self_cpu_time_total for e in ops if e.key == "aten::copy_")
    calls = sum(e.count for e in ops if e.key == "aten::copy_")
    return {"copy_share": copy / total, "copy_calls": calls,
            "top": [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total)
                    for e in ops[:top]]}


def load_reference(path: str):
    """The reference's ``models/networks.py`` from a checkout at ``path`` (never copied)."""
    import importlib.util

    file = Path(path) / "models" / "networks.py"
    module_spec = importlib.util.spec_from_file_location("reference_networks", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def reference_step(spec: dict):
    """The reference CycleGAN or pix2pix update (its networks, its loss structure) at our
    default architecture, as a function of no arguments on one in-memory random batch."""
    import contextlib
    import functools
    import io

    import torch
    from torch import nn

    from geotranslate.models import default_unet_depth

    ref = load_reference(spec["reference"])
    torch.manual_seed(0)
    # instance norm as the reference uses it today (no running statistics)
    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    a, b, size, n = spec["bands_a"], spec["bands_b"], spec["size"], spec["batch"]
    real_a, real_b = torch.rand(n, a, size, size) * 2 - 1, torch.rand(n, b, size, size) * 2 - 1
    l1, mse, bce = nn.L1Loss(), nn.MSELoss(), nn.BCEWithLogitsLoss()

    def init(net):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "initialize network"
            return ref.init_net(net, "normal")

    def adam(*nets):
        return torch.optim.Adam([p for net in nets for p in net.parameters()], lr=2e-4,
                                betas=(0.5, 0.999))

    def gan(pred, real, loss):
        return loss(pred, torch.full_like(pred, 1.0 if real else 0.0))

    if spec["model"] == "cyclegan":
        g_a, g_b = (init(ref.ResnetGenerator(i, o, 64, norm_layer=norm, n_blocks=9))
                    for i, o in ((a, b), (b, a)))
        d_a, d_b = (init(ref.NLayerDiscriminator(c, 64, 3, norm_layer=norm)) for c in (b, a))
        opt_g, opt_d = adam(g_a, g_b), adam(d_a, d_b)

        def step():
            fake_b = g_a(real_a)
            rec_a = g_b(fake_b)
            fake_a = g_b(real_b)
            rec_b = g_a(fake_a)
            for d in (d_a, d_b):
                d.requires_grad_(False)
            opt_g.zero_grad()
            loss = (gan(d_a(fake_b), True, mse) + gan(d_b(fake_a), True, mse)
                    + l1(rec_a, real_a) * 10 + l1(rec_b, real_b) * 10)
            if a == b:  # identity loss, lambda_identity 0.5
                loss = loss + l1(g_a(real_b), real_b) * 5 + l1(g_b(real_a), real_a) * 5
            loss.backward()
            opt_g.step()
            for d in (d_a, d_b):
                d.requires_grad_(True)
            opt_d.zero_grad()
            for d, real, fake in ((d_a, real_b, fake_b), (d_b, real_a, fake_a)):
                loss_d = 0.5 * (gan(d(real), True, mse) + gan(d(fake.detach()), False, mse))
                loss_d.backward()
            opt_d.step()
    else:
        depth = spec.get("unet_depth") or default_unet_depth(size)
        g = init(ref.UnetGenerator(a, b, depth, 64, norm_layer=norm, use_dropout=True))
        d = init(ref.NLayerDiscriminator(a + b, 64, 3, norm_layer=norm))
        opt_g, opt_d = adam(g), adam(d)

        def step():
            fake_b = g(real_a)
            fake_ab = torch.cat([real_a, fake_b], 1)
            opt_d.zero_grad()
            loss_d = 0.5 * (gan(d(fake_ab.detach()), False, bce)
                            + gan(d(torch.cat([real_a, real_b], 1)), True, bce))
            loss_d.backward()
            opt_d.step()
            d.requires_grad_(False)
            opt_g.zero_grad()
            loss_g = gan(d(fake_ab), True, bce) + l1(fake_b, real_b) * 100
            loss_g.backward()
            opt_g.step()
            d.requires_grad_(True)
    return step


def run_reference(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    step = reference_step(spec)
    cpu = []
    for _ in range(spec["warmup"] + spec["iters"]):
        start = time.process_time()
        step()
        cpu.append(time.process_time() - start)
    return {**spec, "step_cpu_s": float(statistics.median(cpu[spec["warmup"]:]))}


def run_one(spec: dict) -> dict:
    """One measurement in this process: spec = model, batch, precision, mode, sizes."""
    import torch

    from geotranslate.methods import Method
    from geotranslate.train import TrainConfig, train
    from geotranslate.train.setup import training_method

    if spec["mode"] == "reference":
        return run_reference(spec)
    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    from geotranslate.methods import METHODS

    precision, *variant = spec["precision"].split("+")
    precision, _, layout = precision.partition("-")

    dataset_type = MODELS[spec["model"]]
    steps = spec["warmup"] + spec["iters"] + 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        chips = make_chips(tmp / "chips", spec["batch"] * steps, spec["size"],
                           spec.get("bands_a", 2), spec.get("bands_b", 3))
        channels_last = False if layout == "nchw" else None  # None: the default
        config = TrainConfig(dataset_type, data_dir=str(chips), out=str(tmp / "run"), epochs=1,
                             epochs_decay=0, batch_size=spec["batch"], max_steps=steps,
                             precision=precision, channels_last=channels_last,
                             compile="compile" in variant, unet_depth=spec.get("unet_depth"),
                             device=spec["device"], preview=False, progress=True, workers=0,
                             cache=True, seed=0)
        starts: list[float] = []
        step_seconds: list[float] = []
        step_cpu: list[float] = []
        profiled: dict = {}

        def sync() -> None:
            if spec["device"] == "cuda" or (spec["device"] == "auto" and torch.cuda.is_available()):
                torch.cuda.synchronize()

        if spec["mode"] == "trainer":
            real_step = Method.step

            def timed_step(self, batch):
                sync()
                starts.append(time.perf_counter())
                cpu = time.process_time()
                losses = real_step(self, batch)
                float(sum(losses.values()))  # the loop reads the losses right after, too
                sync()
                step_seconds.append(time.perf_counter() - starts[-1])
                step_cpu.append(time.process_time() - cpu)
                if spec.get("profile") and len(step_seconds) == steps:  # its interval is
                    profiled.update(profile_summary(lambda: real_step(self, batch)))  # untimed
                return losses

            Method.step = timed_step
            train(config)  # intervals between step starts: the last step's is not measured
        else:
            from geotranslate.data import ChipDataset, read_meta
            from geotranslate.device import resolve_device, resolve_precision
            from geotranslate.train.distributed import DistContext

            meta = read_meta(chips)
            dataset = ChipDataset(chips, paired=METHODS[dataset_type].paired, cache=True,
                                  meta=meta)
            device = resolve_device(spec["device"])
            precision = resolve_precision(precision, device)
            method = training_method(config, meta, dataset.chip_size, device, precision,
                                     DistContext(), log=lambda message: None)
            items = [dataset[i] for i in range(spec["batch"])]
            batch = {k: torch.stack([it[k] for it in items]) for k in
                     ("a", "b", "valid_a", "valid_b")}
            batch = method.to_device(batch)  # already in memory (and on the device)
            for _ in range(steps):
                sync()
                starts.append(time.perf_counter())
                cpu = time.process_time()
                float(sum(method.step(batch).values()))
                sync()
                step_seconds.append(time.perf_counter() - starts[-1])
                step_cpu.append(time.process_time() - cpu)
            starts.append(time.perf_counter())
            if spec.get("profile"):
                profiled.update(profile_summary(lambda: method.step(batch)))
    finally:
        # chips, checkpoints and model: about 0.9 GB a measurement at 256 px, batch 4
        shutil.rmtree(tmp, ignore_errors=True)
    intervals = np.diff(starts)[spec["warmup"]:]
    inside = step_seconds[spec["warmup"]:len(intervals) + spec["warmup"]]
    return {**spec, "s_per_it": float(statistics.median(intervals)),
            "it_per_s": float(1 / statistics.median(intervals)),
            "step_s": float(statistics.median(inside)),
            "first_step_s": float(step_seconds[0]),
            "step_cpu_s": float(statistics.median(step_cpu[spec["warmup"]:len(inside)
                                                           + spec["warmup"]])),
            "profile": profiled,
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
                        help="fp32, bf16 (the default layout: channels_last on a CPU), "
                        "bf16-nchw (channels_last off); +compile adds torch.compile")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", default="2,3", help="bands of A and B (CUT's identity NCE "
                        "needs equal counts, e.g. 3,3)")
    parser.add_argument("--unet-depth", type=int, default=None,
                        help="Pix2Pix's U-Net depth (default: ours at the size; 8 is the "
                        "reference's unet_256)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--bare-process", action="store_true",
                        help="also time the bare step in a separate process (its own peak "
                        "memory; timings across processes are noisy on a shared machine)")
    parser.add_argument("--reference", help="a checkout of junyanz/pytorch-CycleGAN-and-pix2pix"
                        " (outside this project): also time its update, fp32 (skipped when "
                        "the path is absent)")
    parser.add_argument("--profile", action="store_true",
                        help="a torch.profiler summary of one step beside each row")
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
    if args.reference and not (Path(args.reference) / "models" / "networks.py").is_file():
        print(f"--reference {args.reference}: no models/networks.py there; reference skipped")
        args.reference = None
    results = []
    header = (f"{'model':9} {'batch':>5} {'precision':>12} {'trainer it/s':>12} "
              f"{'in-loop bare':>14} {'ratio':>6} {'peak MB':>9} {'step CPU-s':>10} "
              f"{'1st step s':>10}")
    if args.reference:
        header += f" {'vs ref':>6}"
    if args.bare_process:
        header += f" {'process bare':>13} {'ratio(proc)':>11} {'bare MB':>8}"
    print(header)

    def run(spec: dict) -> dict:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                              capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{spec['model']} b{spec['batch']} {spec['precision']} {spec['mode']} "
                     f"failed:\n{done.stderr[-2000:]}")
        return json.loads(lines[-1][7:])

    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            base = {"model": model, "batch": batch, "size": args.size, "iters": args.iters,
                    "warmup": args.warmup, "device": args.device, "threads": args.threads,
                    "bands_a": int(args.bands.split(",")[0]),
                    "bands_b": int(args.bands.split(",")[1]), "profile": args.profile,
                    "unet_depth": args.unet_depth}
            ref_cpu = None
            if args.reference and model in ("cyclegan", "pix2pix"):
                ref = run({**base, "precision": "fp32", "mode": "reference",
                           "reference": args.reference})
                ref_cpu = ref["step_cpu_s"]
                print(f"{model:9} {batch:5d} {'reference':>12} {'':>12} {1 / ref_cpu:14.4f} "
                      f"{'':>6} {'':>9} {ref_cpu:10.3f} {'':>10} {1.0:6.2f}", flush=True)
                results.append({"reference": ref})
            for precision in args.precisions.split(","):
                row = {}
                for mode in ("bare", "trainer") if args.bare_process else ("trainer",):
                    row[mode] = run({**base, "precision": precision, "mode": mode})
                t = row["trainer"]
                label = precision + ("+cl" if precision.split("+")[0] == "bf16" else "")
                line = (f"{model:9} {batch:5d} {label:>12} {t['it_per_s']:12.4f} "
                        f"{1 / t['step_s']:14.4f} {t['overhead_ratio']:6.3f} {t['peak_mb']:9.0f} "
                        f"{t['step_cpu_s']:10.3f} {t['first_step_s']:10.1f}")
                if args.reference:
                    line += f" {ref_cpu / t['step_cpu_s']:6.2f}" if ref_cpu else f" {'':>6}"
                if "bare" in row:
                    b = row["bare"]
                    line += (f" {b['it_per_s']:13.4f} {t['s_per_it'] / b['s_per_it']:11.3f} "
                             f"{b['peak_mb']:8.0f}")
                print(line, flush=True)
                if t["profile"]:
                    p = t["profile"]
                    print(f"{'':15} profile: copy_ {100 * p['copy_share']:.1f} % "
                          f"({p['copy_calls']} calls); top: " + ", ".join(
                              f"{name} {100 * share:.0f} %" for name, share in p["top"]),
                          flush=True)
                results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
