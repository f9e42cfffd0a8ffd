"""Every training setting, declared once: the settings all methods share, and each method's own.

:class:`TrainConfig` is one dataclass. Its first fields are the shared settings declared below
with :func:`~geotranslate.settings.setting` (type, default, help, allowed values, bounds); the
rest are the ``OPTIONS`` of every method in the registry (geotranslate/methods/), added when
this module is imported, so a new method module brings its settings with it. The command line's
``train`` options, config.json's schema and :meth:`TrainConfig.validate` are derived from these
declarations. The CLI builds a config from its options; Python users build one directly. It is
saved as ``RUN_DIR/config.json``, so ``--resume`` (:meth:`TrainConfig.from_run`) continues a
run with the settings it had.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from geotranslate import schema as sc
from geotranslate.augment import AUGMENTS, DEFAULT_AUGMENT, LEGACY_AUGMENT
from geotranslate.choices import (
    DEFAULT_D_NORM,
    DEFAULT_UPSAMPLE,
    GAN_MODES,
    LEGACY_UPSAMPLE,
    NORM_KINDS,
    PIX2PIX_DROPOUT,
    PRECISIONS,
    UNET_DROPOUT,
    UPSAMPLE_KINDS,
)
from geotranslate.device import check_device_name
from geotranslate.errors import OptionError
from geotranslate.inputs import NORM_SCOPES
from geotranslate.methods import METHODS, Method
from geotranslate.settings import Setting, check, field_settings, scalar_type, setting
from geotranslate.stats import NORM_METHODS

CONFIG_NAME = "config.json"


def _shown(value: Any) -> str:
    """A default as the help shows it: on/off for switches."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _defaults_text(defaults: list[tuple[str, str]], everyone: bool) -> str:
    """``"100.0 for Pix2Pix, 0.0 for Pix2PixHD"`` from (method, shown default) pairs; with
    ``everyone`` (every method has the setting) the commonest value is said once, as "for the
    others"."""
    values: dict[str, list[str]] = {}
    for method, value in defaults:
        values.setdefault(value, []).append(method)
    if len(values) == 1:
        return next(iter(values))
    common = max(values, key=lambda v: len(values[v])) if everyone else None
    parts = [f"{v} for {', '.join(names)}" for v, names in values.items() if v != common]
    return ", ".join(parts) + (f", {common} for the others" if common is not None else "")


def _per_method(name: str) -> str:
    """``"unet for Pix2Pix, resnet for the others"``: a shared setting's default per method."""
    return _defaults_text([(m.name, _shown(m.default(name))) for m in METHODS.values()],
                          everyone=True)


