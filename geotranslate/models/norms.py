"""Normalisation layer choice shared by the generators and the discriminator."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from geotranslate.choices import NORM_KINDS


def check_norm(norm: str) -> str:
    """Validate ``norm`` early so a typo fails at construction, not deep inside a layer."""
    if norm not in NORM_KINDS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORM_KINDS)}")
    return norm


def make_norm(norm: str, channels: int) -> nn.Module:
    """Build the normalisation layer for ``channels`` feature maps.

    Instance norm follows the reference (no affine, no running stats); ``"layer"`` is
    :class:`PixelLayerNorm`; ``"none"`` gives an Identity, which keeps the network
    translation-equivariant.
    """
    check_norm(norm)
    if norm == "layer":
        return PixelLayerNorm(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    return nn.Identity()


class PixelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel, with a per-channel scale and shift.

    Pointwise in space: a pixel's output depends on its own feature vector only, never on the
    rest of the chip or tile, so the network normalizes identically in training and in a tiled
    prediction of any tile size. Computed in float32 (``F.layer_norm`` on the channels-last
    view), whatever the autocast precision.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1).float(), x.shape[1:2], self.weight.float(),
                         self.bias.float(), self.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


def conv_bias_for(norm: str) -> bool:
    """Convs followed by BatchNorm need no bias (BN's shift replaces it); others keep one."""
    return check_norm(norm) != "batch"


# ---- scene statistics: instance norm made independent of the tile --------------------------


class SceneNorm(nn.Module):
    """Instance norm whose statistics are those of a whole scene instead of each input.

    It replaces an ``nn.InstanceNorm2d`` at inference. While :attr:`calibrating` it normalizes
    its batch with the scene's statistics and keeps them: the mean over the whole batch (every
    sample tile, every pixel) and the mean of the tiles' own variances. The sample's tiles have
    the training chips' size, so features keep the scale the network saw in training (the
    variance of the tiles' means is left out: with it, features shrink and the error against
    the truth grows, measured in tools/bench_tiledep.py). Afterwards it normalizes every input
    with the kept statistics, so the output no longer depends on how the scene was cut into
    tiles. A forward pass over the
    sample in calibration mode calibrates all layers at once, each layer seeing the earlier
    layers already normalized with their scene statistics, which is what progressive
    layer-by-layer freezing gives.
    """

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None
        self.register_buffer("mean", torch.zeros(norm.num_features))
        self.register_buffer("var", torch.ones(norm.num_features))
        self.calibrating = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            # reduced as earlier versions did, so their model files predict bit for bit alike
            xf = x.float()
            self.mean = xf.mean(dim=(0, 2, 3))
            self.var = xf.var(dim=(2, 3), unbiased=False).mean(dim=0)
        scale = torch.rsqrt(self.var + self.eps)
        shift = -self.mean * scale
        if self.weight is not None:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


def norm_layer_kinds(net: nn.Module) -> set[str]:
    """Which kinds of normalization layers ``net`` holds: a subset of {"instance", "batch",
    "layer"}."""
    kinds = set()
    for module in net.modules():
        if isinstance(module, (nn.InstanceNorm2d, SceneNorm)):
            kinds.add("instance")
        elif isinstance(module, PixelLayerNorm):
            kinds.add("layer")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            kinds.add("batch")
    return kinds


def _swap_instance_norms(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
            setattr(module, name, SceneNorm(child))
            count += 1
        else:
            count += _swap_instance_norms(child)
    return count


def scene_normalized(net: nn.Module, sample: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of ``net`` whose instance norms use the statistics of ``sample`` (N, C, H, W).

    Returns (the copy, in eval mode, and how many layers were calibrated; 0 means the network
    has no instance norm and the copy behaves as ``net``). ``net`` itself is left unchanged.
    The whole sample is one batch, so its size bounds the memory the calibration takes.
    """
    frozen = copy.deepcopy(net).eval()
    layers = _swap_instance_norms(frozen)
    if layers:
        with torch.inference_mode():
            frozen(sample)
        for module in frozen.modules():
            if isinstance(module, SceneNorm):
                module.calibrating = False
                module.mean, module.var = module.mean.clone(), module.var.clone()
    return frozen, layers
