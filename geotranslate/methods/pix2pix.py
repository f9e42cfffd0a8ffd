"""Pix2Pix (Isola et al. 2017): a conditional GAN on (A, B) pairs plus an L1 loss to B."""

from __future__ import annotations

import torch
from torch import nn

from geotranslate.models import masked_l1, total_variation
from geotranslate.settings import Setting

from .base import GAN_RAMP, GAN_WARMUP, Method

#: the L1 loss to B, beside the adversarial one
LAMBDA_L1 = Setting("lambda_l1", float, 100.0, "L1 weight to B.", minimum=0)


class Pix2Pix(Method):
    """g_ab translates A to B; d_b judges (A, B) pairs, real or generated."""

    name = "Pix2Pix"
    directions = ("a2b",)
    paired = True
    OPTIONS = (LAMBDA_L1, GAN_WARMUP, GAN_RAMP)
    DEFAULTS = {"generator": "unet", "gan_mode": "vanilla"}

    def build_networks(self) -> dict[str, nn.Module]:
        g_ab = self.generator(self.bands["a"], self.bands["b"])
        d_b = self.discriminator(self.bands["b"] + self.bands["a"])
        return {"g_ab": g_ab, "d_b": d_b}

    def loss_names(self) -> list[str]:
        return ["d_b", "g_ab_gan", "g_ab_l1"] + (["tv"] if self.config.lambda_tv > 0 else [])

    def optimize(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, g_ab, d_b = self.config, self.run_nets["g_ab"], self.run_nets["d_b"]
        real_a, real_b = b["a"], b["b"]
        valid = b["valid_a"] * b["valid_b"]
        with self.autocast():
            fake_b = g_ab(real_a)
        # discriminator: (A, real B) then (A, fake B), the same conditioning for both
        self.zero_grad("d")
        with self.autocast():
            pred_real = d_b(torch.cat([real_a, real_b], 1))
            pred_fake = d_b(torch.cat([real_a, fake_b.detach()], 1))
        loss_d = 0.5 * (self.gan_loss(pred_real, True) + self.gan_loss(pred_fake, False))
        self.backward_step(loss_d, "d")
        with self.generator_phase(d_b) as d_plain:
            with self.autocast():
                pred_fake = d_plain(torch.cat([real_a, fake_b], 1))
            loss_gan = self.gan_loss(pred_fake, True, for_discriminator=False) \
                * self.gan_weight()
            loss_l1 = masked_l1(fake_b, real_b, valid) * self.option("lambda_l1")
            loss_g = loss_gan + loss_l1
            losses = {"d_b": loss_d, "g_ab_gan": loss_gan, "g_ab_l1": loss_l1}
            if c.lambda_tv > 0:
                losses["tv"] = total_variation(fake_b) * c.lambda_tv
                loss_g = loss_g + losses["tv"]
            self.backward_step(loss_g, "g")
        return losses
