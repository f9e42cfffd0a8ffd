"""Image-to-image generators: CycleGAN's ResNet, pix2pix's U-Net and an smp U-Net.

Every generator records ``arch``, ``in_channels``, ``out_channels`` and ``arch_kwargs`` (all
constructor arguments, defaults filled in) so a checkpoint can state exactly how to rebuild it.
Outputs pass through tanh because the data pipeline scales bands to [-1, 1].
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from geotranslate.choices import DEFAULT_UPSAMPLE, PIX2PIX_DROPOUT, UNET_DROPOUT, UPSAMPLE_KINDS

from .init import mark_pretrained
from .norms import check_norm, conv_bias_for, make_norm

PADDING_KINDS: tuple[str, ...] = ("reflect", "replicate", "zero")


def dropout_rate(dropout: bool | float) -> float:
    """The rate a generator's ``dropout`` argument means: True is pix2pix's 0.5, False 0."""
    if isinstance(dropout, bool):
        return PIX2PIX_DROPOUT if dropout else 0.0
    rate = float(dropout)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    return rate


def check_upsample(upsample: str) -> str:
    if upsample not in UPSAMPLE_KINDS:
        raise ValueError(f"unknown upsample {upsample!r}; expected one of "
                         f"{', '.join(UPSAMPLE_KINDS)}")
    return upsample


def upsample_conv(in_channels: int, out_channels: int, upsample: str, *, bias: bool,
                  kernel_size: int, padding: str = "zero") -> nn.Module:
    """A layer that doubles height and width and maps ``in_channels`` to ``out_channels``.

    ``resize``: nearest x2 then a 3x3 convolution (``padding`` kind at its edges);
    ``transpose``: ``ConvTranspose2d`` of ``kernel_size`` (3 in the ResNet generator, 4 in
    the U-Net), exactly the layer of earlier versions.
    """
    if check_upsample(upsample) == "transpose":
        if kernel_size == 3:
            return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                                      output_padding=1, bias=bias)
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
    pad_layers, conv_pad = _padding_layer(padding, 1)
    mode = "bilinear" if upsample == "bilinear" else "nearest"
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), *pad_layers,
                         nn.Conv2d(in_channels, out_channels, 3, padding=conv_pad, bias=bias))


class PretrainedWeightsUnavailableError(RuntimeError):
    """Raised when ImageNet encoder weights were requested but could not be fetched."""


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_spatial_divisible(x: torch.Tensor, divisor: int, what: str) -> None:
    """Fail with a readable message instead of a cryptic shape mismatch deep in the net."""
    if x.ndim != 4:
        raise ValueError(f"{what} expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % divisor or width % divisor:
        raise ValueError(
            f"{what}: input size {height}x{width} is not divisible by {divisor}; "
            f"pad or crop chips to a multiple of {divisor} pixels"
        )


# --------------------------------------------------------------------------------------------
# ResNet generator (Johnson et al. / CycleGAN)
# --------------------------------------------------------------------------------------------


def _padding_layer(padding: str, amount: int) -> tuple[list[nn.Module], int]:
    """Return (explicit padding layers, conv padding) for a padding kind."""
    if padding == "reflect":
        return [nn.ReflectionPad2d(amount)], 0
    if padding == "replicate":
        return [nn.ReplicationPad2d(amount)], 0
    if padding == "zero":
        return [], amount
    raise ValueError(f"unknown padding {padding!r}; expected one of {', '.join(PADDING_KINDS)}")


class ResnetBlock(nn.Module):
    """conv3-norm-relu-conv3-norm with an identity skip; padding keeps the size."""

    def __init__(self, channels: int, norm: str, padding: str, dropout: bool | float) -> None:
        super().__init__()
        bias = conv_bias_for(norm)
        layers: list[nn.Module] = []
        pad_layers, conv_pad = _padding_layer(padding, 1)
        layers += [*pad_layers, nn.Conv2d(channels, channels, 3, padding=conv_pad, bias=bias)]
        layers += [make_norm(norm, channels), nn.ReLU(inplace=True)]
        rate = dropout_rate(dropout)
        if rate:
            layers.append(nn.Dropout(rate))
        pad_layers, conv_pad = _padding_layer(padding, 1)
        layers += [*pad_layers, nn.Conv2d(channels, channels, 3, padding=conv_pad, bias=bias)]
        layers.append(make_norm(norm, channels))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: c7s1-ngf, two stride-2 downs, residual blocks, two ups.

    The total stride is 4, so height and width must be multiples of 4 for the output to match
    the input size.
    """

    total_stride = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        padding: str = "reflect",
        dropout: bool | float = False,
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, ngf=ngf)
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        check_norm(norm)
        check_upsample(upsample)
        _padding_layer(padding, 1)  # validates the padding kind
        dropout_rate(dropout)
        self.arch = "resnet"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.arch_kwargs: dict[str, Any] = {
            "ngf": ngf,
            "n_blocks": n_blocks,
            "norm": norm,
            "padding": padding,
            "dropout": dropout,
            "upsample": upsample,
        }
        bias = conv_bias_for(norm)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=bias),
            make_norm(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        for level in range(2):
            channels = ngf * 2**level
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(norm, channels * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, padding, dropout) for _ in range(n_blocks)]
        for level in range(2):
            channels = ngf * 2 ** (2 - level)
            layers += [
                upsample_conv(channels, channels // 2, upsample, bias=bias, kernel_size=3,
                              padding=padding),
                make_norm(norm, channels // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_spatial_divisible(x, self.total_stride, "ResnetGenerator")
        return self.model(x)


# --------------------------------------------------------------------------------------------
# pix2pix U-Net
# --------------------------------------------------------------------------------------------

#: Number of decoder blocks next to the innermost one that get dropout (pix2pix uses 3).
UNET_DROPOUT_BLOCKS = 3


class UnetSkipBlock(nn.Module):
    """One U-Net level: down, the inner levels (``submodule``), up, concatenated with input.

    The outermost level returns the decoded image instead of the concatenation.
    """

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        input_channels: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        norm: str = "instance",
        dropout: float = 0.0,
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = submodule is None
        bias = conv_bias_for(norm)
        if input_channels is None:
            input_channels = outer_channels
        down_conv = nn.Conv2d(
            input_channels, inner_channels, kernel_size=4, stride=2, padding=1, bias=bias
        )
        # The innermost level has no skip, so its up-conv sees only its own features.
        up_in_channels = inner_channels if innermost else inner_channels * 2
        if outermost:
            up_conv = upsample_conv(up_in_channels, outer_channels, upsample, bias=True,
                                    kernel_size=4)
            down: list[nn.Module] = [down_conv]
            up: list[nn.Module] = [nn.ReLU(inplace=True), up_conv, nn.Tanh()]
        else:
            up_conv = upsample_conv(up_in_channels, outer_channels, upsample, bias=bias,
                                    kernel_size=4)
            # Not in-place (unlike the reference): ``x`` is reused by the skip. The parent's
            # up path starts with ReLU, and relu(leaky_relu(x)) == relu(x), so outputs match.
            down = [nn.LeakyReLU(0.2), down_conv]
            if not innermost:
                down.append(make_norm(norm, inner_channels))
            up = [nn.ReLU(inplace=True), up_conv, make_norm(norm, outer_channels)]
            if dropout:
                up.append(nn.Dropout(dropout))
        middle: list[nn.Module] = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """The pix2pix U-Net: ``num_downs`` stride-2 levels with skip connections.

    Channels double per level from ``ngf`` up to ``ngf * 8``. The three decoder blocks just
    outside the innermost one use dropout at the rate ``dropout`` (True: pix2pix's 0.5;
    False or 0: none); at ``num_downs=8`` and ``dropout=True`` (and ``upsample="transpose"``)
    this is exactly the reference network. Height and width must be divisible by
    ``2**num_downs``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool | float = UNET_DROPOUT,
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels, out_channels=out_channels, num_downs=num_downs, ngf=ngf
        )
        check_norm(norm)
        check_upsample(upsample)
        dropout_rate(dropout)
        self.arch = "unet"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_downs = num_downs
        self.arch_kwargs: dict[str, Any] = {
            "num_downs": num_downs,
            "ngf": ngf,
            "norm": norm,
            "dropout": dropout,
            "upsample": upsample,
        }

        def inner_channels_at(level: int) -> int:
            return ngf * min(2**level, 8)

        block: nn.Module | None = None
        for level in range(num_downs - 1, 0, -1):
            levels_outside_innermost = num_downs - 1 - level
            use_dropout = (dropout_rate(dropout)
                           if 1 <= levels_outside_innermost <= UNET_DROPOUT_BLOCKS else 0.0)
            block = UnetSkipBlock(
                outer_channels=inner_channels_at(level - 1),
                inner_channels=inner_channels_at(level),
                submodule=block,
                norm=norm,
                dropout=use_dropout,
                upsample=upsample,
            )
        self.model = UnetSkipBlock(
            outer_channels=out_channels,
            inner_channels=inner_channels_at(0),
            input_channels=in_channels,
            submodule=block,
            outermost=True,
            norm=norm,
            upsample=upsample,
        )

    @property
    def total_stride(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_spatial_divisible(x, self.total_stride, f"UnetGenerator(num_downs={self.num_downs})")
        return self.model(x)


# --------------------------------------------------------------------------------------------
# segmentation_models_pytorch U-Net
# --------------------------------------------------------------------------------------------


TIMM_UNIVERSAL_PREFIX = "tu-"


def _smp_encoder_names() -> list[str]:
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def _smp_has_imagenet_weights(encoder: str) -> bool:
    if encoder.startswith(TIMM_UNIVERSAL_PREFIX):
        return True  # timm resolves the pretrained tag itself; a failure surfaces at download
    from segmentation_models_pytorch.encoders import encoders

    return "imagenet" in encoders[encoder].get("pretrained_settings", {})


def _download_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the weights could not be fetched", across HTTP client libraries.

    ``urllib`` (torch hub), ``requests`` and the huggingface_hub errors derive from OSError;
    ``httpx`` (newer huggingface_hub) does not, so it is added when installed.
    """
    error_types: list[type[BaseException]] = [OSError]
    try:
        import httpx

        error_types.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(error_types)


class SmpUnetGenerator(nn.Module):
    """A ``segmentation_models_pytorch.Unet`` with a tanh head, optionally ImageNet-pretrained.

    ``norm`` applies to the decoder (the encoder keeps its own BatchNorm). Nothing is fetched
    unless ``pretrained=True``; then the ImageNet weights are downloaded at construction and
    a :class:`PretrainedWeightsUnavailableError` explains what to do when that fails.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        encoder: str = "resnet34",
        pretrained: bool = False,
        norm: str = "batch",
        encoder_depth: int = 5,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels, out_channels=out_channels, encoder_depth=encoder_depth
        )
        check_norm(norm)
        import segmentation_models_pytorch as smp  # heavy import, deferred until needed

        if not encoder.startswith(TIMM_UNIVERSAL_PREFIX) and encoder not in _smp_encoder_names():
            raise ValueError(
                f"unknown smp encoder {encoder!r}; list valid names with "
                "`python -c 'import segmentation_models_pytorch as smp; "
                "print(smp.encoders.get_encoder_names())'` (e.g. resnet18, resnet34, "
                "efficientnet-b0), or use a timm encoder as 'tu-<timm model name>'"
            )
        if pretrained and not _smp_has_imagenet_weights(encoder):
            raise ValueError(f"encoder {encoder!r} has no ImageNet weights; use pretrained=False")

        self.arch = f"smp-unet:{encoder}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.encoder_depth = encoder_depth
        self.arch_kwargs: dict[str, Any] = {
            "pretrained": pretrained,
            "norm": norm,
            "encoder_depth": encoder_depth,
        }
        decoder_channels = [16 * 2**i for i in range(encoder_depth)][::-1]
        try:
            self.unet = smp.Unet(
                encoder_name=encoder,
                encoder_depth=encoder_depth,
                encoder_weights=_smp_encoder_weights(encoder, pretrained),
                in_channels=in_channels,
                classes=out_channels,
                activation=None,
                decoder_channels=decoder_channels,
                **_smp_decoder_norm_kwargs(smp, norm),
            )
        except _download_error_types() as exc:
            if not pretrained:
                raise
            raise PretrainedWeightsUnavailableError(
                f"could not download ImageNet weights for encoder {encoder} (offline?); "
                "train without --pretrained or pre-populate the torch hub cache "
                "(the Hugging Face hub cache for smp >= 0.5) "
                f"({exc.__class__.__name__}: {exc})"
            ) from exc
        if norm == "instance":
            _swap_batchnorm_for_instancenorm(self.unet.decoder)
        if pretrained:
            mark_pretrained(self.unet.encoder)
        self.tanh = nn.Tanh()

    @property
    def total_stride(self) -> int:
        return 2**self.encoder_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_spatial_divisible(x, self.total_stride, f"SmpUnetGenerator({self.arch})")
        return self.tanh(self.unet(x))


def _smp_encoder_weights(encoder: str, pretrained: bool) -> str | bool | None:
    """smp wants ``"imagenet"`` for its own encoders and ``True`` for timm-universal ones."""
    if not pretrained:
        return None
    return True if encoder.startswith(TIMM_UNIVERSAL_PREFIX) else "imagenet"


def _smp_decoder_norm_kwargs(smp_module: Any, norm: str) -> dict[str, Any]:
    """Decoder BatchNorm on/off, for both the old and the new smp keyword.

    Instance norm is obtained by building with BatchNorm and swapping it afterwards, which
    works on every smp version.
    """
    use_norm = norm != "none"
    parameters = inspect.signature(smp_module.Unet.__init__).parameters
    if "decoder_use_norm" in parameters:
        return {"decoder_use_norm": "batchnorm" if use_norm else False}
    return {"decoder_use_batchnorm": use_norm}


def _swap_batchnorm_for_instancenorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm("instance", child.num_features))
        else:
            _swap_batchnorm_for_instancenorm(child)
