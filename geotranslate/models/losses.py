"""Adversarial and reconstruction losses.

Losses are computed in float32 even under bf16 autocast: reductions over many pixels in
bfloat16 lose too much precision for a stable training signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geotranslate.choices import GAN_MODES


class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits.

    ``lsgan``: mean squared error to 1 (real) / 0 (fake), as in CycleGAN.
    ``vanilla``: binary cross-entropy with logits, as in the original GAN / pix2pix.
    ``hinge``: discriminator ``relu(1 - x)`` on real and ``relu(1 + x)`` on fake; generator
    ``-x`` (it only ever asks for "real", so ``target_is_real`` must be True there).
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown GAN loss mode {mode!r}; expected one of {GAN_MODES}")
        self.mode = mode

    def forward(
        self,
        prediction: torch.Tensor,
        target_is_real: bool,
        for_discriminator: bool = True,
    ) -> torch.Tensor:
        logits = prediction.float()
        if self.mode == "lsgan":
            target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
            return F.mse_loss(logits, target)
        if self.mode == "vanilla":
            target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
            return F.binary_cross_entropy_with_logits(logits, target)
        if for_discriminator:
            margin = 1.0 - logits if target_is_real else 1.0 + logits
            return F.relu(margin).mean()
        if not target_is_real:
            raise ValueError("hinge generator loss is defined only for target_is_real=True")
        return -logits.mean()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _as_weight(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Turn a (N,1,H,W) or (N,H,W) bool/float mask into float weights shaped for ``like``."""
    if valid.ndim == like.ndim - 1:
        valid = valid.unsqueeze(1)
    if valid.ndim != like.ndim or valid.shape[1] not in (1, like.shape[1]):
        raise ValueError(
            f"valid mask of shape {tuple(valid.shape)} does not broadcast over prediction of "
            f"shape {tuple(like.shape)}; expected (N, 1, H, W)"
        )
    return valid.to(dtype=torch.float32)


def masked_l1(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean absolute error over valid pixels only (nodata pixels must not steer training).

    ``valid`` is a bool (or 0/1 float, used as weights) mask of shape (N, 1, H, W) broadcast
    across channels. Invalid pixels are masked out *before* subtracting, so NaN/garbage in
    nodata areas cannot leak into the loss or its gradient. With no valid pixel the result is
    0 and still attached to the graph, so ``backward()`` works and yields zero gradients.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred32 = pred.float()
    target32 = target.float()
    if valid is None:
        return (pred32 - target32).abs().mean()
    weight = _as_weight(valid, pred32).expand_as(pred32)
    is_valid = weight > 0
    zeros = torch.zeros((), dtype=pred32.dtype, device=pred32.device)
    diff = (torch.where(is_valid, pred32, zeros) - torch.where(is_valid, target32, zeros)).abs()
    weighted_sum = (diff * weight).sum()
    total_weight = weight.sum()
    # clamp avoids 0/0; with no valid pixel the numerator is an exact, graph-connected zero.
    return weighted_sum / total_weight.clamp_min(torch.finfo(torch.float32).tiny)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |vertical| + mean |horizontal| neighbour difference.

    A small TV weight discourages high-frequency GAN artefacts (checkerboards, speckle).
    """
    if x.ndim < 2:
        raise ValueError(f"total_variation expects (..., H, W), got shape {tuple(x.shape)}")
    x32 = x.float()
    vertical = (x32[..., 1:, :] - x32[..., :-1, :]).abs()
    horizontal = (x32[..., :, 1:] - x32[..., :, :-1]).abs()
    zero = x32.sum() * 0  # keeps 1-px-wide inputs finite (mean of empty -> NaN otherwise)
    vertical_term = vertical.mean() if vertical.numel() else zero
    horizontal_term = horizontal.mean() if horizontal.numel() else zero
    return vertical_term + horizontal_term


def feature_matching_loss(
    fake_features: list[list[torch.Tensor]],
    real_features: list[list[torch.Tensor]],
    n_layers: int,
) -> torch.Tensor:
    """pix2pixHD's discriminator feature matching: L1 between fake and real stage outputs.

    ``*_features`` are a :class:`MultiScaleDiscriminator`'s outputs (per scale, the stage
    outputs with the logits last, which are left out). Each term is weighted
    ``1 / num_d * 4 / (n_layers + 1)`` as in NVIDIA's code; real features are detached.
    """
    if len(fake_features) != len(real_features):
        raise ValueError(f"{len(fake_features)} fake scales, {len(real_features)} real ones")
    weight = 1.0 / len(fake_features) * 4.0 / (n_layers + 1)
    total = fake_features[0][0].float().sum() * 0
    for fake_scale, real_scale in zip(fake_features, real_features, strict=True):
        for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + weight * F.l1_loss(fake.float(), real.detach().float())
    return total


class PatchNCELoss(nn.Module):
    """PatchNCE (Park et al. 2020): each output patch must pick its own input patch.

    ``query`` (B, P, C) are features of P patches of the output, ``key`` (B, P, C) of the
    input at the same P locations (both L2-normalised). For patch i of image b the logits are
    ``query[b, i] . key[b, j] / temperature`` over the P locations j of the same image; the
    positive is j = i, the others are the negatives. The loss is the cross-entropy, averaged
    over patches. Keys are detached (the reference does the same).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def logits(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """(B, P, P) similarities / temperature; the diagonal holds the positives."""
        if query.shape != key.shape or query.ndim != 3:
            raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must be "
                             "equal (B, P, C) shapes")
        return torch.bmm(query.float(), key.detach().float().transpose(1, 2)) / self.temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        logits = self.logits(query, key)
        batch, patches = logits.shape[:2]
        if patches == 0:
            return query.float().sum() * 0
        target = torch.arange(patches, device=logits.device).repeat(batch)
        return F.cross_entropy(logits.reshape(batch * patches, patches), target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
