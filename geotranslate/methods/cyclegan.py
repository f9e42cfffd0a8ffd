"""CycleGAN (Zhu et al. 2017): two generators, two discriminators, cycle and identity L1."""

from __future__ import annotations

import torch
from torch import nn

from geotranslate.choices import DIRECTIONS
from geotranslate.models import ImagePool, masked_l1, total_variation, unwrap
from geotranslate.settings import Setting

from .base import Method


class CycleGAN(Method):
    """g_ab / g_ba translate both ways; d_b / d_a judge single images; fakes go through pools."""

    name = "CycleGAN"
    directions = DIRECTIONS
    paired = False
    OPTIONS = (
        Setting("lambda_a", float, 10.0, "Cycle weight A->B->A.", minimum=0),
        Setting("lambda_b", float, 10.0, "Cycle weight B->A->B.", minimum=0),
        Setting("lambda_identity", float, 0.5, "Identity weight (x lambda-a/b); off "
                "automatically when the domains' band counts differ.", minimum=0),
        Setting("pool_size", int, 50, "Image pool of past fakes.", minimum=0),
    )

    def build_networks(self) -> dict[str, nn.Module]:
        a, b = self.bands["a"], self.bands["b"]
        self.lambda_identity = float(self.option("lambda_identity"))
        if self.lambda_identity > 0 and a != b:
            self.log(f"identity loss off: domain A has {a} bands and domain B {b} "
                     "(the identity mapping needs equal band counts)")
            self.lambda_identity = 0.0
        # this order (g_ab, d_b, g_ba, d_a) fixes initial weights and optimizer state layout
        return {"g_ab": self.generator(a, b), "d_b": self.discriminator(b),
                "g_ba": self.generator(b, a), "d_a": self.discriminator(a)}

    def summary(self) -> dict:
        return {**super().summary(), "lambda_identity": self.lambda_identity}  # as applied

    def setup(self) -> None:
        c, size = self.config, int(self.option("pool_size"))
        self.pools = {"a": ImagePool(size, seed=c.seed * 2 + 1 + self.rank),
                      "b": ImagePool(size, seed=c.seed * 2 + 2 + self.rank)}

    def loss_names(self) -> list[str]:
        names = ["d_a", "d_b", "g_ab_gan", "g_ba_gan", "cycle_a", "cycle_b"]
        if self.lambda_identity > 0:
            names += ["idt_a", "idt_b"]
        return names + (["tv"] if self.config.lambda_tv > 0 else [])

    def optimize(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        lambda_a, lambda_b = float(self.option("lambda_a")), float(self.option("lambda_b"))
        g_ab, g_ba = self.run_nets["g_ab"], self.run_nets["g_ba"]
        real_a, real_b, valid_a, valid_b = b["a"], b["b"], b["valid_a"], b["valid_b"]
        d_plain = {k: unwrap(self.run_nets[k]) for k in ("d_a", "d_b")}
        for net in d_plain.values():
            net.requires_grad_(False)
        self.zero_grad("g")
        with self.autocast():
            fake_b = g_ab(real_a)
            rec_a = g_ba(fake_b)
            fake_a = g_ba(real_b)
            rec_b = g_ab(fake_a)
            pred_fake_b = d_plain["d_b"](fake_b)
            pred_fake_a = d_plain["d_a"](fake_a)
        losses = {
            "g_ab_gan": self.gan_loss(pred_fake_b, True, for_discriminator=False),
            "g_ba_gan": self.gan_loss(pred_fake_a, True, for_discriminator=False),
            "cycle_a": masked_l1(rec_a, real_a, valid_a) * lambda_a,
            "cycle_b": masked_l1(rec_b, real_b, valid_b) * lambda_b,
        }
        if self.lambda_identity > 0:
            with self.autocast():
                idt_b = g_ab(real_b)  # g_ab should leave a B image unchanged
                idt_a = g_ba(real_a)
            losses["idt_a"] = masked_l1(idt_a, real_a, valid_a) * lambda_a * self.lambda_identity
            losses["idt_b"] = masked_l1(idt_b, real_b, valid_b) * lambda_b * self.lambda_identity
        if c.lambda_tv > 0:
            losses["tv"] = (total_variation(fake_b) + total_variation(fake_a)) * c.lambda_tv
        self.backward_step(sum(losses.values()), "g")
        for net in d_plain.values():
            net.requires_grad_(True)
        # discriminators on real images and on fakes from the history pools
        self.zero_grad("d")
        pooled_b = self.pools["b"].query(fake_b.detach())
        pooled_a = self.pools["a"].query(fake_a.detach())
        with self.autocast():
            d_b, d_a = self.run_nets["d_b"], self.run_nets["d_a"]
            pred_real_b, pred_pool_b = d_b(real_b), d_b(pooled_b)
            pred_real_a, pred_pool_a = d_a(real_a), d_a(pooled_a)
        losses["d_b"] = 0.5 * (self.gan_loss(pred_real_b, True) + self.gan_loss(pred_pool_b, False))
        losses["d_a"] = 0.5 * (self.gan_loss(pred_real_a, True) + self.gan_loss(pred_pool_a, False))
        self.backward_step(losses["d_a"] + losses["d_b"], "d")
        return losses
