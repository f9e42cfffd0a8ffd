"""The receptive field of a generator, computed from its layers.

A forward pass over a small input records, for every convolution and pooling layer, its
kernel, stride and dilation and the size of the feature map it reads; the jump of a layer (how
many input pixels one of its input pixels spans) is the network's input size over that
feature map's size, rounded to a power of two (explicit padding layers make the map a little
larger). Each layer widens the receptive field by ``(kernel - 1) * dilation * jump`` input
pixels; a transposed convolution, a convolution on its ``stride`` times finer output grid, by
``(kernel - 1) * jump / stride``; a nearest-neighbour upsampling by ``scale``, whose output
pixel takes its value from an input pixel at one of ``scale`` phases, by
``(scale - 1) * jump / scale``, and a bilinear one, which interpolates two input pixels, by
``jump`` more (bounds: the measured fields of the ResNet generator and of a U-Net are a few px
smaller). The receptive field is 1 plus the sum over all layers. The
skips of the generators here (ResNet blocks, U-Net levels, smp U-Nets) only carry features of
layers already on the longest path, so the sum is that path's field: exact for the ResNet
generator with transposed convolutions, and a bound at most a few pixels above the measured
field otherwise (up-sampling phases do not all reach as far).

Normalization layers are taken as pointwise (their statistics are frozen for the scene at
inference, see :class:`geotranslate.models.norms.SceneNorm`); global poolings inside an
encoder (squeeze-excitation) are not counted.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.Upsample)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def receptive_field(net: nn.Module, in_channels: int | None = None) -> int:
    """Side in input pixels of the square of inputs that one output pixel of ``net`` depends on.

    ``in_channels`` defaults to ``net.in_channels``. The probe is one forward pass of a CPU
    copy over the smallest input the network takes (64 px, or twice its total stride).
    """
    from geotranslate.models import unwrap

    net = unwrap(net)
    channels = int(in_channels or net.in_channels)
    stride = int(getattr(net, "total_stride", 1))
    size = max(64, 2 * stride)
    records: list[tuple[nn.Module, int]] = []

    def hook(module, inputs, _output):
        records.append((module, int(inputs[0].shape[-1])))

    probe = copy.deepcopy(net).to("cpu").float().eval()
    handles = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, _LAYERS)]
    try:
        with torch.no_grad():
            probe(torch.zeros(1, channels, size, size))
    finally:
        for handle in handles:
            handle.remove()
    field = 1.0
    for module, width in records:
        jump = 2.0 ** round(math.log2(size / width))
        if isinstance(module, nn.Upsample):
            scale = int(_pair(module.scale_factor)[1])
            field += (scale - 1) * jump / scale
            if module.mode != "nearest":  # an output pixel interpolates two input pixels
                field += jump
            continue
        kernel = _pair(module.kernel_size)[1]
        layer_stride = _pair(module.stride if module.stride is not None else kernel)[1]
        dilation = _pair(getattr(module, "dilation", 1))[1]
        if isinstance(module, nn.ConvTranspose2d):
            field += (kernel - 1) * dilation * jump / layer_stride
        else:
            field += (kernel - 1) * dilation * jump
    return int(math.ceil(field))
