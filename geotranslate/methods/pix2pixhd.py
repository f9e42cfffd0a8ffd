"""Pix2PixHD-style paired training (Wang et al. 2018, without the instance/label maps).

The generator is the resnet ("global") generator; d_b is ``num_d`` PatchGANs on (A, B) at
halving scales; the generator loss adds discriminator feature matching (L1 over every
discriminator stage, weights as NVIDIA's code), optionally the VGG19 perceptual loss (only
from a user-supplied weights file) and an L1 loss to B. The coarse-to-fine local enhancer is
not offered (yet).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from geotranslate.errors import OptionError
from geotranslate.models import (
    VGGLoss,
    build_multiscale_discriminator,
    feature_matching_loss,
    load_vgg19_features,
    masked_l1,
    max_num_d,
    total_variation,
)
from geotranslate.settings import Setting

from .base import GAN_RAMP, GAN_WARMUP, Method
from .pix2pix import LAMBDA_L1


class Pix2PixHD(Method):
    """g_ab (resnet) translates A to B; d_b judges (A, B) pairs at ``num_d`` scales."""

    name = "Pix2PixHD"
    directions = ("a2b",)
    paired = True
    OPTIONS = (
        Setting("num_d", int, None, "Discriminator scales (inputs halved by average pooling).",
                minimum=1, default_text="3, or as many as the chips allow"),
        Setting("lambda_feat", float, 10.0, "Discriminator feature-matching weight.",
                minimum=0),
        Setting("lambda_vgg", float, 0.0, "VGG19 perceptual weight (needs --vgg-weights).",
                minimum=0),
        Setting("vgg_weights", str, None, "A local VGG19 weights file (safetensors or a torch "
                "state_dict).", metavar="PATH", default_text="none"),
        LAMBDA_L1.with_default(0.0),
        GAN_WARMUP,
        GAN_RAMP,
    )
    #: the bands the VGG loss sees (None: the first three); not a command-line option
    DEFAULTS = {"vgg_bands": None}

    @classmethod
    def check_options(cls, config) -> None:
        weights = getattr(config, "vgg_weights", None)
        if (getattr(config, "lambda_vgg", None) or 0) > 0 and not (
                weights and Path(weights).is_file()):
            raise OptionError(
                f"{weights or '--vgg-weights'}: --lambda-vgg needs a local VGG19 weights file "
                "(none can be downloaded here); give --vgg-weights PATH or use --lambda-vgg 0")

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        fits = max_num_d(self.chip_size, c.n_layers_d)
        num_d = self.option("num_d")
        if fits == 0 or (num_d is not None and num_d > fits):
            raise OptionError(
                f"--num-d {num_d or 1}: {self.chip_size} px chips leave room for at most "
                f"{fits} discriminator scale(s) with --n-layers-d {c.n_layers_d}; lower "
                "--num-d or --n-layers-d, or use larger chips")
        if num_d is not None and num_d < 1:
            raise OptionError(f"--num-d must be >= 1, got {num_d}")
        self.num_d = num_d if num_d is not None else fits  # 3 where the chips allow it
        self.lambda_feat = float(self.option("lambda_feat"))
        self.lambda_l1 = float(self.option("lambda_l1"))
        self.lambda_vgg = float(self.option("lambda_vgg"))
        self.vgg_loss = None
        if self.lambda_vgg > 0:
            weights = self.option("vgg_weights")
            if not weights:
                raise OptionError(
                    "--lambda-vgg needs pretrained VGG19 weights, which cannot be downloaded "
                    "here: give a local file with --vgg-weights PATH (safetensors or a torch "
                    "state_dict), or use --lambda-vgg 0")
            bands = self.option("vgg_bands")
            self.vgg_loss = VGGLoss(load_vgg19_features(weights),
                                    tuple(bands) if bands is not None else None)
        g_ab = self.generator(self.bands["a"], self.bands["b"])
        d_b = build_multiscale_discriminator(self.bands["b"] + self.bands["a"], c.ndf,
                                             c.n_layers_d, self.option("d_norm"), self.num_d)
        return {"g_ab": g_ab, "d_b": d_b}

    def setup(self) -> None:
        if self.vgg_loss is not None:
            self.vgg_loss.to(self.device)

    def loss_names(self) -> list[str]:
        names = ["d_b", "g_ab_gan", "g_ab_feat"]
        names += ["g_ab_vgg"] if self.vgg_loss is not None else []
        names += ["g_ab_l1"] if self.lambda_l1 > 0 else []
        return names + (["tv"] if self.config.lambda_tv > 0 else [])

    def _gan(self, outputs: list[list[torch.Tensor]], real: bool, for_d: bool = True):
        return sum(self.gan_loss(scale[-1], real, for_discriminator=for_d) for scale in outputs)

    def optimize(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, g_ab, d_b = self.config, self.run_nets["g_ab"], self.run_nets["d_b"]
        real_a, real_b = b["a"], b["b"]
        real_pair = torch.cat([real_a, real_b], 1)
        with self.autocast():
            fake_b = g_ab(real_a)
        self.zero_grad("d")
        with self.autocast():
            pred_real = d_b(real_pair)
            pred_fake = d_b(torch.cat([real_a, fake_b.detach()], 1))
        loss_d = 0.5 * (self._gan(pred_real, True) + self._gan(pred_fake, False))
        self.backward_step(loss_d, "d")
        with self.generator_phase(d_b) as d_plain:  # real features are the targets
            with self.autocast():
                pred_fake = d_plain(torch.cat([real_a, fake_b], 1))
                with torch.no_grad():
                    pred_real = d_plain(real_pair)
            losses = {"d_b": loss_d,
                      "g_ab_gan": self._gan(pred_fake, True, for_d=False) * self.gan_weight(),
                      "g_ab_feat": feature_matching_loss(pred_fake, pred_real, c.n_layers_d)
                      * self.lambda_feat}
            if self.vgg_loss is not None:
                with self.autocast():
                    losses["g_ab_vgg"] = self.vgg_loss(fake_b, real_b) * self.lambda_vgg
            if self.lambda_l1 > 0:
                valid = b["valid_a"] * b["valid_b"]
                losses["g_ab_l1"] = masked_l1(fake_b, real_b, valid) * self.lambda_l1
            if c.lambda_tv > 0:
                losses["tv"] = total_variation(fake_b) * c.lambda_tv
            self.backward_step(sum(v for k, v in losses.items() if k != "d_b"), "g")
        return losses
