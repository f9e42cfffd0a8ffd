"""What the tests build, shared by every test module: rasters, chip folders, model files,
interrupted predictions, STAC items, and readers of a training run.

A plain module (``from builders import make_chips``): pytest puts tests/ on ``sys.path`` as it
does for ``servers.py``. Fixtures over these builders are in conftest.py. Test modules import
from here, never from each other (tests/test_layout.py checks it).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
from geotranslate.models import build_generator, generator_spec
from geotranslate.predict import predict_raster
from geotranslate.stats import BandStats, Normalizer, StatsAccumulator

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """A script of tools/ imported as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


# ---- rasters --------------------------------------------------------------------------------


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    tiled: bool = True,
    blocksize: int = 64,
    alpha: np.ndarray | None = None,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF; returns its path.

    ``alpha`` (rows, cols; 0 = transparent) is appended as an alpha band.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    if transform is None:
        transform = from_origin(500000.0, 5300000.0, 10.0, 10.0)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count + (alpha is not None),
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled and height >= blocksize and width >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, indexes=list(range(1, count + 1)))
        if alpha is not None:
            dst.write(alpha.astype(data.dtype), count + 1)
            dst.colorinterp = [rasterio.enums.ColorInterp.undefined] * count + [
                rasterio.enums.ColorInterp.alpha
            ]
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path


def textured_field(bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Texture plus large-scale gradients, in [-1, 1]: tiles see different statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for b in range(bands):
        trend = np.sin(3 * xx + b) * np.cos(2 * yy - b)
        out.append(0.6 * trend + 0.3 * rng.uniform(-1, 1, (height, width)))
    return np.clip(np.stack(out), -1, 1).astype("float32")


def stac_item(path: Path, hrefs: dict[str, str]) -> Path:
    """A STAC item at ``path`` whose assets are ``hrefs`` (asset key -> href)."""
    import datetime

    import pystac

    item = pystac.Item("T32-scene", geometry=None, bbox=None,
                       datetime=datetime.datetime(2024, 6, 1), properties={})
    for key, href in hrefs.items():
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG))
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


# ---- chip folders ---------------------------------------------------------------------------

NODATA = -9999.0


