"""Layers that keep a channels_last tensor channels_last, forward and backward.

On a CPU in bf16, oneDNN convolves in channels_last (NHWC): a network in the default layout
pays a conversion of every convolution's input and output. With channels_last the
convolutions are free of them, but ``nn.InstanceNorm2d`` (which reshapes to (1, N*C, H, W))
and the backward of ``nn.ReflectionPad2d`` return the default layout, and each following
convolution converts back: 44 % of a CycleGAN step went to ``copy_``. :func:`keep_channels_last`
swaps those two layers for the ones below, which compute the same values (same parameters, no
state of their own) without leaving channels_last. Both stay instances of the layers they
replace, so code that looks for instance norms (scene statistics) still finds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelsLastInstanceNorm2d(nn.InstanceNorm2d):
    """Instance norm (no running statistics) as a batch norm of each sample in training mode,
    which has channels_last kernels; the output keeps the input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_running_stats or x.ndim != 4:
            return super().forward(x)

        def norm(sample: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(sample, None, None, self.weight, self.bias, True, 0.0, self.eps)

        if x.shape[0] == 1:
            return norm(x)
        return torch.cat([norm(x[i:i + 1]) for i in range(x.shape[0])])


class _ReflectionPad(torch.autograd.Function):
    """Reflection padding in the input's dtype (autocast would make it float32) and layout,
    with a backward that folds the borders back without leaving the gradient's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
        ctx.padding = padding
        left, right, top, bottom = padding
        if x.ndim != 4 or max(top, bottom) >= x.shape[-2] or max(left, right) >= x.shape[-1]:
            return F.pad(x, padding, mode="reflect")  # (F.pad explains what does not fit)
        # mirrored borders joined by torch.cat (no autocast cast, the input's layout): half
        # the CPU time of F.pad's reflect kernel on a channels_last bf16 tensor
        rows = [x[..., 1:top + 1, :].flip(-2), x, x[..., -bottom - 1:-1, :].flip(-2)]
        x = torch.cat([r for r in rows if r.shape[-2]], dim=-2)
        columns = [x[..., 1:left + 1].flip(-1), x, x[..., -right - 1:-1].flip(-1)]
        return torch.cat([c for c in columns if c.shape[-1]], dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        left, right, top, bottom = ctx.padding
        width = grad.shape[-1] - left - right
        height = grad.shape[-2] - top - bottom
        columns = grad[..., left:left + width].clone()
        if left:
            columns[..., 1:left + 1] += grad[..., :left].flip(-1)
        if right:
            columns[..., width - right - 1:width - 1] += grad[..., left + width:].flip(-1)
        rows = columns[..., top:top + height, :].clone()
        if top:
            rows[..., 1:top + 1, :] += columns[..., :top, :].flip(-2)
        if bottom:
            rows[..., height - bottom - 1:height - 1, :] += columns[..., top + height:, :].flip(-2)
        return rows, None


class ChannelsLastReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` whose output and gradient keep the input's layout and dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReflectionPad.apply(x, tuple(self.padding))


def keep_channels_last(net: nn.Module) -> nn.Module:
    """Swap ``net``'s instance norms (without running statistics) and reflection paddings for
    the channels_last-keeping layers above, in place; returns ``net``.

    The state dict does not change (neither layer has parameters or buffers of its own beyond
    the affine ones, which are moved over).
    """
    _swap(net)
    return net


def _swap(net: nn.Module) -> int:
    swapped = 0
    for name, child in net.named_children():
        if type(child) is nn.InstanceNorm2d and not child.track_running_stats:
            new = ChannelsLastInstanceNorm2d(child.num_features, eps=child.eps,
                                             momentum=child.momentum, affine=child.affine)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            setattr(net, name, new)
            swapped += 1
        elif type(child) is nn.ReflectionPad2d:
            setattr(net, name, ChannelsLastReflectionPad2d(child.padding))
            swapped += 1
        else:
            swapped += _swap(child)
    return swapped
