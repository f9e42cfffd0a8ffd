"""The small base every translation method builds on.

A :class:`Method` owns its networks (``nets``, named g_ab, d_b, ...), the two optimizers
(``"g"`` and ``"d"``), the precision hooks (autocast, GradScaler) and one training
:meth:`Method.step`. It knows nothing about the loop: epochs, learning-rate schedules,
checkpoints on disk, metrics and previews belong to the caller.

A method declares its own settings in :attr:`Method.OPTIONS` (name, type, default, help,
bounds: :class:`~geotranslate.settings.Setting`); the ``train`` command and
:class:`~geotranslate.train.config.TrainConfig` gain them from the registry, so a new method
is one module in this folder. Settings come from a ``TrainConfig`` (or anything with the same
attributes); a setting the config does not have, or has as ``None``, takes the method's
default (see :meth:`Method.option`): its ``OPTIONS``, or for the shared settings that each
method chooses (generator, GAN mode, norms) its :attr:`Method.DEFAULTS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from geotranslate.chips.meta import DOMAINS
from geotranslate.choices import (
    DEFAULT_D_NORM,
    DEFAULT_GAN_RAMP,
    DEFAULT_GAN_WARMUP,
    DEFAULT_NET_NORM,
    DEFAULT_UPSAMPLE,
)
from geotranslate.data import BATCH_KEYS
from geotranslate.device import autocast, default_channels_last
from geotranslate.errors import GeotranslateError, InputError, OptionError, first_line
from geotranslate.models import (
    GANLoss,
    build_discriminator,
    build_generator,
    default_unet_depth,
    generator_spec,
    keep_channels_last,
    unwrap,
)
from geotranslate.settings import Setting

#: the networks that translate each direction
GENERATOR_OF = {"a2b": "g_ab", "b2a": "g_ba"}

#: fidelity first, for paired methods: iterations with the adversarial term off, then
#: iterations of its linear ramp to full weight
GAN_WARMUP = Setting("gan_warmup", int, DEFAULT_GAN_WARMUP, "Iterations with the adversarial "
                     "term off (reconstruction first).", minimum=0)
GAN_RAMP = Setting("gan_ramp", int, DEFAULT_GAN_RAMP, "Iterations over which the adversarial "
                   "weight then rises linearly to 1.", minimum=0)


def with_defaults(options: tuple[Setting, ...], **defaults: Any) -> tuple[Setting, ...]:
    """``options`` with other defaults for some (a variant method's own choices)."""
    unknown = set(defaults) - {s.name for s in options}
    if unknown:
        raise KeyError(f"no such options: {', '.join(sorted(unknown))}")
    return tuple(s.with_default(defaults[s.name]) if s.name in defaults else s for s in options)


def build_generator_for(config: Any, in_channels: int, out_channels: int,
                        chip_size: int, norm: str | None = None) -> nn.Module:
    """The generator ``config`` asks for, sized for ``chip_size`` px chips, or a clear error.

    ``config.resolved_generator()`` names the architecture; resnet takes ``n_blocks`` (None:
    9 at >= 256 px, else 6), unet ``unet_depth`` (None: ``default_unet_depth``). ``norm``
    (default ``config.net_norm``, else instance norm) is the generator's normalization;
    resnet and unet decoders upsample as ``config.upsample`` says and use dropout as
    ``config.dropout`` says (a rate; None: the architecture's own default).
    """
    c = config
    arch = c.resolved_generator()
    norm = norm or getattr(c, "net_norm", None) or DEFAULT_NET_NORM
    upsample = getattr(c, "upsample", None) or DEFAULT_UPSAMPLE
    dropout = getattr(c, "dropout", None)  # None: the architecture's own default
    own = {"upsample": upsample, **({} if dropout is None else {"dropout": float(dropout)})}
    try:
        if arch == "resnet":
            n_blocks = c.n_blocks if c.n_blocks is not None else (9 if chip_size >= 256 else 6)
            net = build_generator(arch, in_channels, out_channels, ngf=c.ngf,
                                  n_blocks=n_blocks, norm=norm, **own)
        elif arch == "unet":
            depth = c.unet_depth or default_unet_depth(chip_size)
            net = build_generator(arch, in_channels, out_channels, ngf=c.ngf,
                                  num_downs=depth, norm=norm, **own)
        else:
            net = build_generator(arch, in_channels, out_channels,
                                  pretrained=c.pretrained, norm=norm)
    except (ValueError, RuntimeError, KeyError) as e:
        raise OptionError(f"--generator {arch}: {e}") from None
    stride = int(getattr(net, "total_stride", 1))
    if chip_size < stride:
        raise OptionError(
            f"chip size {chip_size} px is smaller than {stride}, the stride of the "
            f"{arch} generator; use a smaller --unet-depth or larger chips"
        )
    if chip_size % stride:
        fit = chip_size // stride * stride
        hint = (
            f"use --crop-size {fit}" if fit else
            f"use chips (or a --crop-size) of a multiple of {stride} px, or a generator "
            "with fewer down-samplings"
        )
        raise OptionError(
            f"chip size {chip_size} px is not divisible by {stride}, which the {arch} "
            f"generator needs; {hint}"
        )
    return net


class Method:
    """Networks, optimizers and the update rule of one translation method.

    Subclasses set :attr:`name`, :attr:`directions`, :attr:`paired` and implement
    :meth:`build_networks`, :meth:`loss_names` and :meth:`optimize`; they may add
    :meth:`extra_state` / :meth:`load_extra_state` for state beyond networks and optimizers.
    """

    name: ClassVar[str] = ""
    #: translation directions the trained method offers ("a2b", and "b2a" for CycleGAN)
    directions: ClassVar[tuple[str, ...]] = ("a2b",)
    #: whether training needs A and B of the same place (and a validation split makes sense)
    paired: ClassVar[bool] = True
    #: this method's own settings: they become ``train`` options and TrainConfig fields
    OPTIONS: ClassVar[tuple[Setting, ...]] = ()
    #: this method's choice for shared settings left as None, and for internal settings that
    #: are not options; a subclass's DEFAULTS add to (and override) those of its bases
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "generator": "resnet",
        "gan_mode": "lsgan",
        "net_norm": DEFAULT_NET_NORM,
        "d_norm": DEFAULT_D_NORM,
    }

    def __init__(self, config: Any, bands: dict[str, int], chip_size: int,
                 device: torch.device | str = "cpu", precision: str = "fp32", *,
                 rank: int = 0, wrap: Callable[[nn.Module], nn.Module] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.bands = {d: int(bands[d]) for d in DOMAINS}
        self.chip_size = chip_size
        self.device = torch.device(device)
        self.precision = precision
        self.rank = rank
        self.log = log
        self.gan_mode = config.resolved_gan_mode()
        self.pools: dict[str, Any] = {}
        self.iteration = 0  # updates done (set by the caller on resume): the GAN warm-up clock

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.nets: dict[str, nn.Module] = self.build_networks()
        self.channels_last = (config.channels_last if config.channels_last is not None
                              else default_channels_last(self.device, self.precision))
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for net in self.nets.values():
            if self.channels_last:  # norms and paddings that stay channels_last (no copies)
                keep_channels_last(net)
            net.to(self.device, memory_format=memory_format)
            net.train()
        betas = (config.beta1, config.beta2)
        # the fused kernel: one pass over each parameter instead of a dozen (a 54 M-parameter
        # U-Net's Adam step on a CPU: 0.28 -> 0.06 CPU-s)
        fused = self.device.type in ("cpu", "cuda")
        self.optimizers = {group: torch.optim.Adam(params, lr=config.lr, betas=betas,
                                                   fused=fused)
                           for group, params in self.parameter_groups().items() if params}
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.gan_loss = GANLoss(self.gan_mode)
        self.setup()
        torch.manual_seed(config.seed + rank)  # dropout differs per rank, as in DDP usage
        # the networks the step runs (DDP / compile wrappers); self.nets keeps the bare ones
        self.run_nets = {n: (wrap(net) if wrap else net) for n, net in self.nets.items()}

    # -- what a subclass declares --------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def loss_names(self) -> list[str]:
        raise NotImplementedError

    def optimize(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update on a batch already on the device; returns the losses (not detached)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Called after the optimizers exist and before the per-rank seed (pools, criteria)."""

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each optimizer: ``"g"`` (generators and heads), ``"d"`` (critics)."""
        return {
            "g": [p for n, net in self.nets.items() if not n.startswith("d_")
                  for p in net.parameters()],
            "d": [p for n, net in self.nets.items() if n.startswith("d_")
                  for p in net.parameters()],
        }

    def extra_state(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        """This method's own settings as the run used them (model.json's training summary)."""
        return {s.name: self.option(s.name) for s in self.OPTIONS}

    @classmethod
    def check_options(cls, config: Any) -> None:
        """Refuse settings that contradict each other, before any file is read (each setting's
        own bounds are checked from its declaration)."""

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- helpers for subclasses ------------------------------------------------------------------
    @classmethod
    def default(cls, name: str) -> Any:
        """This method's default for setting ``name``: its OPTIONS, then the DEFAULTS of the
        class and of its bases."""
        for s in cls.OPTIONS:
            if s.name == name:
                return s.default
        for klass in cls.__mro__:
            if name in vars(klass).get("DEFAULTS", {}):
                return vars(klass)["DEFAULTS"][name]
        raise KeyError(name)

    def option(self, name: str) -> Any:
        """``config.<name>``, or this method's default when the config lacks it or has None."""
        value = getattr(self.config, name, None)
        return self.default(name) if value is None else value

    def generator(self, in_channels: int, out_channels: int) -> nn.Module:
        return build_generator_for(self.config, in_channels, out_channels, self.chip_size,
                                   norm=self.option("net_norm"))

    def discriminator(self, in_channels: int) -> nn.Module:
        c = self.config
        return build_discriminator(in_channels, c.ndf, c.n_layers_d, self.option("d_norm"))

    def gan_weight(self) -> float:
        """The adversarial term's weight at this iteration: 0 during ``gan_warmup``
        iterations (reconstruction only: tone and structure first), then rising linearly to
        1 over ``gan_ramp`` iterations."""
        warmup, ramp = int(self.option("gan_warmup")), int(self.option("gan_ramp"))
        done = self.iteration - warmup
        if done < 0:
            return 0.0
        return 1.0 if ramp <= 0 else min(1.0, (done + 1) / ramp)

    def autocast(self):
        return autocast(self.device, self.precision)

    def backward_step(self, loss: torch.Tensor, group: str) -> None:
        """Scaled backward of ``loss`` and a step of optimizer ``group`` (``"g"``/``"d"``).

        Every optimizer update of :meth:`step` goes through here: the one seam to observe
        or interrupt a step between its updates."""
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizers[group])

    def zero_grad(self, group: str) -> None:
        self.optimizers[group].zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def generator_phase(self, d: nn.Module) -> Iterator[nn.Module]:
        """The generator update: G's gradients cleared, ``d`` frozen and yielded without its DDP
        wrapper (no gradient sync for it), trainable again afterwards."""
        self.zero_grad("g")
        d_plain = unwrap(d)
        d_plain.requires_grad_(False)
        try:
            yield d_plain
        finally:
            d_plain.requires_grad_(True)

    # -- what the loop calls -----------------------------------------------------------------
    @property
    def opt_g(self) -> torch.optim.Optimizer:
        return self.optimizers["g"]

    @property
    def opt_d(self) -> torch.optim.Optimizer:
        return self.optimizers["d"]

    @property
    def lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return {k: batch[k].to(self.device, non_blocking=nb, memory_format=fmt)
                for k in BATCH_KEYS}

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update; returns the (detached) losses."""
        b = self.to_device(batch)
        try:
            losses = self.optimize(b)
        except torch.cuda.OutOfMemoryError:
            raise GeotranslateError(
                f"out of GPU memory at batch size {self.config.batch_size}, "
                f"{self.chip_size} px, ngf {self.config.ngf}: lower --batch-size, --crop-size "
                "or --ngf (or use --precision bf16)"
            ) from None
        self.scaler.update()
        self.iteration += 1
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def translate(self, direction: str, x: torch.Tensor) -> torch.Tensor:
        """The generator of ``direction`` in eval mode on ``x``, as float32."""
        if direction not in self.directions:
            raise ValueError(f"{self.name} translates {', '.join(self.directions)}, "
                             f"not {direction!r}")
        net = unwrap(self.nets[GENERATOR_OF[direction]])
        net.eval()
        try:
            with self.autocast():
                return net(x.to(self.device)).float()
        finally:
            net.train()

    def generators(self) -> dict[str, nn.Module]:
        """The bare generator of each direction (for the model file)."""
        return {d: unwrap(self.nets[GENERATOR_OF[d]]) for d in self.directions}

    @property
    def generator_specs(self) -> dict[str, dict]:
        return {d: generator_spec(net).to_dict() for d, net in self.generators().items()}

    @property
    def discriminator_specs(self) -> dict[str, dict]:
        return {name: {"in_channels": net.in_channels, **net.arch_kwargs}
                for name, net in self.nets.items() if name.startswith("d_")}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, scaler, pools and extras: tensors and plain types only."""
        return {
            "nets": {n: unwrap(net).state_dict() for n, net in self.nets.items()},
            "optimizers": {g: opt.state_dict() for g, opt in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "pools": {d: pool.state_dict() for d, pool in self.pools.items()},
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Any = "checkpoint") -> None:
        """Restore :meth:`state_dict`; a misfit raises one :class:`GeotranslateError` line."""
        try:
            for name, net in self.nets.items():
                net.load_state_dict(state["nets"][name])
            for group, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][group])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            for d, pool in self.pools.items():
                pool.load_state_dict(state["pools"][d])
            self.load_extra_state(state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(f"{path}: checkpoint does not fit this run ({first_line(e)})") \
                from None
