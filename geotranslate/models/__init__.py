"""Networks, losses and training helpers; the one place that maps architecture names to code.

Architectures: ``"resnet"`` (CycleGAN ResNet), ``"unet"`` (pix2pix U-Net) and
``"smp-unet:<encoder>"`` (segmentation_models_pytorch U-Net, e.g. ``"smp-unet:resnet34"``).
A :class:`GeneratorSpec` records how a generator was built so checkpoints can rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from geotranslate.choices import LEGACY_UPSAMPLE

from .discriminators import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    max_num_d,
    patch_output_size,
)
from .generators import (
    PretrainedWeightsUnavailableError,
    ResnetGenerator,
    SmpUnetGenerator,
    UnetGenerator,
)
from .image_pool import ImagePool
from .init import init_weights
from .layout import keep_channels_last
from .losses import GANLoss, PatchNCELoss, feature_matching_loss, masked_l1, total_variation
from .nce import PatchSampleMLP, default_nce_layers, encoder_features, layer_channels
from .perceptual import VGGLoss, load_vgg19_features

__all__ = [
    "GENERATOR_ARCHS",
    "GANLoss",
    "GeneratorSpec",
    "ImagePool",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "PatchNCELoss",
    "PatchSampleMLP",
    "PretrainedWeightsUnavailableError",
    "ResnetGenerator",
    "SmpUnetGenerator",
    "UnetGenerator",
    "VGGLoss",
    "build_discriminator",
    "build_generator",
    "build_multiscale_discriminator",
    "default_nce_layers",
    "default_unet_depth",
    "encoder_features",
    "feature_matching_loss",
    "generator_spec",
    "init_weights",
    "keep_channels_last",
    "layer_channels",
    "load_vgg19_features",
    "masked_l1",
    "max_num_d",
    "patch_output_size",
    "total_variation",
    "unet_depth_for",
    "unwrap",
]

SMP_UNET_PREFIX = "smp-unet:"
#: Architecture names accepted by :func:`build_generator` (smp takes an encoder suffix).
GENERATOR_ARCHS: tuple[str, ...] = ("resnet", "unet", f"{SMP_UNET_PREFIX}<encoder>")


def build_generator(
    arch: str,
    in_channels: int,
    out_channels: int,
    *,
    init: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a generator by architecture name.

    ``kwargs`` are the architecture's own constructor arguments (``ngf``, ``n_blocks``,
    ``norm``, ``padding``, ``dropout``, ``num_downs``, ``pretrained``, ``encoder_depth``).
    With ``init`` the weights get the reference N(0, 0.02) initialisation (a pretrained smp
    encoder is left as loaded). The result carries ``arch``, ``in_channels``,
    ``out_channels`` and ``arch_kwargs``; see :func:`generator_spec`.
    """
    if arch == "resnet":
        net: nn.Module = ResnetGenerator(in_channels, out_channels, **kwargs)
    elif arch == "unet":
        net = UnetGenerator(in_channels, out_channels, **kwargs)
    elif arch.startswith(SMP_UNET_PREFIX) and len(arch) > len(SMP_UNET_PREFIX):
        encoder = arch[len(SMP_UNET_PREFIX) :]
        net = SmpUnetGenerator(in_channels, out_channels, encoder=encoder, **kwargs)
    else:
        raise ValueError(
            f"unknown generator architecture {arch!r}; valid: {', '.join(GENERATOR_ARCHS)} "
            f"(e.g. '{SMP_UNET_PREFIX}resnet34')"
        )
    if init:
        init_weights(net)
    return net


def build_discriminator(
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
    *,
    init: bool = True,
) -> PatchDiscriminator:
    """Build the PatchGAN discriminator (``in_channels`` = input bands [+ condition bands])."""
    net = PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm)
    if init:
        init_weights(net)
    return net


