"""Tile-independent prediction: scene statistics for instance norm, receptive field, tags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import minmax_normalizer

from geotranslate.modelfile import DomainSpec, TranslationModel, load_model, save_model
from geotranslate.models import build_generator
from geotranslate.models.receptive import receptive_field
from geotranslate.predict import predict_raster

TOLERANCE = 0.5  # mean |tile 128 - tile 256| in grey levels of the 8-bit output (the target)


def _generator(arch: str, norm: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "resnet":
        kwargs = {"ngf": 4, "n_blocks": 1, "norm": norm}
    else:
        kwargs = {"ngf": 4, "num_downs": 3, "norm": norm, "dropout": False}
    net = build_generator(arch, 2, 2, init=False, **kwargs)
    for layer in net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if isinstance(layer, torch.nn.BatchNorm2d):  # running stats as after training
            layer.running_mean.normal_(0.0, 0.2)
            layer.running_var.uniform_(0.5, 2.0)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight.data *= 0.3  # keep the tanh out of saturation: outputs spread over 0..255
    return net


def make_model(tmp_path: Path, arch: str, norm: str, dataset_type: str = "Pix2Pix") -> Path:
    directions = ("a2b", "b2a") if dataset_type == "CycleGAN" else ("a2b",)
    gens = {d: _generator(arch, norm, seed) for seed, d in enumerate(directions)}
    domain = DomainSpec(2, "uint8", ["x", "y"], None, minmax_normalizer(2, 0.0, 255.0))
    model = TranslationModel(
        dataset_type, gens,
        {d: {"arch": arch, "in_channels": 2, "out_channels": 2, "kwargs": dict(g.arch_kwargs)}
         for d, g in gens.items()},
        {"a": domain, "b": domain}, chip_size=64,
    )
    run = tmp_path / f"{dataset_type}-{arch}-{norm}"
    save_model(model, run)
    return run


@pytest.fixture
def scene(make_raster):
    """A 256 px uint8 scene whose contrast grows from left to right (tiles differ in tone)."""
    yy, xx = np.mgrid[0:256, 0:256] / 256
    data = np.stack([np.sin(9 * xx + b) * np.cos(6 * yy - b) * (0.3 + xx) for b in range(2)])
    data += 0.1 * np.random.default_rng(0).uniform(-1, 1, data.shape)
    return make_raster("scene.tif", (data * 60 + 127).clip(0, 255).astype("uint8"))


def _tile_dependence(tmp_path, src, run, direction="a2b", **kwargs) -> float:
    outs = []
    for tile in (128, 256):
        out = tmp_path / f"out{tile}.tif"
        predict_raster(src, run, out, tile_size=tile, direction=direction, overwrite=True,
                       progress=False, **kwargs)
        with rasterio.open(out) as ds:
            outs.append(ds.read().astype(np.float64))
    return float(np.abs(outs[0] - outs[1]).mean())


@pytest.mark.parametrize("arch", ["resnet", "unet"])
@pytest.mark.parametrize("norm", ["layer", "instance", "batch", "none"])
def test_translation_does_not_depend_on_tile_size(tmp_path, scene, arch, norm):
    run = make_model(tmp_path, arch, norm)
    assert _tile_dependence(tmp_path, scene, run) <= TOLERANCE
    if norm == "layer":
        # per-pixel normalization: no scene pass, and the tiling leaves no trace beyond the
        # odd rounding of a blended edge pixel
        assert _tile_dependence(tmp_path, scene, run, norm_stats="tile") < 0.1
    if norm == "instance":
        # per-tile statistics (the old behaviour) give every tile its own tone
        assert _tile_dependence(tmp_path, scene, run, norm_stats="tile") > 5.0


@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_cyclegan_both_directions_do_not_depend_on_tile_size(tmp_path, scene, direction):
    run = make_model(tmp_path, "resnet", "instance", "CycleGAN")
    assert _tile_dependence(tmp_path, scene, run, direction) <= TOLERANCE
    assert _tile_dependence(tmp_path, scene, run, direction, norm_stats="tile") > 5.0


@pytest.mark.parametrize(
    ("norm", "norm_stats", "expected"),
    [("instance", "scene", "scene-sample 16 tiles of 64 px"), ("instance", "tile", "per-tile"),
     ("batch", "scene", "running"), ("none", "scene", "none"),
     ("layer", "scene", "per-pixel")],
)
def test_output_tags_record_what_was_done(tmp_path, scene, norm, norm_stats, expected):
    run = make_model(tmp_path, "resnet", norm)
    summary = predict_raster(scene, run, tmp_path / "out.tif", tile_size=128,
                             norm_stats=norm_stats, progress=False)
    with rasterio.open(tmp_path / "out.tif") as ds:
        tags = ds.tags()
    assert tags["GEOTRANSLATE_NORM_STATS"] == expected == summary.norm_stats
    assert tags["GEOTRANSLATE_TILE_SIZE"] == "128"
    # default overlap: the receptive field (44 px: 41 measured, and a bound of 3 px for the
    # two nearest-neighbour upsamplings' phases) rounded up to the total stride (4)
    assert summary.receptive_field == 44
    assert tags["GEOTRANSLATE_RECEPTIVE_FIELD"] == "44"
    assert tags["GEOTRANSLATE_OVERLAP"] == str(summary.overlap) == "44"
    assert f"norm stats: {expected}" in str(summary)


def test_scene_statistics_are_those_of_the_sample():
    # calibrated layer by layer: each layer's statistics are those of the sample normalized by
    # the earlier layers' scene statistics, so with a one-tile sample the calibrated network
    # reproduces per-tile instance norm on that tile
    from geotranslate.models.norms import SceneNorm, scene_normalized

    tiles = torch.randn(3, 5, 16, 16) * torch.tensor([1.0, 2.0, 3.0])[:, None, None, None]
    layer = SceneNorm(torch.nn.InstanceNorm2d(5))
    layer(tiles)  # the batch mean and the mean of the tiles' own variances
    torch.testing.assert_close(layer.mean, tiles.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.var, tiles.var(dim=(2, 3), unbiased=False).mean(dim=0))

    net = _generator("resnet", "instance", 0).eval()
    x = torch.randn(1, 2, 64, 64)
    frozen, layers = scene_normalized(net, x)
    assert layers == 7
    with torch.no_grad():
        np.testing.assert_allclose(frozen(x).numpy(), net(x).numpy(), atol=1e-5)
        other = torch.randn(1, 2, 64, 64) * 3 + 1
        # another input keeps the first one's statistics: not what per-input norm gives
        assert (frozen(other) - net(other)).abs().mean() > 0.05


def _empirical_receptive_field(net: torch.nn.Module, stride: int) -> int:
    """Widest extent of the input pixels one output pixel's gradient reaches (over phases).

    Positive weights and inputs keep every ReLU open, so no path is cut off by chance."""
    net = net.double().eval()
    for layer in net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            layer.weight.data = layer.weight.data.abs() * 0.05 / layer.weight[0].numel() ** 0.5
            if layer.bias is not None:
                layer.bias.data = layer.bias.data.abs()
    size, widest = 192, 0
    for phase in range(stride):
        x = (torch.rand(1, 2, size, size, dtype=torch.float64) + 0.5).requires_grad_(True)
        net(x)[0, 0, size // 2 + phase, size // 2 + phase].backward()
        reached = x.grad[0].abs().sum(0) != 0
        for axis in (0, 1):
            idx = reached.any(axis).nonzero().flatten()
            widest = max(widest, int(idx.max() - idx.min() + 1))
    return widest


@pytest.mark.parametrize(
    ("arch", "kwargs", "exact"),
    [("resnet", {"ngf": 4, "n_blocks": 2, "norm": "none"}, False),
     ("resnet", {"ngf": 4, "n_blocks": 1, "norm": "none", "padding": "zero"}, False),
     ("resnet", {"ngf": 4, "n_blocks": 1, "norm": "none", "upsample": "transpose"}, True),
     ("unet", {"ngf": 4, "num_downs": 3, "norm": "none", "dropout": False}, False),
     ("unet", {"ngf": 4, "num_downs": 3, "norm": "none", "dropout": False,
               "upsample": "transpose"}, False),
     ("unet", {"ngf": 4, "num_downs": 3, "norm": "none", "dropout": False,
               "upsample": "bilinear"}, False),
     ("resnet", {"ngf": 4, "n_blocks": 1, "norm": "none", "upsample": "bilinear"}, False)],
)
def test_receptive_field_matches_impulse_response(arch, kwargs, exact):
    net = build_generator(arch, 2, 1, **kwargs)
    computed = receptive_field(net)
    measured = _empirical_receptive_field(net, net.total_stride)
    if exact:
        assert computed == measured
    else:  # an upper bound, within the total stride
        assert measured <= computed <= measured + net.total_stride


def test_model_json_records_receptive_field_and_old_files_still_load(tmp_path, scene):
    run = make_model(tmp_path, "resnet", "instance", "CycleGAN")
    meta = json.loads((run / "model.json").read_text())
    assert meta["receptive_field"] == {"a2b": 44, "b2a": 44}
    del meta["receptive_field"]  # as written before the field existed
    (run / "model.json").write_text(json.dumps(meta))
    model = load_model(run)
    assert model.receptive_field("b2a") == 44
    summary = predict_raster(scene, model, tmp_path / "old.tif", direction="b2a",
                             progress=False)
    assert summary.receptive_field == 44 and summary.norm_stats.startswith("scene-sample")
