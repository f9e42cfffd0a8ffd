"""ONNX Runtime against torch on this CPU: one batch of tiles through an exported generator.

Both run the same graph (export-onnx's :class:`RawBandsTranslator`: normalization, generator,
de-normalization) on the same raw bands, one thread each (``torch.set_num_threads(1)``;
onnxruntime's intra- and inter-op threads 1), after one warm-up run; the figures are the
median of ``--repeats`` runs, wall and CPU seconds (``time.process_time``), and the largest
difference of the outputs in data units.

    nice -n 5 python tools/bench_onnx.py                 # default-size Pix2Pix and CycleGAN
    nice -n 5 python tools/bench_onnx.py --run runs/latest --tile 256 --batch 4

Without ``--run`` it builds untrained default-size generators (train's defaults: Pix2Pix's
U-Net and CycleGAN's 9-block ResNet, ngf 64, instance norm; 2 -> 4 bands) with the reference
initialisation: the speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _default_run(folder: Path, arch: str, tile: int) -> Path:
    from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
    from geotranslate.models import build_generator
    from geotranslate.stats import Normalizer

    torch.manual_seed(0)
    kwargs = {"ngf": 64, "norm": "instance"}
    g = build_generator(arch, 2, 4, **kwargs)
    domains = {
        "a": DomainSpec(2, "float32", ["VV", "VH"], None,
                        Normalizer("robust", (-30.0, -35.0), (5.0, 0.0))),
        "b": DomainSpec(4, "uint16", ["blue", "green", "red", "nir"], 0,
                        Normalizer("robust", (100.0,) * 4, (4000.0,) * 4)),
    }
    model = TranslationModel("Pix2Pix" if arch == "unet" else "CycleGAN", {"a2b": g},
                             {"a2b": {"arch": arch, "in_channels": 2, "out_channels": 4,
                                      "kwargs": dict(g.arch_kwargs)}}, domains, tile)
    save_model(model, folder / arch)
    return folder / arch


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def bench(run: Path, tile: int, batch: int, repeats: int, work: Path) -> dict:
    import onnxruntime as ort

    from geotranslate.modelfile import load_model
    from geotranslate.onnx_export import RawBandsTranslator, export_onnx

    onnx_path = work / f"{run.name}.onnx"
    started = time.perf_counter()
    export_onnx(run, onnx_path, tile_size=tile, overwrite=True)
    export_seconds = time.perf_counter() - started
    model = load_model(run)
    src, dst = model.source_domain("a2b"), model.target_domain("a2b")
    wrapped = RawBandsTranslator(model.generator("a2b"), src, dst).eval()
    rng = np.random.default_rng(0)
    low, high = np.array(src.normalizer.low), np.array(src.normalizer.high)
    bands = rng.uniform(low[:, None, None], high[:, None, None],
                        (batch, src.band_count, tile, tile)).astype(np.float32)

    x = torch.from_numpy(bands)

    def run_torch():
        with torch.inference_mode():
            return np.concatenate([y.numpy() for y in wrapped(x)], axis=1)

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run_onnx():
        return np.concatenate(session.run(None, {"bands": bands}), axis=1)

    torch_wall, torch_cpu = _time(run_torch, repeats)
    onnx_wall, onnx_cpu = _time(run_onnx, repeats)
    diff = np.abs(run_torch().astype(np.float64) - run_onnx().astype(np.float64))
    return {"model": run.name, "tile": tile, "batch": batch, "export_s": export_seconds,
            "torch_wall_s": torch_wall, "torch_cpu_s": torch_cpu,
            "onnx_wall_s": onnx_wall, "onnx_cpu_s": onnx_cpu,
            "speedup_wall": torch_wall / onnx_wall, "speedup_cpu": torch_cpu / onnx_cpu,
            "max_abs_diff": float(diff.max()), "differing_fraction": float((diff > 0).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, action="append", help="a run directory (repeat)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = args.run or [_default_run(work, arch, args.tile) for arch in ("unet", "resnet")]
        print(f"torch {torch.__version__}, one thread; batch of {args.batch} tiles of "
              f"{args.tile} px")
        print(f"{'model':<10}{'torch wall':>12}{'torch cpu':>11}{'onnx wall':>11}"
              f"{'onnx cpu':>10}{'ratio':>7}{'max diff':>10}{'export':>8}")
        for run in runs:
            r = bench(run, args.tile, args.batch, args.repeats, work)
            print(f"{r['model']:<10}{r['torch_wall_s']:>11.2f}s{r['torch_cpu_s']:>10.2f}s"
                  f"{r['onnx_wall_s']:>10.2f}s{r['onnx_cpu_s']:>9.2f}s"
                  f"{r['speedup_cpu']:>7.2f}{r['max_abs_diff']:>10.3g}{r['export_s']:>7.1f}s"
                  f"  ({100 * r['differing_fraction']:.2f} % of values differ)")


if __name__ == "__main__":
    main()
