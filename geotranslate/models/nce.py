"""What CUT's PatchNCE loss needs from a generator: encoder features, sampled patches, heads.

:func:`encoder_features` runs the first layers of a :class:`ResnetGenerator` and keeps the
outputs of the chosen layers (the "NCE layers"); :class:`PatchSampleMLP` samples the same
patch locations in the input's and the output's features (only where the valid mask is) and
projects each through its layer's 2-layer MLP head to an L2-normalised vector (the
reference's ``PatchSampleF``). Heads are built eagerly from the channel counts, so a
state_dict round-trips before the first step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .generators import ResnetGenerator, _check_spatial_divisible

#: the paper's NCE layers (input, first downsampling conv, second downsampling's norm, blocks
#: 3 and 7 of 9): our ResnetGenerator's layer list is the reference's (no antialiasing)
PAPER_NCE_LAYERS = (0, 4, 8, 12, 16)
#: index of the first residual block in ResnetGenerator.model
FIRST_BLOCK = 10


def encoder_layer_count(net: ResnetGenerator) -> int:
    """Layers up to the last residual block (the encoder part NCE layers may come from)."""
    return FIRST_BLOCK + int(net.arch_kwargs["n_blocks"])


def default_nce_layers(net: ResnetGenerator) -> tuple[int, ...]:
    """The paper's layers that ``net`` has (all of them from 9 residual blocks on)."""
    return tuple(i for i in PAPER_NCE_LAYERS if i < encoder_layer_count(net))


def layer_channels(net: ResnetGenerator, layers: tuple[int, ...]) -> list[int]:
    """Channels of the output of each layer in ``layers`` (from the convs before it)."""
    channels, out, modules = net.in_channels, [], list(net.model)
    for index, module in enumerate(modules[: max(layers) + 1]):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            channels = module.out_channels
        if index in layers:
            out.append(channels)
    return out


def check_nce_layers(net: nn.Module, layers: tuple[int, ...]) -> None:
    if not isinstance(net, ResnetGenerator):
        raise ValueError(f"NCE layers need the resnet generator, not {type(net).__name__}")
    limit = encoder_layer_count(net)
    if not layers or len(set(layers)) != len(layers) or list(layers) != sorted(layers) \
            or layers[0] < 0 or layers[-1] >= limit:
        raise ValueError(f"NCE layers {','.join(map(str, layers))}: give distinct increasing "
                         f"layer indices from 0 to {limit - 1} (this generator's encoder)")


def encoder_features(net: ResnetGenerator, x: torch.Tensor,
                     layers: tuple[int, ...]) -> list[torch.Tensor]:
    """The outputs of ``net.model[i]`` for each i in ``layers``, running no further."""
    _check_spatial_divisible(x, net.total_stride, "ResnetGenerator")
    out = []
    modules = list(net.model)
    for index, module in enumerate(modules[: layers[-1] + 1]):
        x = module(x)
        if index in layers:
            following = modules[index + 1] if index + 1 < len(modules) else None
            in_place = getattr(following, "inplace", False)  # a ReLU(inplace) would change it
            out.append(x.clone() if in_place else x)
    return out


def mask_at(valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (N, 1, H, W) valid mask brought to a feature map's size: (N, height, width) bool.

    A larger map (the reflection-padded input) pads the mask the same way; a smaller one
    counts a location valid only when every pixel it pools is valid.
    """
    mask = (valid > 0).float()
    h, w = mask.shape[-2:]
    if height > h or width > w:
        pad_h, pad_w = (height - h) // 2, (width - w) // 2
        mask = F.pad(mask, (pad_w, width - w - pad_w, pad_h, height - h - pad_h),
                     mode="reflect")
    elif height < h or width < w:
        mask = 1 - F.adaptive_max_pool2d(1 - mask, (height, width))
    return mask[:, 0] > 0.5


class PatchSampleMLP(nn.Module):
    """Per NCE layer, a Linear-ReLU-Linear head (``units`` wide) to L2-normalised vectors."""

    def __init__(self, channels: list[int], units: int = 256) -> None:
        super().__init__()
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        self.channels = list(channels)
        self.arch_kwargs: dict[str, Any] = {"channels": list(channels), "units": units}
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, units), nn.ReLU(inplace=True), nn.Linear(units, units))
            for c in channels
        )

    @staticmethod
    def sample_ids(feature: torch.Tensor, num_patches: int,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P) flat locations drawn without replacement among the valid ones.

        P is ``num_patches`` or the fewest valid locations of any image in the batch (0 when
        one image has none). Draws come from torch's global generator, as in the reference.
        """
        batch, _, height, width = feature.shape
        scores = torch.rand(batch, height * width, device=feature.device)
        if valid is not None:
            mask = mask_at(valid, height, width).reshape(batch, -1)
            scores = torch.where(mask, scores, torch.full_like(scores, -1.0))
            patches = min(num_patches, int(mask.sum(1).min()))
        else:
            patches = min(num_patches, height * width)
        return scores.topk(patches, dim=1).indices

    def forward(self, features: list[torch.Tensor], num_patches: int = 256,
                patch_ids: list[torch.Tensor] | None = None,
                valid: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sampled, projected patches (B, P, units) per layer, and the locations used."""
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} feature maps for {len(self.heads)} heads")
        out, ids_used = [], []
        for k, (feature, head) in enumerate(zip(features, self.heads, strict=True)):
            ids = patch_ids[k] if patch_ids is not None else \
                self.sample_ids(feature, num_patches, valid)
            flat = feature.flatten(2).transpose(1, 2)  # (B, HW, C)
            picked = torch.gather(flat, 1, ids[..., None].expand(-1, -1, flat.shape[-1]))
            projected = head(picked)
            out.append(F.normalize(projected.float(), dim=-1))
            ids_used.append(ids)
        return out, ids_used
