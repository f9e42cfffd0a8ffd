"""Tests for geotranslate.models: shapes, reference sizes, factory round-trips, losses, pool."""

from __future__ import annotations

import copy
import math
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from geotranslate.models import (
    GANLoss,
    GeneratorSpec,
    ImagePool,
    PatchDiscriminator,
    PretrainedWeightsUnavailableError,
    ResnetGenerator,
    UnetGenerator,
    build_discriminator,
    build_generator,
    default_unet_depth,
    generator_spec,
    init_weights,
    masked_l1,
    total_variation,
    unet_depth_for,
)
from geotranslate.models.init import mark_pretrained


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _state_shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


# ------------------------------------------------------------------------------- generators


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet", {"ngf": 8, "n_blocks": 2}),
        ("resnet", {"ngf": 8, "n_blocks": 1, "norm": "batch", "padding": "zero"}),
        ("unet", {"ngf": 8, "num_downs": 6}),
        ("unet", {"ngf": 4, "num_downs": 5, "norm": "none", "dropout": False}),
    ],
)
def test_generator_output_shape_and_tanh_range(arch: str, kwargs: dict) -> None:
    net = build_generator(arch, 2, 4, **kwargs)
    # Large inputs push tanh into saturation; the output must still stay within [-1, 1].
    x = torch.randn(2, 2, 64, 64) * 50
    y = net(x)
    assert y.shape == (2, 4, 64, 64)
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1
    assert y.std() > 0  # not a constant output


def test_reference_parameter_counts() -> None:
    """The reference repo logs 11.378 M (resnet_9blocks), 54.414 M (unet_256, batch norm)."""
    assert round(_param_count(ResnetGenerator(3, 3)) / 1e6, 3) == 11.378
    assert round(_param_count(UnetGenerator(3, 3, norm="batch", upsample="transpose")) / 1e6,
                 3) == 54.414
    assert round(_param_count(PatchDiscriminator(6, norm="batch")) / 1e6, 3) == 2.769
    assert round(_param_count(PatchDiscriminator(3)) / 1e6, 3) == 2.765


def test_unet_dropout_in_three_blocks_next_to_innermost() -> None:
    def dropouts(net: nn.Module) -> int:
        return sum(isinstance(m, nn.Dropout) for m in net.modules())

    assert dropouts(UnetGenerator(1, 1, num_downs=8, ngf=2)) == 3
    assert dropouts(UnetGenerator(1, 1, num_downs=8, ngf=2, dropout=False)) == 0
    # Depth 3 has a single block between the outermost and the innermost one.
    assert dropouts(UnetGenerator(1, 1, num_downs=3, ngf=2)) == 1


def test_unet_rejects_indivisible_size() -> None:
    net = UnetGenerator(2, 4, num_downs=6, ngf=4)
    with pytest.raises(ValueError, match=r"48x64.*divisible by 64"):
        net(torch.randn(1, 2, 48, 64))


def test_resnet_rejects_size_not_multiple_of_stride() -> None:
    net = ResnetGenerator(2, 4, ngf=4, n_blocks=1)
    with pytest.raises(ValueError, match=r"30x32.*divisible by 4"):
        net(torch.randn(1, 2, 30, 32))


def test_unknown_names_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"resnet.*unet.*smp-unet:<encoder>"):
        build_generator("transformer", 2, 4)
    with pytest.raises(ValueError, match="instance, batch, none"):
        build_generator("resnet", 2, 4, norm="group")
    with pytest.raises(ValueError, match="get_encoder_names"):
        build_generator("smp-unet:not-an-encoder", 2, 4)


@pytest.mark.parametrize("size", [64, 80])
def test_resnet_without_norm_is_translation_equivariant(size: int) -> None:
    """Shifting the input by the total stride shifts the output; only borders may differ."""
    net = build_generator("resnet", 2, 3, ngf=4, n_blocks=1, norm="none").double().eval()
    shift = 4
    margin = 24  # > receptive-field radius reached by border padding effects
    big = torch.randn(1, 2, size + shift, size + shift, dtype=torch.float64)
    with torch.no_grad():
        out_a = net(big[..., :size, :size])
        out_b = net(big[..., shift:, shift:])
    # out_b[i] sees the input of out_a[i + shift].
    interior_a = out_a[..., margin + shift : size - margin, margin + shift : size - margin]
    interior_b = out_b[..., margin : size - margin - shift, margin : size - margin - shift]
    assert interior_a.numel() > 0
    torch.testing.assert_close(interior_b, interior_a, atol=1e-5, rtol=0)
    # The comparison can fail: a non-multiple shift breaks equivariance of strided convs.
    with torch.no_grad():
        out_odd = net(big[..., 1 : size + 1, 1 : size + 1])
    interior_odd = out_odd[..., margin : size - margin - 1, margin : size - margin - 1]
    expected_odd = out_a[..., margin + 1 : size - margin, margin + 1 : size - margin]
    assert not torch.allclose(interior_odd, expected_odd, atol=1e-5, rtol=0)


