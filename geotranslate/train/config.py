"""Every training setting in one dataclass, with the papers' defaults.

The CLI builds a :class:`TrainConfig` from its options; Python users build one directly. It is
saved as ``RUN_DIR/config.json``, so ``--resume`` (:meth:`TrainConfig.from_run`) continues a
run with the settings it had.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from geotranslate import schema as sc
from geotranslate.augment import AUGMENTS, DEFAULT_AUGMENT, LEGACY_AUGMENT
from geotranslate.choices import (
    DEFAULT_D_NORM,
    DEFAULT_UPSAMPLE,
    LEGACY_UPSAMPLE,
    NORM_KINDS,
    UPSAMPLE_KINDS,
)
from geotranslate.device import PRECISIONS, check_device_name
from geotranslate.errors import GeotranslateError
from geotranslate.inputs import NORM_SCOPES
from geotranslate.methods import METHODS

CONFIG_NAME = "config.json"
DATASET_TYPES = tuple(METHODS)
NETWORK_NORMS = NORM_KINDS
NORM_METHODS = ("robust", "percentile", "minmax", "meanstd")
GAN_MODES = ("lsgan", "vanilla", "hinge")


@dataclass
class TrainConfig:
    """One training run. ``None`` means "choose from the dataset type / chip size / device"."""

    dataset_type: str  # "Pix2Pix" (paired) or "CycleGAN" (unpaired)
    data_dir: str = "chips"
    out: str | None = None  # default runs/<dataset_type>-<YYYYmmdd-HHMMSS>
    # networks
    generator: str | None = None  # resnet | unet | smp-unet:<encoder>; None: unet (Pix2Pix), resnet
    ngf: int = 64
    n_blocks: int | None = None  # resnet blocks; None: 9 at >= 256 px, else 6
    unet_depth: int | None = None  # U-Net num_downs; None: receptive field <= chip (128 px: 4)
    ndf: int = 64
    n_layers_d: int = 3
    net_norm: str | None = None  # the generators' normalization; None: the method's default
    d_norm: str = DEFAULT_D_NORM  # the discriminators' normalization
    upsample: str = DEFAULT_UPSAMPLE  # decoders: resize + conv (no checkerboard) or transpose
    pretrained: bool = False  # ImageNet encoder weights (smp-unet only)
    # losses
    gan_mode: str | None = None  # None: vanilla (Pix2Pix), lsgan (CycleGAN)
    lambda_l1: float | None = None  # L1 to B; None: 100 (Pix2Pix), 0 (Pix2PixHD)
    lambda_a: float = 10.0
    lambda_b: float = 10.0
    lambda_identity: float = 0.5
    lambda_tv: float = 0.0
    pool_size: int = 50
    # paired methods: iterations of reconstruction only, then a linear ramp of the GAN term
    gan_warmup: int | None = None  # None: the method's default
    gan_ramp: int | None = None
    # Pix2PixHD
    num_d: int | None = None  # discriminator scales; None: 3 where the chips allow it
    lambda_feat: float = 10.0  # discriminator feature matching
    lambda_vgg: float = 0.0  # VGG19 perceptual loss (needs vgg_weights)
    vgg_weights: str | None = None  # a local VGG19 weights file (safetensors or state_dict)
    # CUT / FastCUT
    lambda_gan: float = 1.0
    lambda_nce: float | None = None  # None: 1 (CUT), 10 (FastCUT)
    nce_idt: bool | None = None  # identity NCE on B; None: on (CUT), off (FastCUT)
    nce_layers: str | None = None  # encoder layers, e.g. "0,4,8,12,16"; None: the paper's
    num_patches: int = 256
    nce_temperature: float = 0.07
    # optimisation
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int = 100  # at constant lr
    epochs_decay: int = 100  # then linear decay to 0
    max_steps: int | None = None  # stop after this many iterations in total
    # data
    crop_size: int | None = None
    augment: str = DEFAULT_AUGMENT  # none | hflip | vflip | rot180 | d4 (geotranslate/augment.py)
    norm_method: str = "robust"  # see stats.robust_range
    norm_scope: str = "dataset"  # or "scene": each scene by its own statistics (inputs.py)
    cache: bool | None = None  # None: cache normalized chips in memory when they fit in 2 GB
    workers: int | None = None  # None: 0 when cached, else min(4, cpus)
    # running
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA when supported and on CPUs with native bf16
    channels_last: bool | None = None  # None: on for CUDA and for bf16 on CPU
    compile: bool = False
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; exact resume)
    save_every: int = 0  # also checkpoint every N iterations (0: only at each epoch's end)
    keep: str = "last"  # which generator model.safetensors holds: "last" or "best" (val PSNR)
    patience: int | None = None  # stop a paired run after N epochs without a better val PSNR
    resume: str | None = None  # a run directory to continue
    rgb_bands: str | None = None  # e.g. "3,2,1" or "a:1,2,3;b:3,2,1" (1-based)
    preview: bool = True
    progress: bool | None = None  # None: a bar when stderr is a terminal (geotranslate/log.py)
    tensorboard: bool = True  # when the tensorboard package is installed

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # augment=True/False of earlier versions
            self.augment = LEGACY_AUGMENT[self.augment]

    def validate(self) -> None:
        """Refuse impossible settings before any file is read."""
        if self.dataset_type not in DATASET_TYPES:
            raise GeotranslateError(
                f"dataset type {self.dataset_type!r}: choose from {', '.join(DATASET_TYPES)}"
            )
        checks = [
            ("precision", self.precision, PRECISIONS),
            ("discriminator norm", self.d_norm, NETWORK_NORMS),
            ("upsample", self.upsample, UPSAMPLE_KINDS),
            ("normalization", self.norm_method, NORM_METHODS),
            ("norm scope", self.norm_scope, NORM_SCOPES),
        ]
        if self.gan_mode is not None:
            checks.append(("GAN mode", self.gan_mode, GAN_MODES))
        if self.net_norm is not None:
            checks.append(("network norm", self.net_norm, NETWORK_NORMS))
        check_device_name(self.device)
        checks.append(("augment", self.augment, tuple(AUGMENTS)))
        for what, value, allowed in checks:
            if value not in allowed:
                raise GeotranslateError(f"{what} {value!r}: choose from {', '.join(allowed)}")
        positive = {"batch size": self.batch_size, "ngf": self.ngf, "ndf": self.ndf,
                    "n-layers-d": self.n_layers_d, "unet-depth": self.unet_depth}
        for what, value in positive.items():
            if value is not None and value < 1:
                raise GeotranslateError(f"{what} must be >= 1, got {value}")
        not_negative = {"n-blocks": self.n_blocks, "workers": self.workers,
                        "pool-size": self.pool_size, "seed": self.seed,
                        "gan-warmup": self.gan_warmup, "gan-ramp": self.gan_ramp}
        for what, value in not_negative.items():
            if value is not None and value < 0:
                raise GeotranslateError(f"{what} must be >= 0, got {value}")
        weights = {"lambda-l1": self.lambda_l1, "lambda-a": self.lambda_a,
                   "lambda-b": self.lambda_b, "lambda-identity": self.lambda_identity,
                   "lambda-tv": self.lambda_tv, "lambda-feat": self.lambda_feat,
                   "lambda-vgg": self.lambda_vgg, "lambda-gan": self.lambda_gan,
                   "lambda-nce": self.lambda_nce}
        for what, value in weights.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise GeotranslateError(f"{what} must be a finite number >= 0, got {value}")
        for what, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= value < 1:
                raise GeotranslateError(f"{what} must be in [0, 1), got {value}")
        if self.epochs < 0 or self.epochs_decay < 0 or self.epochs + self.epochs_decay < 1:
            raise GeotranslateError("epochs + epochs-decay must be >= 1 (and neither negative)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise GeotranslateError(f"learning rate must be a finite number > 0, got {self.lr}")
        if self.crop_size is not None and self.crop_size < 4:
            raise GeotranslateError(f"crop size must be >= 4 px, got {self.crop_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise GeotranslateError(f"max-steps must be >= 1, got {self.max_steps}")
        if self.save_every < 0:
            raise GeotranslateError(f"save-every must be >= 0, got {self.save_every}")
        positive = {"num-d": self.num_d, "num-patches": self.num_patches,
                    "patience": self.patience}
        for what, value in positive.items():
            if value is not None and value < 1:
                raise GeotranslateError(f"{what} must be >= 1, got {value}")
        if not (math.isfinite(self.nce_temperature) and self.nce_temperature > 0):
            raise GeotranslateError("nce-temperature must be a finite number > 0, got "
                                    f"{self.nce_temperature}")
        if self.keep not in ("last", "best"):
            raise GeotranslateError(f"keep {self.keep!r}: choose from last, best")
        if self.lambda_vgg > 0 and not (self.vgg_weights and Path(self.vgg_weights).is_file()):
            raise GeotranslateError(
                f"{self.vgg_weights or '--vgg-weights'}: --lambda-vgg needs a local VGG19 "
                "weights file (none can be downloaded here); give --vgg-weights PATH or use "
                "--lambda-vgg 0")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def resolved_gan_mode(self) -> str:
        return self.gan_mode or ("vanilla" if self.dataset_type == "Pix2Pix" else "lsgan")

    def resolved_generator(self) -> str:
        return self.generator or ("unet" if self.dataset_type == "Pix2Pix" else "resnet")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = "config") -> TrainConfig:
        """A config from saved settings, each checked against its field's type (one line
        naming ``source`` and the field); unknown keys are ignored."""
        sc.validate(d, config_schema(), source)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        # config.json before --augment MODE: a boolean, absent meaning the old default (True)
        values.setdefault("augment", True)
        # before --upsample and --d-norm: transposed convolutions, one norm for G and D, no
        # GAN warm-up
        values.setdefault("upsample", LEGACY_UPSAMPLE)
        values.setdefault("d_norm", values.get("net_norm") or DEFAULT_D_NORM)
        values.setdefault("gan_warmup", 0)
        values.setdefault("gan_ramp", 0)
        return cls(**values)

    @classmethod
    def from_run(cls, run_dir: str | Path, **overrides) -> TrainConfig:
        """The settings of the run in ``run_dir``, with ``overrides`` on top, set to resume it."""
        saved = Path(run_dir) / CONFIG_NAME
        if not saved.exists():
            raise GeotranslateError(f"{saved}: missing; is {run_dir} a training run?")
        values = sc.load_json(saved, "corrupt")
        return replace(cls.from_dict(values, saved), **overrides, resume=str(run_dir))


_SCALARS = {int: sc.Int(), float: sc.Num(), str: sc.Str(), bool: sc.Bool()}


def config_schema() -> sc.Obj:
    """config.json's schema, from TrainConfig's annotations (``int | None`` -> Opt(Int))."""
    hints = typing.get_type_hints(TrainConfig)
    optional = {}
    for f in fields(TrainConfig):
        if f.name == "augment":
            continue  # a mode, or the boolean of earlier versions: __post_init__/validate()
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [_SCALARS[a] for a in args if a in _SCALARS]
        if len(kinds) != 1:
            continue  # an unusual type: left to validate()
        node = kinds[0]
        optional[f.name] = sc.Opt(node) if type(None) in args else node
    return sc.Obj({"dataset_type": sc.Str()}, optional=optional)