def smooth_field(rng: np.random.Generator, bands: int, size: int) -> np.ndarray:
    """Smooth random images (sums of random sinusoids): easy to learn, not constant."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((bands, size, size))
    for b in range(bands):
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
            out[b] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    return out.astype(np.float32)


def known_mapping(a: np.ndarray) -> np.ndarray:
    """B from A, pixel by pixel (2 bands -> 3 bands): what Pix2Pix should learn."""
    return np.stack([a[0] * 2.0 + 1.0, -a[1], 0.5 * (a[0] + a[1])]).astype(np.float32)


def make_chips(
    root: Path,
    *,
    n_train: int = 8,
    n_val: int = 0,
    size: int = 32,
    bands_a: int = 2,
    bands_b: int = 3,
    paired: bool = True,
    mapping: Callable[[np.ndarray], np.ndarray] | None = known_mapping,
    nodata_holes: bool = False,
    seed: int = 0,
) -> Path:
    """A chip folder in the export-tiles layout (train_a/, train_b/, val_*, meta.json)."""
    rng = np.random.default_rng(seed)
    acc = {"a": StatsAccumulator(bands_a), "b": StatsAccumulator(bands_b)}
    splits = {"train": n_train, "val": n_val}
    for split, n in splits.items():
        if n == 0:
            continue
        for d in ("a", "b"):
            (root / f"{split}_{d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = smooth_field(rng, bands_a, size)
            if mapping is not None and paired:
                b = mapping(a)
            else:
                b = smooth_field(rng, bands_b, size)
            assert b.shape[0] == bands_b
            if nodata_holes and i % 2 == 0:
                a[:, :4, :6] = NODATA
                b[:, -5:, -3:] = NODATA
            for d, data in (("a", a), ("b", b)):
                valid = (data != NODATA).all(axis=0)
                acc[d].add(data, valid)
                name = f"src_{i * size}_0.tif" if paired or d == "a" else f"other_{i}_0.tif"
                write_raster(root / f"{split}_{d}" / name, data, nodata=NODATA,
                             descriptions=[f"{d}{k}" for k in range(data.shape[0])])
    meta = {
        "format": "geotranslate-chips", "format_version": 1,
        "dataset_type": "paired" if paired else "unpaired", "tile_size": size, "stride": size,
        "domains": {
            d: {"sources": [f"/x/{d}.tif"], "bands": list(range(1, n + 1)), "band_count": n,
                "dtype": "float32", "band_descriptions": [f"{d}{k}" for k in range(n)],
                "nodata": NODATA, "crs": "EPSG:32633", "pixel_size": [10.0, 10.0],
                "stats": acc[d].to_dict()}
            for d, n in (("a", bands_a), ("b", bands_b))
        },
        "chips": {s: {"a": n, "b": n} for s, n in splits.items()},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


#: side of the chips of write_sar_rgb_chips and make_chip_model
CHIP = 32


def write_sar_rgb_chips(root: Path, split: str, count: int, seed: int) -> None:
    """``count`` chip pairs of ``split``: 2 SAR-like float bands (VV, VH; nodata -9999) to
    3 uint16 RGB bands (nodata 0); the first pair has a strip of nodata on each side."""
    rng = np.random.default_rng(seed)
    (root / f"{split}_a").mkdir(parents=True)
    (root / f"{split}_b").mkdir(parents=True)
    for k in range(count):
        a = rng.normal(-12, 3, size=(2, CHIP, CHIP)).astype(np.float32)
        b = rng.integers(200, 4000, size=(3, CHIP, CHIP)).astype(np.uint16)
        if k == 0:
            a[:, :5, :] = -9999.0  # source nodata
            b[:, -4:, -6:] = 0  # target nodata
        transform = from_origin(500000.0 + k * 320, 5300000.0, 10.0, 10.0)
        name = f"scene_{k * CHIP}_0.tif"
        write_raster(root / f"{split}_a" / name, a, transform=transform, nodata=-9999.0,
                     descriptions=["VV", "VH"])
        write_raster(root / f"{split}_b" / name, b, transform=transform, nodata=0,
                     descriptions=["red", "green", "blue"])


# ---- model files ----------------------------------------------------------------------------


def val_chips(chips: Path, nodata_a: float = -9999.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B chip as float64, A's valid pixels) of each validation chip, read from the files."""
    out = []
    for path in sorted((chips / "val_b").glob("*.tif")):
        with rasterio.open(chips / "val_a" / path.name) as ds:
            valid = (ds.read() != nodata_a).all(axis=0)
        with rasterio.open(path) as ds:
            out.append((ds.read().astype(np.float64), valid))
    return out


def minmax_normalizer(bands: int, low: float, high: float) -> Normalizer:
    """Every band scaled from [low, high] to [-1, 1]."""
    stats = [BandStats(low, high, (low + high) / 2, 1.0, low, high, 100)] * bands
    return Normalizer.from_stats(stats, "minmax")


def make_model(
    tmp_path: Path,
    *,
    bands_a: int = 2,
    bands_b: int = 3,
    norm: str = "none",
    dtype_a: str = "float32",
    dtype_b: str = "float32",
    range_a: tuple[float, float] = (-1.0, 1.0),
    range_b: tuple[float, float] = (-1.0, 1.0),
    nodata_a: float | None = None,
    nodata_b: float | None = None,
    chip: int = 64,
    seed: int = 0,
    name: str = "run",
    smooth: bool = False,
) -> Path:
    """A tiny ResNet generator, saved; Kaiming weights so its outputs vary over [-1, 1].

    ``smooth``: every kernel is a positive average (with a random sign per output channel),
    so the network is a smooth filter bank whose output shows per-tile statistics clearly.
    """
    torch.manual_seed(seed)
    g_ab = build_generator("resnet", bands_a, bands_b, ngf=4, n_blocks=1, norm=norm, init=False)
    for layer in g_ab.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if smooth:
                w = layer.weight.data
                sign = torch.sign(torch.randn(w.shape[0], 1, 1, 1))
                if isinstance(layer, torch.nn.ConvTranspose2d):
                    sign = 1.0
                layer.weight.data = w.abs() / w[0].numel() * 2 * sign
    model = TranslationModel(
        dataset_type="Pix2Pix",
        generators={"a2b": g_ab},
        generator_specs={
            "a2b": {"arch": "resnet", "in_channels": bands_a, "out_channels": bands_b,
                    "kwargs": dict(g_ab.arch_kwargs)}
        },
        domains={
            "a": DomainSpec(bands_a, dtype_a, [f"a{i}" for i in range(bands_a)], nodata_a,
                            minmax_normalizer(bands_a, *range_a)),
            "b": DomainSpec(bands_b, dtype_b, [f"b{i}" for i in range(bands_b)], nodata_b,
                            minmax_normalizer(bands_b, *range_b)),
        },
        chip_size=chip,
    )
    save_model(model, tmp_path / name)
    return tmp_path / name


