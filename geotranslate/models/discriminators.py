"""The PatchGAN discriminator from pix2pix/CycleGAN.

It classifies overlapping patches (70x70 px receptive field with ``n_layers=3``) instead of the
whole image, which penalises local texture errors and works on any input size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .norms import check_norm, conv_bias_for, make_norm

KERNEL_SIZE = 4
PADDING = 1
MAX_CHANNEL_MULTIPLIER = 8


class PatchDiscriminator(nn.Module):
    """PatchGAN: returns one real/fake logit per patch, shape (N, 1, H', W').

    At 256 px with ``n_layers=3`` the output is 30x30. No activation at the end: the losses
    take logits (BCEWithLogits, least squares or hinge).
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("ndf", ndf), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        check_norm(norm)
        self.in_channels = in_channels
        self.arch_kwargs: dict[str, Any] = {"ndf": ndf, "n_layers": n_layers, "norm": norm}
        bias = conv_bias_for(norm)

        # The first layer has no norm: normalising raw input statistics hurts (as in DCGAN).
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, KERNEL_SIZE, stride=2, padding=PADDING),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        multiplier = 1
        for layer_index in range(1, n_layers + 1):
            previous_multiplier = multiplier
            multiplier = min(2**layer_index, MAX_CHANNEL_MULTIPLIER)
            stride = 2 if layer_index < n_layers else 1
            layers += [
                nn.Conv2d(
                    ndf * previous_multiplier,
                    ndf * multiplier,
                    KERNEL_SIZE,
                    stride=stride,
                    padding=PADDING,
                    bias=bias,
                ),
                make_norm(norm, ndf * multiplier),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * multiplier, 1, KERNEL_SIZE, stride=1, padding=PADDING))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (each LeakyReLU, then the logits last): ``n_layers + 2``.

        The stages are pix2pixHD's ``getIntermFeat`` groups; the last entry equals
        ``forward(x)``. Feature matching compares all but the last.
        """
        out: list[torch.Tensor] = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)  # the next layer (a conv) leaves it as it is
        out.append(x)
        return out


def patch_output_size(size: int, n_layers: int) -> int:
    """Side of a :class:`PatchDiscriminator`'s output for ``size`` px input (<= 0: too small).

    Every feature map before the last conv is at least 2 px (instance norm needs more than
    one pixel); otherwise the result is 0.
    """
    for _ in range(n_layers):  # the stride-2 convs
        size //= 2
    if size < 3:  # the stride-1 conv with its norm, then the last conv, take 1 px each
        return 0
    return size - 2


def max_num_d(size: int, n_layers: int, limit: int = 3) -> int:
    """The most scales (<= ``limit``) a multi-scale discriminator can judge ``size`` px at."""
    num_d = 0
    while num_d < limit and patch_output_size(size, n_layers) >= 1:
        num_d += 1
        size = (size + 1) // 2  # 3x3 average pool, stride 2, padding 1
    return num_d


class MultiScaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs, the k-th on the input average-pooled k times (pix2pixHD).

    Pooling is 3x3, stride 2, padding 1, padding left out of the average, as in NVIDIA's
    pix2pixHD. ``forward`` returns, per scale (finest first), the list of stage outputs of
    :meth:`PatchDiscriminator.features` (logits last).
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        num_d: int = 3,
    ) -> None:
        super().__init__()
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.in_channels = in_channels
        self.arch_kwargs: dict[str, Any] = {"ndf": ndf, "n_layers": n_layers, "norm": norm,
                                            "num_d": num_d}
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm)
            for _ in range(num_d)
        )
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for k, net in enumerate(self.scales):
            if k:
                x = self.downsample(x)
            out.append(net.features(x))
        return out
