"""CUT and FastCUT (Park et al. 2020): one generator and a patchwise contrastive loss.

Each patch of the output g_ab(A) must be told apart, in g_ab's own encoder features, as the
patch at the same place in A among the other patches of that image (PatchNCE, an MLP head
per NCE layer, 256 patches, temperature 0.07). CUT adds the same loss on g_ab(B) against B
(identity NCE); FastCUT drops it and weights NCE 10. Patches are drawn only where the valid
mask (brought to each feature map's size) is valid. No flip-equivariance: geometry is signal.

When B has other bands than A (2-band SAR -> 4-band optical), g_ab's encoder cannot read a B
image; a learned 1x1 convolution ``e_b`` (B bands -> A bands) feeds B images into it. The
identity NCE then stays off.
"""

from __future__ import annotations

import torch
from torch import nn

from geotranslate.errors import OptionError
from geotranslate.models import (
    PatchNCELoss,
    PatchSampleMLP,
    ResnetGenerator,
    default_nce_layers,
    encoder_features,
    init_weights,
    layer_channels,
    total_variation,
    unwrap,
)
from geotranslate.models.nce import check_nce_layers
from geotranslate.settings import Setting, as_list

from .base import Method, with_defaults


def parse_layers(value) -> tuple[int, ...]:
    """``"0,4,8"`` or a sequence of ints -> a tuple of layer indices."""
    try:
        return as_list(value, int, "--nce-layers")
    except ValueError as e:
        raise OptionError(str(e)) from None


class CUT(Method):
    """g_ab translates A to B; d_b judges B images; f_ab projects patches for PatchNCE."""

    name = "CUT"
    directions = ("a2b",)
    paired = False
    OPTIONS = (
        Setting("lambda_gan", float, 1.0, "Adversarial weight.", minimum=0),
        Setting("lambda_nce", float, 1.0, "PatchNCE weight.", minimum=0),
        Setting("nce_idt", bool, True, "Identity NCE on B images (off when the band counts "
                "differ)."),
        Setting("nce_layers", str, None, "Generator encoder layers for PatchNCE, e.g. "
                "0,4,8,12,16.", default_text="the paper's"),
        Setting("num_patches", int, 256, "Patches per layer.", minimum=1),
        Setting("nce_temperature", float, 0.07, "PatchNCE temperature.", above=0),
    )
    #: the width of the NCE heads' MLP; not a command-line option
    DEFAULTS = {"nce_units": 256}

    def build_networks(self) -> dict[str, nn.Module]:
        a, b = self.bands["a"], self.bands["b"]
        self.lambda_gan = float(self.option("lambda_gan"))
        self.lambda_nce = float(self.option("lambda_nce"))
        self.num_patches = int(self.option("num_patches"))
        if self.num_patches < 1:
            raise OptionError(f"--num-patches must be >= 1, got {self.num_patches}")
        self.nce_idt = bool(self.option("nce_idt"))
        if self.nce_idt and a != b:
            self.log(f"identity NCE off: domain A has {a} bands and domain B {b} "
                     "(g_ab can translate a B image only with equal band counts)")
            self.nce_idt = False
        g_ab = self.generator(a, b)
        if not isinstance(g_ab, ResnetGenerator):
            raise OptionError(f"{self.name} needs --generator resnet (its encoder gives "
                              "the NCE features)")
        d_b = self.discriminator(b)
        layers = self.option("nce_layers")
        self.nce_layers = default_nce_layers(g_ab) if layers is None else parse_layers(layers)
        try:
            check_nce_layers(g_ab, self.nce_layers)
            self.nce_loss = PatchNCELoss(float(self.option("nce_temperature")))
            f_ab = init_weights(PatchSampleMLP(layer_channels(g_ab, self.nce_layers),
                                               int(self.option("nce_units"))))
        except ValueError as e:
            raise OptionError(f"{self.name}: {e}") from None
        nets = {"g_ab": g_ab, "d_b": d_b, "f_ab": f_ab}
        if a != b:  # lets g_ab's encoder read fake B images
            nets["e_b"] = init_weights(nn.Conv2d(b, a, kernel_size=1))
        return nets

    def loss_names(self) -> list[str]:
        names = ["d_b", "g_ab_gan", "nce"] + (["nce_idt"] if self.nce_idt else [])
        return names + (["tv"] if self.config.lambda_tv > 0 else [])

    def nce(self, source: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
            target_is_b: bool) -> torch.Tensor:
        """PatchNCE between ``source`` (an input of g_ab) and ``target`` (its output)."""
        g = unwrap(self.run_nets["g_ab"])
        heads = self.run_nets["f_ab"]
        with self.autocast():
            if target_is_b and "e_b" in self.run_nets:
                target = self.run_nets["e_b"](target)
            with torch.no_grad():  # PatchNCE detaches the keys: no graph needed for them
                feat_k = encoder_features(g, source, self.nce_layers)
                keys, ids = heads(feat_k, self.num_patches, valid=valid)
            feat_q = encoder_features(g, target, self.nce_layers)
            queries, _ = heads(feat_q, self.num_patches, patch_ids=ids)
        total = sum(self.nce_loss(q, k) for q, k in zip(queries, keys, strict=True))
        return total * self.lambda_nce / len(self.nce_layers)

    def optimize(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, g_ab, d_b = self.config, self.run_nets["g_ab"], self.run_nets["d_b"]
        real_a, real_b = b["a"], b["b"]
        with self.autocast():
            fake_b = g_ab(real_a)
            idt_b = g_ab(real_b) if self.nce_idt else None
        self.zero_grad("d")
        with self.autocast():
            pred_fake, pred_real = d_b(fake_b.detach()), d_b(real_b)
        loss_d = 0.5 * (self.gan_loss(pred_fake, False) + self.gan_loss(pred_real, True))
        self.backward_step(loss_d, "d")
        with self.generator_phase(d_b) as d_plain:  # the generator and the NCE heads
            with self.autocast():
                pred_fake = d_plain(fake_b)
            losses = {"d_b": loss_d,
                      "g_ab_gan": self.gan_loss(pred_fake, True, for_discriminator=False)
                      * self.lambda_gan,
                      "nce": self.nce(real_a, fake_b, b["valid_a"], target_is_b=True)}
            loss_g = losses["g_ab_gan"] + losses["nce"]
            if idt_b is not None:
                losses["nce_idt"] = self.nce(real_b, idt_b, b["valid_b"], target_is_b=False)
                loss_g = losses["g_ab_gan"] + 0.5 * (losses["nce"] + losses["nce_idt"])
            if c.lambda_tv > 0:
                losses["tv"] = total_variation(fake_b) * c.lambda_tv
                loss_g = loss_g + losses["tv"]
            self.backward_step(loss_g, "g")
        return losses


class FastCUT(CUT):
    """CUT without identity NCE and with NCE weighted 10 (the paper's FastCUT)."""

    name = "FastCUT"
    OPTIONS = with_defaults(CUT.OPTIONS, lambda_nce=10.0, nce_idt=False)