def tiny_cyclegan_model() -> TranslationModel:
    """An unsaved CycleGAN model: ResNet a2b (2 SAR bands -> uint8 RGB) and U-Net b2a."""
    torch.manual_seed(0)
    g_ab = build_generator("resnet", 2, 3, ngf=4, n_blocks=1)
    g_ba = build_generator("unet", 3, 2, ngf=4, num_downs=3)
    domains = {
        "a": DomainSpec(
            2, "float32", ["VV", "VH"], -9999.0, Normalizer("percentile", (-25, -30), (0, -5))
        ),
        "b": DomainSpec(
            3,
            "uint8",
            ["red", "green", "blue"],
            None,
            Normalizer("minmax", (0, 0, 0), (255, 255, 255)),
        ),
    }
    return TranslationModel(
        dataset_type="CycleGAN",
        generators={"a2b": g_ab, "b2a": g_ba},
        generator_specs={
            "a2b": generator_spec(g_ab).to_dict(),
            "b2a": generator_spec(g_ba).to_dict(),
        },
        domains=domains,
        chip_size=32,
        training={"iterations": 3},
    )


def make_chip_model(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module, TranslationModel]:
    """Chips in the export layout (2 train, 3 val; write_sar_rgb_chips) plus a tiny real
    Pix2Pix-style model saved to a run dir: (chips, run, g_ab, model)."""
    chips = tmp_path / "chips"
    write_sar_rgb_chips(chips, "train", 2, seed=1)
    write_sar_rgb_chips(chips, "val", 3, seed=2)
    (chips / "meta.json").write_text(json.dumps({"format": "geotranslate-chips",
                                                 "format_version": 1, "tile_size": CHIP}))
    torch.manual_seed(0)
    g_ab = build_generator("resnet", 2, 3, ngf=4, n_blocks=1, norm="instance").eval()
    model = TranslationModel(
        dataset_type="Pix2Pix",
        generators={"a2b": g_ab},
        generator_specs={"a2b": generator_spec(g_ab).to_dict()},
        domains={
            "a": DomainSpec(2, "float32", ["VV", "VH"], -9999.0,
                            Normalizer("percentile", (-18.0, -17.0), (-6.0, -7.0))),
            "b": DomainSpec(3, "uint16", ["red", "green", "blue"], 0.0,
                            Normalizer("percentile", (300.0, 250.0, 200.0),
                                       (3800.0, 3900.0, 3000.0))),
        },
        chip_size=CHIP,
    )
    save_model(model, tmp_path / "run")
    return chips, tmp_path / "run", g_ab, model


# ---- training runs --------------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run's metrics.csv."""
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def last_checkpoint(run: Path) -> dict:
    """A run's checkpoints/last.pt."""
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


# ---- prediction -----------------------------------------------------------------------------


def predict_interrupted(src, run: Path, out: Path, *, at_call: int, **options) -> None:
    """``predict_raster(src, run, out, **options)`` stopped by Ctrl-C in the generator's
    ``at_call``-th forward pass, which leaves its partial output to resume."""
    real_call = torch.nn.Module.__call__
    calls = 0

    def interrupting(self, *args, **kwargs):
        nonlocal calls
        if type(self).__name__ == "ResnetGenerator":
            calls += 1
            if calls == at_call:
                raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(torch.nn.Module, "__call__", interrupting)
        predict_raster(src, run, out, **options)