@dataclass
class SharedSettings:
    """The settings every method shares. ``None`` means "chosen from the method, the chip size
    or the device" (the help says how)."""

    dataset_type: str = setting(
        MISSING, "The method: " + ", ".join(
            f"{name} ({'paired' if m.paired else 'unpaired'})" for name, m in METHODS.items())
        + ". Required unless --resume.", choices=tuple(METHODS))
    data_dir: str = setting("chips", "The chip folder (export-tiles --out).", cli=False)
    out: str | None = setting(
        None, "Run directory.", default_text="runs/<dataset-type>-<YYYYmmdd-HHMMSS>, and "
        "runs/latest points at it", metavar="DIR")
    # networks
    generator: str | None = setting(
        None, "resnet | unet | smp-unet:<encoder> (e.g. smp-unet:resnet34).",
        default_text=_per_method("generator"))
    ngf: int = setting(64, "Generator filters in the first layer.", minimum=1)
    n_blocks: int | None = setting(
        None, "ResNet generator blocks.", minimum=0,
        default_text="9 at >= 256 px chips, else 6 (the papers' choices)")
    unet_depth: int | None = setting(
        None, "U-Net down-samplings.", minimum=1,
        default_text="the deepest whose receptive field fits in a chip (3*2^(depth+1)-5 px: "
        "128 px -> 4, 256 -> 5), so that tiled prediction does not depend on the tile size")
    ndf: int = setting(64, "Discriminator filters in the first layer.", minimum=1)
    n_layers_d: int = setting(3, "PatchGAN layers (3 = 70x70 patches).", minimum=1)
    net_norm: str | None = setting(
        None, "Normalization layers in the generators (layer: each pixel's features over "
        "their channels, the same in training and in tiled prediction; instance: each chip's "
        "own statistics, a scene sample's at prediction).", choices=NORM_KINDS,
        default_text=_per_method("net_norm"))
    d_norm: str = setting(DEFAULT_D_NORM, "Normalization layers in the discriminators.",
                          choices=NORM_KINDS)
    upsample: str = setting(
        DEFAULT_UPSAMPLE, "How the resnet and unet decoders double the resolution: resize "
        "(nearest x2, then a 3x3 convolution: no checkerboard), bilinear (the same with "
        "bilinear x2) or transpose (the papers' transposed convolutions).",
        choices=UPSAMPLE_KINDS)
    dropout: float | None = setting(
        None, "Dropout rate in the unet decoder's blocks next to the innermost, or in every "
        "resnet block (0: none; pix2pix's: 0.5).", minimum=0, below=1, metavar="RATE",
        default_text=f"{UNET_DROPOUT} in the unet, 0 in the resnet")
    pretrained: bool = setting(False, "ImageNet weights for the smp-unet encoder (downloaded "
                               "once).")
    # losses
    gan_mode: str | None = setting(None, "Adversarial loss.", choices=GAN_MODES,
                                   default_text=_per_method("gan_mode"))
    lambda_tv: float = setting(0.0, "Total-variation weight on fakes.", minimum=0)
    # optimisation
    batch_size: int = setting(1, "Chips per iteration (per process).", minimum=1)
    lr: float = setting(2e-4, "Adam learning rate (betas 0.5, 0.999).", above=0)
    beta1: float = setting(0.5, "Adam beta1.", minimum=0, below=1, cli=False)
    beta2: float = setting(0.999, "Adam beta2.", minimum=0, below=1, cli=False)
    epochs: int = setting(100, "Epochs at constant learning rate (100 as in the papers; sized "
                          "for real data — use a few for a trial).", minimum=0)
    epochs_decay: int = setting(100, "Further epochs with the learning rate decaying linearly "
                                "to 0.", minimum=0)
    max_steps: int | None = setting(None, "Stop after this many iterations in total.", minimum=1)
    # data
    crop_size: int | None = setting(None, "Random crops of this size.", minimum=4,
                                    default_text="whole chips")
    augment: str = setting(
        DEFAULT_AUGMENT, "Random flips/rotations, applied to A and B alike: " + "; ".join(
            f"{name}: {what}" for name, what in AUGMENTS.items()) + ". Keep none when the "
        "mapping depends on directions (a hillshade on the sun's azimuth, shadows on the sun, "
        "SAR layover on the look direction): a rotated pair teaches the wrong light. d4 suits "
        "rotation-invariant mappings (land-cover style maps).", choices=tuple(AUGMENTS))
    norm_method: str = setting(
        "robust", "Band scaling to [-1, 1] from meta.json statistics (robust: min-max, "
        "clipped only at far outliers beyond the 0.1/99.9th percentiles; percentile: "
        "2nd-98th percentile range, clipped).", choices=NORM_METHODS)
    norm_scope: str = setting(
        "dataset", "dataset: every chip scaled by the domain's statistics; scene: each scene "
        "(source raster) first matched to the domain's mean and std by its own statistics, "
        "recorded at export and computed from the input at prediction (for dates or sensors "
        "of different radiometry).", choices=NORM_SCOPES)
    cache: bool | None = setting(None, "Keep normalized chips in memory.",
                                 default_text="when they fit in 2 GB")
    workers: int | None = setting(None, "DataLoader worker processes, at most the usable "
                                  "cores.", minimum=0,
                                  default_text="0 when cached, else min(4, cores)")
    # running
    device: str = setting("auto", "Where to train: auto, cpu, cuda, cuda:N or mps (under "
                          "torchrun, cuda gives each process its own GPU).")
    precision: str = setting(
        "auto", "Autocast precision (auto: bf16 on CUDA when supported and on CPUs with native "
        "bf16 (AVX512-BF16/AMX: 1.85x faster, same quality), else fp32; fp16 CUDA only, with "
        "a grad scaler).", choices=PRECISIONS)
    channels_last: bool | None = setting(None, "channels_last memory format.",
                                         default_text="on for CUDA and for bf16 on CPU")
    compile: bool = setting(False, "torch.compile the networks.", negatable=False)
    seed: int = setting(0, "Seed for weights, data order, augmentation.", minimum=0)
    deterministic: bool = setting(False, "Deterministic algorithms (slower; bitwise-"
                                  "reproducible resume on CPU).", negatable=False)
    save_every: int = setting(0, "Also checkpoint every N iterations (0: at the end of each "
                              "epoch only).", minimum=0)
    keep: str = setting("last", "What model.safetensors holds: the last generator or the one "
                        "with the best validation PSNR (both are written when there is a "
                        "validation split).", choices=("last", "best"))
    patience: int | None = setting(None, "Stop a paired run after this many epochs without a "
                                   "better validation PSNR.", minimum=1)
    resume: str | None = setting(None, "Continue the run in this directory from "
                                 "checkpoints/last.pt (its settings are reused; options given "
                                 "here override them).", metavar="RUN_DIR")
    rgb_bands: str | None = setting(None, "Preview bands (1-based), e.g. 3,2,1 or "
                                    "'a:1,2,3;b:3,2,1'.",
                                    default_text="from band descriptions")
    preview: bool = setting(True, "Write previews/epoch_XXX.png and, at the end, report.html.")
    progress: bool | None = setting(None, "A progress bar (geotranslate/log.py).", cli=False,
                                    default_text="when stderr is a terminal")
    tensorboard: bool = setting(True, "TensorBoard logs, when the package is installed.",
                                cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # augment=True/False of earlier versions
            self.augment = LEGACY_AUGMENT[self.augment]

    @property
    def method(self) -> type[Method]:
        """The method class of ``dataset_type``."""
        try:
            return METHODS[self.dataset_type]
        except KeyError:
            raise OptionError(f"--dataset-type {self.dataset_type!r}: choose from "
                              f"{', '.join(METHODS)}") from None

    def validate(self) -> None:
        """Refuse impossible settings before any file is read."""
        method = self.method
        for s in shared_settings():
            check(s, getattr(self, s.name))
        own = {s.name: s for s in method.OPTIONS}
        for s in method_settings():  # another method's option, given, is checked all the same
            check(own.get(s.name, s), getattr(self, s.name))
        check_device_name(self.device)
        if self.epochs + self.epochs_decay < 1:
            raise OptionError("--epochs + --epochs-decay must be >= 1")
        method.check_options(self)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def resolved_gan_mode(self) -> str:
        return self.gan_mode or self.method.default("gan_mode")

    def resolved_generator(self) -> str:
        return self.generator or self.method.default("generator")

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
        # before --dropout: pix2pix's 0.5 in the unet, none in the resnet
        if "dropout" not in values:
            method = METHODS.get(values.get("dataset_type"))
            generator = values.get("generator") or (method.default("generator") if method
                                                    else None)
            values["dropout"] = PIX2PIX_DROPOUT if generator == "unet" else None
        return cls(**values)

    @classmethod
    def from_run(cls, run_dir: str | Path, **overrides) -> TrainConfig:
        """The settings of the run in ``run_dir``, with ``overrides`` on top, set to resume it."""
        saved = Path(run_dir) / CONFIG_NAME
        if not saved.exists():
            raise OptionError(f"{saved}: missing; is {run_dir} a training run?")
        values = sc.load_json(saved, "corrupt")
        return replace(cls.from_dict(values, saved), **overrides, resume=str(run_dir))


def shared_settings() -> list[Setting]:
    """The settings every method shares, in declaration order."""
    return field_settings(SharedSettings)


def takers(name: str) -> list[str]:
    """The methods that declare setting ``name`` among their own ``OPTIONS``."""
    return [m.name for m in METHODS.values() if any(s.name == name for s in m.OPTIONS)]


def method_settings() -> list[Setting]:
    """Each setting some method declares, once, for the command line: its default is None
    (each method's own, which the help lists) and its help names the methods that take it."""
    merged: dict[str, list[tuple[type[Method], Setting]]] = {}
    for method in METHODS.values():
        for s in method.OPTIONS:
            merged.setdefault(s.name, []).append((method, s))
    out = []
    for name, declared in merged.items():
        first = declared[0][1]
        if any(s.type is not first.type for _, s in declared):
            raise TypeError(f"methods declare setting {name!r} with different types")
        text = _defaults_text([(m.name, s.default_text if s.default is None else
                                _shown(s.default)) for m, s in declared], everyone=False)
        out.append(dataclasses.replace(first, default=None, default_text=text,
                                       help=f"{', '.join(takers(name))}: {first.help}"))
    return out


def _method_fields() -> list[tuple[str, Any, Any]]:
    return [(s.name, s.type | None, dataclasses.field(default=None, metadata={"setting": s}))
            for s in method_settings()]


#: one training run: the shared settings, then every method's own (None: the method's default)
TrainConfig = dataclasses.make_dataclass("TrainConfig", _method_fields(),
                                         bases=(SharedSettings,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = (
    "One training run: :class:`SharedSettings`, then each method's ``OPTIONS`` as fields "
    "(``None``: the method's default). ``TrainConfig('Pix2Pix', lambda_l1=50)``.")


def all_settings() -> list[Setting]:
    """Every setting of :class:`TrainConfig`, shared first, in field order."""
    return shared_settings() + method_settings()


_SCALARS = {int: sc.Int(), float: sc.Num(), str: sc.Str(), bool: sc.Bool()}


def config_schema() -> sc.Obj:
    """config.json's schema, from TrainConfig's annotations (``int | None`` -> Opt(Int))."""
    hints = typing.get_type_hints(TrainConfig)
    optional = {}
    for f in fields(TrainConfig):
        if f.name in ("dataset_type", "augment"):
            continue  # augment: a mode, or the boolean of earlier versions (__post_init__)
        node = _SCALARS[scalar_type(hints[f.name])]
        optional[f.name] = sc.Opt(node) if type(None) in typing.get_args(hints[f.name]) else node
    return sc.Obj({"dataset_type": sc.Str()}, optional=optional)
