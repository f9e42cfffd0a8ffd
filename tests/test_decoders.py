"""Decoders without checkerboards (resize, then convolve), the generators' dropout, and model
files and configs of earlier versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import make_chips

from geotranslate import load_model
from geotranslate.choices import UNET_DROPOUT
from geotranslate.methods import build_method
from geotranslate.predict import predict_raster
from geotranslate.train import TrainConfig, train

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize("method", ["Pix2Pix", "Pix2PixHD", "CycleGAN", "CUT", "FastCUT"])
@pytest.mark.parametrize("generator", [None, "resnet", "unet"])
def test_default_decoders_have_no_transposed_convolution(method, generator):
    if method in ("CUT", "FastCUT") and generator == "unet":
        pytest.skip("CUT's PatchNCE needs the resnet encoder")
    config = TrainConfig(method, generator=generator, ngf=4, ndf=4, n_blocks=1)
    built = build_method(method, config, {"a": 2, "b": 3}, 64)
    generators = [net for name, net in built.nets.items() if name.startswith("g_")]
    assert generators
    for net in generators:
        assert net.arch_kwargs.get("upsample", "resize") == "resize"
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    # the papers' transposed convolutions remain on request
    config.upsample = "transpose"
    built = build_method(method, config, {"a": 2, "b": 3}, 64)
    if built.nets["g_ab"].arch in ("resnet", "unet"):
        assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in built.nets["g_ab"].modules())


@pytest.mark.parametrize("method", ["Pix2Pix", "Pix2PixHD", "CycleGAN", "CUT", "FastCUT"])
@pytest.mark.parametrize("generator", [None, "resnet", "unet"])
def test_dropout_rates_by_default_on_request_and_in_old_configs(method, generator):
    if method in ("CUT", "FastCUT") and generator == "unet":
        pytest.skip("CUT's PatchNCE needs the resnet encoder")

    def rates(config: TrainConfig) -> list[float]:
        built = build_method(method, config, {"a": 2, "b": 3}, 64)
        return [m.p for name, net in built.nets.items() if name.startswith("g_")
                for m in net.modules() if isinstance(m, torch.nn.Dropout)]

    settings = {"generator": generator, "ngf": 4, "ndf": 4, "n_blocks": 1}
    config = TrainConfig(method, **settings)
    unet = config.resolved_generator() == "unet"
    # the U-Net's decoder blocks next to the innermost at its default rate (depth 3 at 64 px:
    # one block in each generator)
    generators = 2 if method == "CycleGAN" else 1
    assert rates(config) == ([UNET_DROPOUT] * generators if unet else [])
    assert rates(TrainConfig(method, dropout=0, **settings)) == []
    assert set(rates(TrainConfig(method, dropout=0.5, **settings))) == {0.5}  # pix2pix's
    # a config.json of an earlier version (no dropout key) resumes what it trained:
    # pix2pix's 0.5 in the U-Net, none in the ResNet
    saved = {k: v for k, v in config.to_dict().items() if k != "dropout"}
    assert rates(TrainConfig.from_dict(saved)) == ([0.5] * generators if unet else [])


@pytest.mark.parametrize("name", ["pix2pix_unet", "cyclegan_resnet"])
def test_model_files_of_earlier_versions_predict_bit_identically(tmp_path, name):
    # written by tests/data/legacy/make_legacy_models.py with the version before --upsample
    model = load_model(LEGACY / name)
    kwargs = model.generator_specs["a2b"]["kwargs"]
    assert "upsample" not in kwargs  # as written then: transposed convolutions
    assert any(isinstance(m, torch.nn.ConvTranspose2d)
               for m in model.generator("a2b").modules())
    out = tmp_path / "prediction.tif"
    predict_raster(LEGACY / "input.tif", LEGACY / name, out, device="cpu", precision="fp32",
                   progress=False)
    with rasterio.open(out) as now, rasterio.open(LEGACY / f"{name}_prediction.tif") as then:
        assert now.tags()["GEOTRANSLATE_NORM_STATS"] == then.tags()["GEOTRANSLATE_NORM_STATS"]
        np.testing.assert_array_equal(now.read(), then.read())


def _constant_input_std(run: Path, size: int = 32) -> float:
    """Spread of the output for a constant input chip (every band at its training mean), in
    8-bit units of the target's range, away from the borders (half the receptive field)."""
    model = load_model(run)
    source, target = model.source_domain("a2b"), model.target_domain("a2b")
    a_mean = (np.asarray(source.normalizer.low) + np.asarray(source.normalizer.high)) / 2
    chip = np.broadcast_to(np.asarray(a_mean)[:, None, None], (len(a_mean), size, size))
    x = torch.from_numpy(source.normalizer.to_model(chip.copy())[None].astype(np.float32))
    with torch.no_grad():
        y = model.generator("a2b").eval()(x)[0].double().numpy()
    out = target.normalizer.from_model(y)
    border = model.receptive_field("a2b") // 2 + 1
    inner = out[:, border:size - border, border:size - border]
    assert inner.shape[1] >= 8
    value_range = np.asarray(target.normalizer.high) - np.asarray(target.normalizer.low)
    return float(np.mean(255 * inner.reshape(len(inner), -1).std(axis=1) / value_range))


def test_a_briefly_trained_default_model_paints_no_checkerboard(tmp_path):
    chips = make_chips(tmp_path / "chips", n_train=16, n_val=0)
    spread = {}
    for upsample in ("bilinear", "resize", "transpose"):
        run = train(TrainConfig("Pix2Pix", data_dir=str(chips), out=str(tmp_path / upsample),
                                ngf=8, ndf=8, n_layers_d=2, max_steps=48, batch_size=4,
                                lr=1e-3, upsample=upsample, precision="fp32", preview=False,
                                progress=False, tensorboard=False))
        spread[upsample] = _constant_input_std(run, size=64)
    assert spread["bilinear"] < 1.0 and spread["resize"] < 1.0, spread
    # the papers' decoder, trained the same way, paints a pattern on a constant input
    assert spread["transpose"] > 2 * max(spread["bilinear"], spread["resize"], 0.5), spread


def test_default_model_records_its_decoder_and_normalization(tmp_path):
    chips = make_chips(tmp_path / "chips", n_train=4, n_val=0)
    run = train(TrainConfig("Pix2Pix", data_dir=str(chips), out=str(tmp_path / "run"),
                            ngf=4, ndf=4, n_layers_d=2, max_steps=2, preview=False,
                            progress=False, tensorboard=False))
    model = load_model(run)
    assert model.generator_specs["a2b"]["kwargs"]["upsample"] == "resize"
    assert model.generator_specs["a2b"]["kwargs"]["norm"] == "instance"
    shutil.rmtree(run)


def test_smp_decoders_resize_too():
    # segmentation_models_pytorch's U-Net decoder interpolates, then convolves
    config = TrainConfig("Pix2Pix", generator="smp-unet:resnet18", ndf=4)
    built = build_method("Pix2Pix", config, {"a": 2, "b": 3}, 64)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in built.nets["g_ab"].modules())