def test_bf16_autocast_channels_last_forward_backward() -> None:
    generator = build_generator("resnet", 2, 3, ngf=8, n_blocks=2).to(
        memory_format=torch.channels_last
    )
    discriminator = build_discriminator(5, ndf=8, n_layers=2).to(memory_format=torch.channels_last)
    unet = build_generator("unet", 2, 3, ngf=4, num_downs=5).to(memory_format=torch.channels_last)
    x = torch.randn(2, 2, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = generator(x)
        logits = discriminator(torch.cat([x, fake], dim=1))
        loss = GANLoss("lsgan")(logits, True) + masked_l1(fake, torch.zeros_like(fake))
        loss = loss + unet(x).float().abs().mean()
    assert fake.shape == (2, 3, 32, 32)
    assert logits.shape == (2, 1, 6, 6)
    assert torch.isfinite(fake.float()).all() and torch.isfinite(logits.float()).all()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for net in (generator, discriminator, unet):
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------------- smp


def test_smp_unet_resnet18_forward() -> None:
    net = build_generator("smp-unet:resnet18", 2, 3)
    assert generator_spec(net).kwargs["pretrained"] is False
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, 64, 64))
    assert y.shape == (1, 3, 64, 64)
    assert torch.isfinite(y).all() and y.abs().max() <= 1


def test_smp_unet_instance_norm_decoder() -> None:
    net = build_generator("smp-unet:resnet18", 2, 3, norm="instance", init=False)
    decoder_norms = [m for m in net.unet.decoder.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert decoder_norms and not any(
        isinstance(m, nn.BatchNorm2d) for m in net.unet.decoder.modules()
    )


def test_smp_pretrained_offline_raises_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Block all sockets and empty the caches, so the download fails fast and for sure."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # skip the retry back-off
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        build_generator("smp-unet:resnet18", 2, 3, pretrained=True)
    assert isinstance(error.value, RuntimeError)
    message = str(error.value)
    assert "could not download ImageNet weights for encoder resnet18 (offline?)" in message
    assert "train without --pretrained or pre-populate the torch hub cache" in message


def test_init_weights_skips_pretrained_encoder() -> None:
    net = build_generator("smp-unet:resnet18", 2, 3, init=False)
    mark_pretrained(net.unet.encoder)
    encoder_before = {k: v.clone() for k, v in net.unet.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in net.unet.decoder.state_dict().items()}
    init_weights(net)
    for key, value in net.unet.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    changed = [
        key
        for key, value in net.unet.decoder.state_dict().items()
        if key.endswith("weight") and not torch.equal(value, decoder_before[key])
    ]
    assert changed


# ------------------------------------------------------------------------ factory and spec


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet", {"ngf": 4, "n_blocks": 3, "norm": "batch", "padding": "replicate"}),
        ("unet", {"ngf": 4, "num_downs": 5, "norm": "none", "dropout": False}),
        ("smp-unet:resnet18", {"norm": "none", "encoder_depth": 4}),
    ],
)
def test_spec_rebuilds_identical_architecture(arch: str, kwargs: dict) -> None:
    net = build_generator(arch, 2, 4, **kwargs)
    spec_dict = generator_spec(net).to_dict()
    assert spec_dict["arch"] == arch and spec_dict["kwargs"].items() >= kwargs.items()

    rebuilt = build_generator(
        spec_dict["arch"],
        spec_dict["in_channels"],
        spec_dict["out_channels"],
        **spec_dict["kwargs"],
    )
    assert _state_shapes(rebuilt) == _state_shapes(net)
    via_dataclass = GeneratorSpec.from_dict(spec_dict).build()
    assert _state_shapes(via_dataclass) == _state_shapes(net)
    # The rebuilt net accepts the original weights strictly.
    via_dataclass.load_state_dict(net.state_dict(), strict=True)


def test_spec_defaults_are_recorded_and_differ_between_archs() -> None:
    small = build_generator("resnet", 2, 4, ngf=4, n_blocks=1)
    deeper = build_generator("resnet", 2, 4, ngf=4, n_blocks=2)
    assert generator_spec(small).kwargs["norm"] == "instance"
    assert _state_shapes(small) != _state_shapes(deeper)


