"""pix2pixHD's perceptual loss on VGG19 features, from a weights file the user supplies.

Pretrained VGG weights cannot be downloaded here, so :func:`load_vgg19_features` builds
``torchvision.models.vgg19(weights=None).features`` and fills it from a local file:
safetensors, or a torch state_dict read with ``torch.load(weights_only=True)`` (never
unpickled). Keys may be those of the whole VGG19 (``features.0.weight`` ...) or of its
``features`` part alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geotranslate.errors import InputError, StorageError, first_line

#: pix2pixHD's slices of vgg19.features (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1) and
#: their weights
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def load_vgg19_features(path: str | Path) -> nn.Sequential:
    """``vgg19().features`` with the weights in ``path``, or one clear error naming the file."""
    from torchvision.models.vgg import cfgs, make_layers

    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path}: VGG weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one line
        raise InputError(f"{path}: not a readable VGG19 weights file ({first_line(e)})") \
            from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a VGG19 state_dict, got {type(state).__name__}")
    features = make_layers(cfgs["E"])  # vgg19(weights=None).features, without the classifier
    prefix = "features."
    if any(str(k).startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{path}: does not hold VGG19 weights ({first_line(e)})") \
            from None
    return features


class VGGLoss(nn.Module):
    """Weighted L1 between VGG19 features of the fake and the (detached) real image.

    Images are in [-1, 1] and fed as they are (pix2pixHD does the same). VGG wants three
    channels: ``bands`` (0-based) picks them; by default the first three, or the mean of all
    bands repeated when there are fewer. The VGG weights are frozen and not trained.
    """

    def __init__(self, features: nn.Sequential, bands: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if bands is not None and len(bands) != 3:
            raise ValueError(f"VGG takes 3 bands, got {len(bands)}")
        self.bands = bands
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in VGG_SLICES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGLoss:  # the frozen VGG always runs in eval mode
        return super().train(False)

    def _three_bands(self, x: torch.Tensor) -> torch.Tensor:
        if self.bands is not None:
            return x[:, list(self.bands)]
        if x.shape[1] >= 3:
            return x[:, :3]
        return x.mean(1, keepdim=True).expand(-1, 3, -1, -1)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x, y = self._three_bands(fake), self._three_bands(real).detach()
        total = fake.float().sum() * 0
        for weight, stage in zip(VGG_WEIGHTS, self.slices, strict=True):
            x, y = stage(x), stage(y)
            total = total + weight * F.l1_loss(x.float(), y.float().detach())
        return total
