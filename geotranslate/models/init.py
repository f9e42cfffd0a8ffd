"""Weight initialisation as in the pix2pix/CycleGAN reference (N(0, 0.02)).

GAN training is sensitive to the initial scale of the weights; the reference implementation
uses small normal weights rather than PyTorch's Kaiming-uniform default, so we do the same.
"""

from __future__ import annotations

from torch import nn

#: Attribute set to ``True`` on a submodule whose weights were loaded from a pretrained source
#: (e.g. an ImageNet encoder). :func:`init_weights` leaves such subtrees untouched.
PRETRAINED_FLAG = "_geotranslate_pretrained"


def mark_pretrained(module: nn.Module) -> None:
    """Flag ``module`` so that :func:`init_weights` does not overwrite its loaded weights."""
    setattr(module, PRETRAINED_FLAG, True)


def is_pretrained(module: nn.Module) -> bool:
    """Whether ``module`` was flagged by :func:`mark_pretrained`."""
    return bool(getattr(module, PRETRAINED_FLAG, False))


def _init_module(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.weight is not None:
            nn.init.normal_(module.weight, 1.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights ~ N(0, std), biases 0, BatchNorm weights ~ N(1, std).

    Subtrees flagged with :func:`mark_pretrained` (a pretrained smp encoder) are skipped, so
    only the freshly created decoder/head is re-initialised. Returns ``net`` for chaining.
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")

    def visit(module: nn.Module) -> None:
        if is_pretrained(module):
            return
        _init_module(module, std)
        for child in module.children():
            visit(child)

    visit(net)
    return net