def build_multiscale_discriminator(
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
    num_d: int = 3,
    *,
    init: bool = True,
) -> MultiScaleDiscriminator:
    """Build pix2pixHD's ``num_d`` PatchGANs at halving scales."""
    net = MultiScaleDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm, num_d=num_d)
    if init:
        init_weights(net)
    return net


def default_unet_depth(size: int) -> int:
    """The U-Net depth used when none is asked for: the deepest that ``size`` px chips
    support (:func:`unet_depth_for`) whose receptive field, 3 * 2**(depth + 1) - 5 px, fits in
    the chip (128 -> 4, 91 px; 256 -> 5, 187 px; 64 -> 3, 43 px).

    A deeper U-Net sees more than a tile, so its output depends on where the tile edges fall
    (2.6 grey levels between tile 128 and 256 at depth 7 on 128 px chips); this one gave 0.05
    on the quality benchmark (DEM -> hillshade, 200 iterations; docs/benchmarks.md), with a
    higher SSIM but a lower PSNR there.
    """
    depth = unet_depth_for(size)
    while depth > 1 and 3 * 2 ** (depth + 1) - 5 > size:
        depth -= 1
    return depth


def unet_depth_for(size: int, max_downs: int = 8) -> int:
    """Largest U-Net depth <= ``max_downs`` that ``size`` px chips support.

    ``size`` must be divisible by ``2**depth`` (so the innermost feature map is >= 1 px and
    the skips line up): 256 -> 8, 64 -> 6, 48 -> 4.
    """
    if size < 2:
        raise ValueError(f"chip size must be >= 2 px for a U-Net, got {size}")
    if max_downs < 1:
        raise ValueError(f"max_downs must be >= 1, got {max_downs}")
    depth = 0
    while depth < max_downs and size % 2 ** (depth + 1) == 0:
        depth += 1
    if depth == 0:
        raise ValueError(f"chip size {size} is odd; a U-Net needs sizes divisible by 2")
    return depth


@dataclass(frozen=True)
class GeneratorSpec:
    """How to rebuild a generator: plain types only, so it fits JSON or a weights-only file."""

    arch: str
    in_channels: int
    out_channels: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorSpec:
        missing = {"arch", "in_channels", "out_channels"} - set(data)
        if missing:
            raise ValueError(f"generator spec is missing {sorted(missing)}: {data!r}")
        kwargs = dict(data.get("kwargs", {}))
        if data["arch"] in ("resnet", "unet"):
            # specs written before ``upsample`` existed: their decoders transposed
            kwargs.setdefault("upsample", LEGACY_UPSAMPLE)
        return cls(
            arch=str(data["arch"]),
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
            kwargs=kwargs,
        )

    def build(self, *, fetch_pretrained: bool = False, init: bool = True) -> nn.Module:
        """Rebuild the architecture.

        By default ``pretrained`` is dropped: when restoring a checkpoint its state_dict
        supplies every weight, so downloading ImageNet weights would be wasted (and fails
        offline). The state_dict keys and shapes do not depend on it.
        """
        kwargs = dict(self.kwargs)
        if not fetch_pretrained and "pretrained" in kwargs:
            kwargs["pretrained"] = False
        return build_generator(self.arch, self.in_channels, self.out_channels, init=init, **kwargs)


def unwrap(net: nn.Module) -> nn.Module:
    """See through torch.compile (``_orig_mod``) and DataParallel/DDP (``module``) wrappers."""
    while True:
        if hasattr(net, "_orig_mod"):
            net = net._orig_mod
        elif isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        else:
            return net


def generator_spec(net: nn.Module) -> GeneratorSpec:
    """The :class:`GeneratorSpec` of a generator made by :func:`build_generator`."""
    inner = unwrap(net)
    try:
        return GeneratorSpec(
            arch=inner.arch,
            in_channels=inner.in_channels,
            out_channels=inner.out_channels,
            kwargs=dict(inner.arch_kwargs),
        )
    except AttributeError as exc:
        raise TypeError(
            f"{type(inner).__name__} does not record its architecture; "
            "build it with geotranslate.models.build_generator"
        ) from exc
