"""Normalisation layer choice shared by the generators and the discriminator."""

from __future__ import annotations

from typing import Literal

from torch import nn

NormKind = Literal["instance", "batch", "none"]
NORM_KINDS: tuple[str, ...] = ("instance", "batch", "none")


def check_norm(norm: str) -> str:
    """Validate ``norm`` early so a typo fails at construction, not deep inside a layer."""
    if norm not in NORM_KINDS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORM_KINDS)}")
    return norm


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build the normalisation layer for ``channels`` feature maps.

    Instance norm follows the reference (no affine, no running stats); ``"none"`` gives an
    Identity, which keeps the network translation-equivariant.
    """
    check_norm(norm)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    return nn.Identity()


def conv_bias_for(norm: str) -> bool:
    """Convs followed by BatchNorm need no bias (BN's shift replaces it); others keep one."""
    return check_norm(norm) != "batch"
