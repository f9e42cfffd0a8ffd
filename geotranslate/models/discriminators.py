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