def test_spec_survives_weights_only_checkpoint(tmp_path: Path) -> None:
    net = build_generator("unet", 2, 4, ngf=4, num_downs=5)
    path = tmp_path / "checkpoint.pt"
    torch.save({"spec": generator_spec(net).to_dict(), "state_dict": net.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    restored = GeneratorSpec.from_dict(checkpoint["spec"]).build()
    restored.load_state_dict(checkpoint["state_dict"])
    net.eval()
    restored.eval()
    x = torch.randn(1, 2, 32, 32)
    torch.testing.assert_close(restored(x), net(x))


def test_spec_build_does_not_refetch_pretrained_weights() -> None:
    spec = GeneratorSpec("smp-unet:resnet18", 2, 3, {"pretrained": True, "norm": "batch"})
    net = spec.build()  # would need the network if pretrained were honoured
    assert isinstance(net, nn.Module)


@pytest.mark.parametrize(
    ("size", "max_downs", "expected"),
    [(64, 8, 6), (256, 8, 8), (512, 8, 8), (48, 8, 4), (96, 8, 5), (64, 3, 3), (2, 8, 1)],
)
def test_unet_depth_for(size: int, max_downs: int, expected: int) -> None:
    depth = unet_depth_for(size, max_downs)
    assert depth == expected
    assert size % 2**depth == 0 and size // 2**depth >= 1


def test_unet_depth_for_builds_working_unet() -> None:
    depth = unet_depth_for(64)
    net = UnetGenerator(1, 1, num_downs=depth, ngf=2)
    assert net(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="odd"):
        unet_depth_for(63)


@pytest.mark.parametrize(("size", "expected"), [(32, 2), (64, 3), (96, 4), (128, 4), (256, 5)])
def test_default_unet_depth_sees_no_more_than_a_chip(size: int, expected: int) -> None:
    from geotranslate.models.receptive import receptive_field

    depth = default_unet_depth(size)
    assert depth == expected
    field = receptive_field(UnetGenerator(1, 1, num_downs=depth, ngf=2))
    assert field <= size  # measured, not the formula: tile-independent with the default overlap
    if depth < unet_depth_for(size):  # one level deeper would see beyond the chip
        assert receptive_field(UnetGenerator(1, 1, num_downs=depth + 1, ngf=2)) > size


# -------------------------------------------------------------------------- discriminator


def test_patch_discriminator_output_and_receptive_field() -> None:
    net = build_discriminator(1, ndf=8, n_layers=3, norm="none")
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    logits = net(x)
    assert logits.shape == (1, 1, 30, 30)
    # One output logit depends on a 70x70 input patch: the "70x70 PatchGAN".
    logits[0, 0, 15, 15].backward()
    rows, cols = torch.nonzero(x.grad[0, 0]).unbind(1)
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_patch_discriminator_default_norm_shape() -> None:
    net = build_discriminator(3, ndf=4)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


# ---------------------------------------------------------------------------------- losses


def test_gan_loss_known_values() -> None:
    ones = torch.ones(2, 1, 4, 4)
    zeros = torch.zeros(2, 1, 4, 4)
    lsgan = GANLoss("lsgan")
    assert lsgan(ones, True).item() == 0.0
    assert lsgan(ones, False).item() == pytest.approx(1.0)
    assert lsgan(torch.full((3, 1, 2, 2), 0.5), True).item() == pytest.approx(0.25)

    vanilla = GANLoss("vanilla")
    assert vanilla(zeros, True).item() == pytest.approx(math.log(2))
    assert vanilla(zeros, False).item() == pytest.approx(math.log(2))
    assert vanilla(torch.full((1, 1, 2, 2), 20.0), True).item() < 1e-6

    hinge = GANLoss("hinge")
    logits = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    # real: relu(1 - x) = [3, 1, 0.5, 0]; fake: relu(1 + x) = [0, 1, 1.5, 4]
    assert hinge(logits, True).item() == pytest.approx(4.5 / 4)
    assert hinge(logits, False).item() == pytest.approx(6.5 / 4)
    assert hinge(logits, True, for_discriminator=False).item() == pytest.approx(-1.5 / 4)
    with pytest.raises(ValueError):
        hinge(logits, False, for_discriminator=False)
    with pytest.raises(ValueError, match="lsgan"):
        GANLoss("wgan")


def test_masked_l1_ignores_invalid_pixels() -> None:
    pred = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randn(2, 3, 8, 8)
    valid = torch.rand(2, 1, 8, 8) > 0.5
    loss = masked_l1(pred, target, valid)

    corrupted = target.clone()
    corrupted[~valid.expand_as(target)] = float("nan")
    loss_corrupted = masked_l1(pred, corrupted, valid)
    assert torch.isfinite(loss_corrupted)
    torch.testing.assert_close(loss_corrupted, loss)
    loss_corrupted.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~valid.expand_as(pred)] == 0).all()

    expected = (pred - target).abs()[valid.expand_as(pred)].mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, (pred - target).abs().mean())  # the mask did something


def test_masked_l1_all_valid_equals_l1_and_none_valid_is_zero() -> None:
    pred = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randn(2, 3, 8, 8)
    plain = nn.functional.l1_loss(pred, target)
    torch.testing.assert_close(masked_l1(pred, target, torch.ones(2, 1, 8, 8)), plain)
    torch.testing.assert_close(masked_l1(pred, target, None), plain)

    empty = masked_l1(pred, target, torch.zeros(2, 1, 8, 8, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_total_variation() -> None:
    assert total_variation(torch.ones(1, 2, 5, 5)).item() == 0.0
    ramp = torch.arange(4.0).repeat(4, 1).view(1, 1, 4, 4)  # +1 per column
    assert total_variation(ramp).item() == pytest.approx(1.0)
    checker = (torch.arange(4).view(4, 1) + torch.arange(4)).remainder(2).float().view(1, 1, 4, 4)
    assert total_variation(checker).item() == pytest.approx(2.0)


# ------------------------------------------------------------------------------ image pool


def test_image_pool_size_zero_passes_through() -> None:
    pool = ImagePool(0)
    images = torch.randn(3, 2, 4, 4)
    assert pool.query(images) is images


def test_image_pool_returns_only_seen_images() -> None:
    pool = ImagePool(2, seed=1)
    seen: list[torch.Tensor] = []
    returned_old = 0
    for step in range(30):
        batch = torch.full((2, 1, 2, 2), float(step)) + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
        seen.extend(batch)
        out = pool.query(batch)
        assert out.shape == batch.shape
        for image in out:
            assert any(torch.equal(image, old) for old in seen)
            returned_old += not any(torch.equal(image, new) for new in batch)
        assert len(pool) <= 2
    assert returned_old > 0  # history was actually used


def test_image_pool_state_dict_round_trip(tmp_path: Path) -> None:
    pool = ImagePool(3, seed=7)
    for _ in range(4):
        pool.query(torch.randn(2, 1, 4, 4))
    path = tmp_path / "pool.pt"
    torch.save(pool.state_dict(), path)
    restored = ImagePool(3, seed=999)
    restored.load_state_dict(torch.load(path, weights_only=True))

    for _ in range(5):
        batch = torch.randn(2, 1, 4, 4)
        torch.testing.assert_close(restored.query(batch), pool.query(batch))
    with pytest.raises(ValueError, match="size mismatch"):
        ImagePool(4).load_state_dict(pool.state_dict())


# ----------------------------------------------------------------------------------- init


def test_init_weights_statistics() -> None:
    conv = nn.Conv2d(64, 128, 3)
    norm = nn.BatchNorm2d(4096)
    net = nn.Sequential(conv, norm)
    init_weights(net)
    assert conv.weight.std().item() == pytest.approx(0.02, abs=1e-3)
    assert conv.weight.mean().abs().item() < 1e-3
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    assert norm.weight.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert norm.weight.std().item() == pytest.approx(0.02, abs=2e-3)
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_channels_last_layers_compute_what_they_replace() -> None:
    """keep_channels_last's instance norm and reflection pad: the same values and gradients as
    the torch layers (float64), outputs and gradients still channels_last, state dict kept."""
    from geotranslate.models import keep_channels_last

    torch.manual_seed(0)
    net = build_generator("resnet", 3, 2, ngf=4, n_blocks=1).double()
    swapped = build_generator("resnet", 3, 2, ngf=4, n_blocks=1).double()
    swapped.load_state_dict(net.state_dict())
    assert keep_channels_last(swapped) is swapped
    assert not any(type(m) is torch.nn.InstanceNorm2d for m in swapped.modules())
    assert swapped.state_dict().keys() == net.state_dict().keys()
    cl = torch.channels_last
    swapped = swapped.to(memory_format=cl)
    for n in (1, 2):  # one sample: batch norm directly; several: one per sample
        x = torch.randn(n, 3, 20, 24, dtype=torch.float64)
        xa = x.clone().requires_grad_()
        xb = x.clone().contiguous(memory_format=cl).requires_grad_()
        ya, yb = net(xa), swapped(xb)
        assert torch.allclose(ya, yb, atol=1e-10)
        (ya * ya.detach()).sum().backward()
        (yb * yb.detach()).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-10)
    pad = swapped.model[0]
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64).contiguous(memory_format=cl)
    assert pad(x).is_contiguous(memory_format=cl)
    assert torch.autograd.gradcheck(pad, (x.requires_grad_(),))
    norm = swapped.model[2]
    y = norm(x)
    assert y.is_contiguous(memory_format=cl)
    assert torch.allclose(y, torch.nn.functional.instance_norm(x), atol=1e-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the pad stays in the input's dtype
        assert pad(x.bfloat16()).dtype == torch.bfloat16
    probe = copy.deepcopy(swapped).to("meta")  # the trainer's dry run on the meta device
    x = torch.empty(2, 3, 20, 24, device="meta", dtype=torch.float64)
    assert probe(x).shape == (2, 2, 20, 24)
