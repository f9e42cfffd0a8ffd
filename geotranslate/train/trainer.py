"""The training loop for Pix2Pix (paired) and CycleGAN (unpaired), single process or DDP.

One :class:`Trainer` holds networks, optimizers, schedulers and image pools; ``step`` does one
generator + discriminator update following the reference implementations. Everything the
run writes (config.json, metrics.csv, previews, checkpoints, the model) lives in RUN_DIR and
is written by rank 0 only.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from geotranslate.data import (
    ChipDataset,
    EpochSampler,
    ErrorsAsItems,
    has_split,
    ignore_sigint,
    read_meta,
)
from geotranslate.device import resolve_device, resolve_precision
from geotranslate.errors import GeotranslateError, first_line
from geotranslate.log import Advice, show_progress
from geotranslate.methods import METHODS, Method, build_method
from geotranslate.metrics import MetricCollection, flat_image, not_above_flat, standard_metrics
from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
from geotranslate.models import build_discriminator, unwrap
from geotranslate.raster.io import atomic_path, check_output_dir
from geotranslate.stats import stats_from_dict
from geotranslate.train import distributed
from geotranslate.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from geotranslate.train.config import CONFIG_NAME, TrainConfig
from geotranslate.train.loop import train_loop

#: settings that fix the networks' shapes or the meaning of the run: a resume must match them.
ARCHITECTURE_KEYS = ("dataset_type", "generator_specs", "discriminator_specs", "gan_mode",
                     "nce_layers")
VAL_COLUMNS = ("val_l1", "val_psnr", "val_ssim", "val_flat_l1", "val_flat_psnr", "val_flat_ssim")
LOG = logging.getLogger("geotranslate.train")
#: after this many epochs a model whose validation PSNR is not above the flat image is flagged.
FLAT_PATIENCE_EPOCHS = 5
LOG_NAME = "train.log"
#: RUN_DIR/best/: the model file of the generator with the best validation PSNR
BEST_DIR = "best"
#: small chips are enlarged (nearest neighbour) to at least this many pixels in previews.
PREVIEW_MIN_PX = 128


def _default_run_dir(dataset_type: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{dataset_type}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _point_latest(run_dir: Path) -> None:
    """Make ``runs/latest`` name the newest run (a LATEST text file where symlinks fail)."""
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink() or not link.exists():
            tmp = run_dir.parent / f".latest.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(run_dir.name, target_is_directory=True)
            os.replace(tmp, link)
            return
    except OSError:
        pass
    (run_dir.parent / "LATEST").write_text(run_dir.name + "\n")


def parse_rgb_bands(spec: str | None) -> dict[str, list[int] | None]:
    """``"3,2,1"`` (both domains where it fits) or ``"a:1,2,3;b:3,2,1"`` -> per-domain bands."""
    out: dict[str, list[int] | None] = {"a": None, "b": None}
    if not spec:
        return out
    try:
        for part in spec.replace(" ", "").split(";"):
            if ":" in part:
                domain, bands = part.split(":", 1)
                domain = domain.lower()
                if domain not in out:
                    raise ValueError
                out[domain] = [int(b) for b in bands.split(",")]
            else:
                out["a"] = out["b"] = [int(b) for b in part.split(",")]
    except ValueError:
        raise GeotranslateError(
            f"--rgb-bands {spec!r}: expected e.g. 3,2,1 or a:1,2,3;b:3,2,1"
        ) from None
    return out


class _Metrics:
    """metrics.csv (one row per iteration + validation rows), and TensorBoard if installed."""

    def __init__(self, path: Path, loss_names: list[str], resume_iteration: int | None,
                 tensorboard: bool):
        self.path = path
        self.columns = ["epoch", "iteration", "lr", *loss_names, *VAL_COLUMNS]
        rows: list[list[str]] = []
        if resume_iteration is not None and path.exists():
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header and header[:2] == self.columns[:2] and set(header) <= set(self.columns):
                    # drop rows logged after the checkpoint; a run of an earlier version may
                    # lack columns (val_flat_*): its rows get them empty
                    at = [header.index(c) if c in header else None for c in self.columns]
                    rows = [[r[i] if i is not None else "" for i in at] for r in reader
                            if r and int(r[1]) <= resume_iteration]
        self.file = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.columns)
        self.writer.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # a resumed run drops what was logged after its checkpoint, as metrics.csv does
                purge = None if resume_iteration is None else resume_iteration + 1
                self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)
            except ImportError:
                self.tb = None

    def log(self, epoch: int, iteration: int, values: dict[str, float]) -> None:
        self.writer.writerow([epoch, iteration] + [
            "" if values.get(c) is None else f"{values[c]:.6g}" for c in self.columns[2:]
        ])
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, iteration)

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def image(self, tag: str, png: Path, iteration: int) -> None:
        """A written picture (a preview) into TensorBoard's images."""
        if self.tb is not None:
            from PIL import Image

            with Image.open(png) as im:
                self.tb.add_image(tag, np.asarray(im.convert("RGB")), iteration,
                                  dataformats="HWC")

    def hparams(self, config: dict, figures: dict[str, float]) -> None:
        """The run's settings and final figures into TensorBoard's HPARAMS tab."""
        if self.tb is None:
            return
        simple = {k: v for k, v in config.items()
                  if isinstance(v, (bool, int, float, str)) and k != "resume"}
        figures = {f"hparam/{k}": float(v) for k, v in figures.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        self.tb.add_hparams(simple, figures, run_name="hparams")

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """One run's method (networks, optimizers, one step) and its learning-rate schedule.

    The method (:mod:`geotranslate.methods`, chosen by ``config.dataset_type``) does the
    updates; the Trainer adds the schedulers, the resume checks and the checkpoint state.
    """

    def __init__(self, config: TrainConfig, meta: dict, chip_size: int,
                 device: torch.device, precision: str, ctx: distributed.DistContext,
                 log=print):
        self.config = config
        self.device = device
        self.precision = precision
        self.ctx = ctx
        self.bands = {d: int(meta["domains"][d]["band_count"]) for d in ("a", "b")}
        self.chip_size = chip_size

        def wrap(net: nn.Module) -> nn.Module:  # compile, then DDP
            wrapped = torch.compile(net) if config.compile else net
            if ctx.enabled:
                ids = [device.index] if device.type == "cuda" else None
                wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
            return wrapped

        self.method = build_method(config.dataset_type, config, self.bands, chip_size,
                                   device=device, precision=precision, rank=ctx.rank,
                                   wrap=wrap, log=log)
        self.nets = self.method.nets
        # every optimizer update of a step goes through Trainer._backward_step (one seam to
        # observe or interrupt a step between its updates)
        self.method.backward_step = (
            lambda loss, group: self._backward_step(loss, self.method.optimizers[group]))
        self.gan_mode = self.method.gan_mode
        epochs, decay = config.epochs, config.epochs_decay

        def lr_factor(epoch: int) -> float:  # constant, then linear to 0 (reference schedule)
            return 1.0 - max(0, epoch + 1 - epochs) / float(decay + 1)

        self.lr_factor = lr_factor
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.method.opt_g, lr_factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.method.opt_d, lr_factor)
        self._check_fits()

    def _check_fits(self) -> None:
        """Refuse networks that cannot run on these chips, before any file is written.

        A dry run on the meta device (shapes only, no memory, no computation) of every
        generator and discriminator (heads such as CUT's f_ab take features, not images).
        """
        c, size = self.config, self.chip_size
        for name, net in self.nets.items():
            if not name.startswith(("g_", "d_")):
                continue
            probe = copy.deepcopy(net).to("meta")
            x = torch.empty(c.batch_size, net.in_channels, size, size, device="meta")
            try:
                probe(x)
            except (RuntimeError, ValueError) as e:
                if name.startswith("d_"):
                    fits = [n for n in range(c.n_layers_d - 1, 0, -1)
                            if _fits(build_discriminator(net.in_channels, 1, n, c.d_norm), x)]
                    hint = (f"; use --n-layers-d {fits[0]} or less" if fits
                            else "; use larger chips")
                    raise GeotranslateError(
                        f"--n-layers-d {c.n_layers_d}: the discriminator does not fit "
                        f"{size} px chips at batch size {c.batch_size}{hint} ({first_line(e)})"
                    ) from None
                raise GeotranslateError(
                    f"the {c.resolved_generator()} generator does not fit {size} px chips at "
                    f"batch size {c.batch_size} ({first_line(e)})"
                ) from None

    def __getattr__(self, name: str) -> nn.Module:
        """The method's networks by name: ``trainer.g_ab``, ``trainer.d_b``..."""
        nets = self.__dict__.get("nets", {})
        if name in nets:
            return nets[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the update rules (the method's) -------------------------------------------------------
    @property
    def directions(self) -> tuple[str, ...]:
        return self.method.directions

    @property
    def generator_specs(self) -> dict[str, dict]:
        return self.method.generator_specs

    @property
    def discriminator_specs(self) -> dict[str, dict]:
        return self.method.discriminator_specs

    def autocast(self):
        return self.method.autocast()

    def loss_names(self) -> list[str]:
        return self.method.loss_names()

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update; returns the (detached) losses."""
        return self.method.step(batch)

    def _backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        group = next(g for g, opt in self.method.optimizers.items() if opt is optimizer)
        Method.backward_step(self.method, loss, group)

    def end_epoch(self) -> None:
        with warnings.catch_warnings():
            # a run resumed at the very end of an epoch steps the schedule before its first
            # optimizer step; the optimizers did step (before the checkpoint), so torch's
            # warning about a skipped first rate does not apply
            warnings.filterwarnings(
                "ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)
            self.sched_g.step()
            self.sched_d.step()

    @property
    def lr(self) -> float:
        return self.method.lr

    # -- state -------------------------------------------------------------------------------
    def specs(self) -> dict:
        specs = {"dataset_type": self.config.dataset_type,
                 "generator_specs": self.generator_specs,
                 "discriminator_specs": self.discriminator_specs,
                 "gan_mode": self.gan_mode}
        layers = getattr(self.method, "nce_layers", None)
        if layers is not None:
            specs["nce_layers"] = list(layers)
        return specs

    def state_dict(self) -> dict:
        return {**self.method.state_dict(),
                "schedulers": {"g": self.sched_g.state_dict(), "d": self.sched_d.state_dict()},
                "specs": self.specs()}

    def load_state_dict(self, state: dict, path: Path) -> None:
        saved, mine = state.get("specs", {}), self.specs()
        for key in ARCHITECTURE_KEYS:
            if saved.get(key) != mine.get(key):
                raise GeotranslateError(
                    f"{path}: cannot resume: the run has {key.replace('_', ' ')} "
                    f"{_short(saved.get(key))}, these settings give {_short(mine.get(key))}"
                )
        self.method.load_state_dict(state, path)
        try:
            self.sched_g.load_state_dict(state["schedulers"]["g"])
            self.sched_d.load_state_dict(state["schedulers"]["d"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise GeotranslateError(f"{path}: checkpoint does not fit this run ({first_line(e)})") \
                from None
        # the schedule of these settings (--lr, --epochs, --epochs-decay may have changed): the
        # restored one would keep a finished run at learning rate 0
        for scheduler in (self.sched_g, self.sched_d):
            scheduler.base_lrs = [self.config.lr] * len(scheduler.base_lrs)
            for group in scheduler.optimizer.param_groups:
                group["initial_lr"] = self.config.lr
                group["lr"] = self.config.lr * self.lr_factor(scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]

    def non_finite(self) -> str | None:
        """The first weight that is NaN or infinite, as ``net.param``; None if all are finite."""
        for name, net in self.nets.items():
            for key, value in unwrap(net).state_dict().items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    return f"{name}.{key}"
        return None

    # -- evaluation --------------------------------------------------------------------------
    def translate(self, direction: str, x: torch.Tensor) -> torch.Tensor:
        return self.method.translate(direction, x)


def _fits(net: nn.Module, x: torch.Tensor) -> bool:
    try:
        net.to("meta")(x)
    except (RuntimeError, ValueError):
        return False
    return True


class _InterruptAtStepEnd:
    """Ctrl-C during training takes effect between steps, so a checkpoint never mixes two.

    The first SIGINT sets ``requested`` (checked between steps); a second one, in a single
    process, raises KeyboardInterrupt at once (no checkpoint is saved then). Under DDP every
    SIGINT is deferred (torchrun forwards the terminal's) and the ranks stop together.
    Installed only over Python's default handler, in the main thread.
    """

    def __init__(self, ctx: distributed.DistContext):
        self.ctx = ctx
        self.requested = False
        self.previous = None

    def __enter__(self) -> _InterruptAtStepEnd:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.ctx.enabled:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def pending(self) -> bool:
        return distributed.any_rank(self.requested, self.ctx)


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_separate(run_dir: Path, data_dir: str, vgg_weights: str | None = None) -> None:
    """Refuse a run directory that is, holds or lies inside the chip folder, that is a file
    (or under one), or that holds the --vgg-weights file (an input it could write over)."""
    check_output_dir(run_dir, "run directory")
    if vgg_weights and run_dir.resolve() in Path(vgg_weights).resolve().parents:
        raise GeotranslateError(
            f"{vgg_weights}: --vgg-weights lies in the run directory {run_dir}, whose files "
            "the run writes; keep it elsewhere")
    run, data = run_dir.resolve(), Path(data_dir).resolve()
    if run == data or data in run.parents or run in data.parents:
        raise GeotranslateError(
            f"{run_dir}: the run directory would mix with the chips in {data_dir}; "
            "choose an --out outside the chip folder"
        )


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 160 else text[:157] + "..."


@torch.no_grad()
def validate(trainer: Trainer, dataset: ChipDataset, batch_size: int) -> dict[str, float]:
    """L1, PSNR and SSIM of fake B against real B over the validation chips' valid pixels.

    Figures are in the model's [-1, 1] range (data range 2), pooled over all chips by
    :func:`geotranslate.metrics.standard_metrics`, the same definitions as ``evaluate``.
    ``val_flat_*``: the same figures of a flat image at domain B's training mean (meta.json
    statistics, normalized like the chips) on the same chips and pixels: the bar to clear.
    """
    means = [s.mean for s in stats_from_dict(dataset.meta["domains"]["b"]["stats"])]
    flat_b = dataset.norm["b"].to_model(np.asarray(means).reshape(-1, 1, 1))
    accumulator: MetricCollection | None = None
    baseline: MetricCollection | None = None
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        a = torch.stack([it["a"] for it in items])
        fake_b = trainer.translate("a2b", a).float().cpu().numpy()
        for item, fake in zip(items, fake_b, strict=True):
            real = item["b"].numpy()
            valid = (item["valid_a"][0] * item["valid_b"][0]).numpy() > 0
            if accumulator is None:
                accumulator = standard_metrics(real.shape[0], data_range=2.0)
                baseline = standard_metrics(real.shape[0], data_range=2.0)
            accumulator.update(fake, real, valid)
            baseline.update(flat_image(flat_b[:, 0, 0], real.shape), real, valid)
    if accumulator is None or accumulator.count == 0:
        return {}
    figures = {}
    for prefix, acc in (("val_", accumulator), ("val_flat_", baseline)):
        overall = acc.compute()["overall"]
        figures.update({prefix + "l1": overall["mae"],
                        prefix + "psnr": min(overall["psnr"], 100.0)})
        if overall["ssim"] is not None:  # chips under 7 px have no SSIM
            figures[prefix + "ssim"] = overall["ssim"]
    return figures


def validation_line(epoch: int, scores: dict[str, float], advice: Advice | None = None) -> str:
    """The log line of one validation: the model's figures, the flat image's, and a plain
    warning when, after FLAT_PATIENCE_EPOCHS epochs, the model's PSNR is not above it (its
    advice in full once per ``advice``, later as a reminder with a count)."""

    def figures(prefix: str) -> str:
        text = f"L1 {scores[prefix + 'l1']:.4f}, PSNR {scores[prefix + 'psnr']:.2f} dB"
        if prefix + "ssim" in scores:
            text += f", SSIM {scores[prefix + 'ssim']:.4f}"
        return text

    when = f"epoch {epoch}" if epoch else "untrained model"
    line = (f"{when} validation: {figures('val_')} (flat image at the target mean: "
            f"{figures('val_flat_')})")
    worse = not_above_flat({k: scores.get("val_" + k) for k in ("psnr", "ssim")},
                           {k: scores.get("val_flat_" + k) for k in ("psnr", "ssim")})
    if worse:
        what = ", ".join(worse)
        if epoch >= FLAT_PATIENCE_EPOCHS:
            said = f"; no better than a flat image after {epoch} epochs ({what})"
            text = (said + ": check --augment (flips/rotations break direction-dependent "
                    "mappings), the normalization (--norm-method) and the pairing of A and B")
            line += advice("flat", text, said) if advice is not None else text
        elif epoch:
            line += f"; not yet better than a flat image ({what})"
    return line


def write_preview(trainer: Trainer, item: dict, norm: dict, meta: dict, rgb: dict,
                  path: Path) -> None:
    """Real A, fake B, (rec A,) real B (, fake A, rec B) rendered in data units."""
    from geotranslate.render import Panel, render_panels

    a, b = item["a"][None], item["b"][None]
    va, vb = item["valid_a"][0].numpy() > 0, item["valid_b"][0].numpy() > 0

    def panel(title: str, x: torch.Tensor, domain: str, valid: np.ndarray) -> Panel:
        data = norm[domain].from_model(x[0].cpu().numpy())
        dom = meta["domains"][domain]
        bands = rgb[domain]
        if bands and any(b < 1 or b > int(dom["band_count"]) for b in bands):
            bands = None
        return Panel(title, data, valid, dom.get("band_descriptions"), bands)

    fake_b = trainer.translate("a2b", a)
    panels = [panel("real A", a, "a", va), panel("fake B", fake_b, "b", va)]
    if "b2a" in trainer.directions:
        rec_a = trainer.translate("b2a", fake_b)
        fake_a = trainer.translate("b2a", b)
        rec_b = trainer.translate("a2b", fake_a)
        panels += [panel("reconstructed A", rec_a, "a", va), panel("real B", b, "b", vb),
                   panel("fake A", fake_a, "a", vb), panel("reconstructed B", rec_b, "b", vb)]
    else:
        panels.append(panel("real B", b, "b", vb))
    size = max(p.data.shape[-1] for p in panels)
    render_panels(panels, path, columns=3, scale=max(1, PREVIEW_MIN_PX // size))


def _model_domains(meta: dict, dataset: ChipDataset) -> dict[str, DomainSpec]:
    out = {}
    for d in ("a", "b"):
        dom = meta["domains"][d]
        count = int(dom["band_count"])
        out[d] = DomainSpec(count, str(dom["dtype"]),
                            list(dom.get("band_descriptions") or [None] * count),
                            dom.get("nodata"), dataset.norm[d],
                            norm_scope=dataset.norm_scope, reference=dataset.reference.get(d),
                            input_transforms=list(dom.get("input_transforms") or []),
                            composition=list(dom.get("composition") or []))
    return out



def _remove_new(run_dir: Path, before: set[str], existed: bool) -> None:
    """Undo what a failed fresh run created in RUN_DIR (and runs/latest pointing at it)."""
    link = run_dir.parent / "latest"
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link) == run_dir.name:
            link.unlink()
    for name in (set(os.listdir(run_dir)) - before) if run_dir.is_dir() else ():
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    if not existed:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def train(config: TrainConfig) -> Path:
    """Train a Pix2Pix or CycleGAN translator; returns the run directory (see docs/formats.md)."""
    config.validate()
    ctx = distributed.setup(resolve_device(config.device).type)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    undo: dict = {}  # what a fresh run adds to RUN_DIR (_train fills it)
    try:
        return _train(config, ctx, undo)
    except GeotranslateError:
        if undo and not checkpoint_path(undo["run_dir"]).exists():
            _remove_new(undo["run_dir"], undo["before"], undo["existed"])
        raise
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.teardown(ctx)


def _train(config: TrainConfig, ctx: distributed.DistContext, undo: dict) -> Path:
    run = _Run(config, ctx, undo)
    try:
        with run.interrupts():
            train_loop(run.trainer, run)
        return run.write_model()
    finally:
        # before a failed fresh run's directory is removed: no TensorBoard writer thread may
        # write into it afterwards
        if run.metrics is not None:
            run.metrics.close()


class _Run:
    """One run's directory, data, metrics, checkpoints and outputs (rank 0 writes them).

    :func:`geotranslate.train.loop.train_loop` drives it: ``batches`` / ``log_step`` /
    ``step_done`` per step, ``end_epoch`` per epoch, ``finish`` at the end; ``interrupts()``
    defers Ctrl-C to step boundaries and saves a checkpoint when one stops the run.
    """

    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, undo: dict):
        self.started = time.time()
        # an absolute data path keeps config.json usable for --resume from another directory
        config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).absolute()))
        self.config, self.ctx = config, ctx
        device = resolve_device(config.device, ctx.local_rank if ctx.enabled else None)
        self.device = device
        self.precision = precision = resolve_precision(config.precision, device, training=True)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.meta = meta = read_meta(config.data_dir)
        paired = METHODS[config.dataset_type].paired
        self.train_set = train_set = ChipDataset(
            config.data_dir, "train", paired=paired, norm_method=config.norm_method,
            norm_scope=config.norm_scope,
            crop_size=config.crop_size, augment=config.augment, cache=config.cache,
            seed=config.seed, meta=meta)
        self.val_set = None
        if paired and has_split(config.data_dir, "val"):
            self.val_set = ChipDataset(config.data_dir, "val", paired=True,
                                       norm_method=config.norm_method,
                                       norm_scope=config.norm_scope,
                                       crop_size=config.crop_size, augment=False,
                                       random_crop=False, cache=config.cache,
                                       seed=config.seed, meta=meta)
        if (config.keep == "best" or config.patience) and self.val_set is None:
            what = "--keep best" if config.keep == "best" else "--patience"
            raise GeotranslateError(
                f"{config.data_dir}: {what} needs a validation split of paired chips "
                f"({config.dataset_type} on {'these chips' if paired else 'unpaired data'} "
                "has none; export-tiles --val-fraction makes one)")

        # run directory: rank 0 decides, everyone agrees
        if config.resume:
            run_dir = Path(config.resume)
            _check_separate(run_dir, config.data_dir, config.vgg_weights)
            checkpoint = load_checkpoint(run_dir)
        else:
            checkpoint = None
            run_dir = Path(config.out) if config.out else _default_run_dir(config.dataset_type)
            _check_separate(run_dir, config.data_dir, config.vgg_weights)
            if run_dir.exists() and (
                    checkpoint_path(run_dir).parent.exists() or (run_dir / "model.json").exists()):
                raise GeotranslateError(f"{run_dir}: already holds a run; continue it with "
                                        "--resume or choose another --out")
        self.run_dir = run_dir = Path(distributed.broadcast(str(run_dir), ctx))
        self.log_lines: list[str] = []  # kept until RUN_DIR exists, then appended to train.log
        self.log_file: Path | None = None

        self.trainer = trainer = Trainer(config, meta, train_set.crop_size, device, precision,
                                         ctx, self.log)
        self.epoch, self.epoch_batch, self.iteration, self.elapsed = 0, 0, 0, 0.0
        self.last_losses: dict[str, float] = {}
        self.best: dict = {}  # {"psnr", "epoch"} of the best validation (the model in best/)
        self.best_weights: dict = {}  # direction -> that epoch's generator state (rank 0, CPU)
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint, checkpoint_path(run_dir))
            self.epoch, self.epoch_batch = (int(checkpoint["epoch"]),
                                            int(checkpoint["epoch_batch"]))
            self.iteration = int(checkpoint["iteration"])
            trainer.method.iteration = self.iteration
            self.elapsed = float(checkpoint.get("elapsed_s", 0))
            self.last_losses = dict(checkpoint.get("last_losses", {}))
            self.best = dict(checkpoint.get("best", {}))
            self.best_weights = self.best.pop("generators", {})
            set_rng_state(checkpoint["rng"])
            if ctx.enabled:  # each rank continues its own dropout stream
                torch.manual_seed(config.seed + ctx.rank + self.iteration)

        if ctx.is_main and checkpoint is None:  # removed again if it fails before a checkpoint
            undo["run_dir"] = run_dir
            undo["existed"] = run_dir.exists()
            undo["before"] = set(os.listdir(run_dir)) if run_dir.exists() else set()
        if ctx.is_main:
            (run_dir / "previews").mkdir(parents=True, exist_ok=True)
            with atomic_path(run_dir / CONFIG_NAME) as tmp:
                tmp.write_text(json.dumps(config.to_dict(), indent=2))
            if not config.out and not config.resume:
                _point_latest(run_dir)
            self.log_file = run_dir / LOG_NAME
        crops = "" if train_set.crop_size == train_set.chip_size else \
            f" (crops of {train_set.crop_size})"
        world = f", world size {ctx.world_size}" if ctx.enabled else ""
        self.log(f"{config.dataset_type} on {len(train_set)} chips of {train_set.chip_size} px"
                 f"{crops}, augment {train_set.augment}, "
                 f"{trainer.bands['a']} -> {trainer.bands['b']} bands, device {device}, "
                 f"{precision}{world}; run dir {run_dir}")
        if checkpoint is not None:
            self.log(f"resuming at epoch {self.epoch + 1}, iteration {self.iteration}")

        self.sampler = EpochSampler(len(train_set), seed=config.seed, rank=ctx.rank,
                                    world_size=ctx.world_size)
        cores = _usable_cores()
        workers = config.workers if config.workers is not None else (
            0 if train_set.cached else min(4, cores))
        if workers > cores:  # CPU-bound processes: more than the cores only wait (and cost RAM)
            self.log(f"note: --workers {workers}: more loader processes than usable cores "
                     f"({cores}) gain nothing; using {cores}")
            workers = cores
        self.loader = DataLoader(
            ErrorsAsItems(train_set), batch_size=config.batch_size, sampler=self.sampler,
            num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, generator=torch.Generator(), collate_fn=_collate,
            worker_init_fn=ignore_sigint)
        self.total_epochs = config.total_epochs
        self.max_steps = config.max_steps
        self.batches_per_epoch = math.ceil(self.sampler.per_rank / config.batch_size)
        self.metrics = None
        if ctx.is_main:
            self.metrics = _Metrics(run_dir / "metrics.csv", trainer.loss_names(),
                                    self.iteration if checkpoint is not None else None,
                                    config.tensorboard)
        self.rgb = parse_rgb_bands(config.rgb_bands)
        self.preview_set = self.val_set or train_set
        self.t_run = time.time()
        self.saved_at: list[tuple[int, int, int]] = []  # (epoch, batch, iteration) last saved
        self.stopped = self.max_steps is not None and self.iteration >= self.max_steps
        self.interrupt = _InterruptAtStepEnd(ctx)
        self.advice = Advice()  # long advice once per session, then a reminder with a count
        self.mid_step = False  # a KeyboardInterrupt while True would leave a half-updated state

    def log(self, message: str, level: int = logging.INFO) -> None:
        """A run-wide line (rank 0): stderr through logging, and RUN_DIR/train.log."""
        if self.ctx.is_main:
            LOG.log(level, message)
            self.log_lines.append(message if level < logging.WARNING else f"warning: {message}")
            if self.log_file is not None:
                with open(self.log_file, "a") as f:
                    f.writelines(line + "\n" for line in self.log_lines)
                self.log_lines.clear()

    # -- what the loop calls -----------------------------------------------------------------
    @contextlib.contextmanager
    def interrupts(self):
        """Ctrl-C at step boundaries: saves a checkpoint (not when it comes twice in a step)."""
        self.interrupt.__enter__()
        try:
            if self.ctx.is_main and self.val_set is not None and self.iteration == 0:
                self.validate_now(0)  # the untrained baseline
            if self.epoch < self.total_epochs and self.patience_spent():
                self.stopped = True
            yield self
        except KeyboardInterrupt:
            if self.mid_step:  # a second Ctrl-C inside a step: half updated, not saved
                last = (f"the last checkpoint (iteration {self.saved_at[0][2]})"
                        if self.saved_at else "no checkpoint from this session")
                self.log(f"interrupted again inside iteration {self.iteration + 1}; not saved, "
                         f"{last} is kept in {self.run_dir}")
            else:
                self.checkpoint_now()
                self.log(f"interrupted at iteration {self.iteration}; checkpoint saved, "
                         f"continue with --resume {self.run_dir}")
            if self.metrics is not None:
                self.metrics.close()
            raise
        finally:
            self.interrupt.__exit__()

    def should_stop(self) -> bool:
        return self.stopped

    def batches(self, epoch: int, start_batch: int):
        """This epoch's batches from ``start_batch`` on (a worker's chip error is raised)."""
        c = self.config
        self.sampler.set_epoch(epoch, start=start_batch * c.batch_size)
        bar = tqdm(total=self.batches_per_epoch, initial=start_batch,
                   desc=f"epoch {epoch + 1}/{c.total_epochs}", unit="it",
                   disable=not (self.ctx.is_main and show_progress(c.progress)), leave=False,
                   dynamic_ncols=True)
        self.bar = bar
        try:
            for batch in self.loader:
                if isinstance(batch, GeotranslateError):  # a chip failed in a worker
                    raise batch
                self.mid_step = True
                yield batch
        finally:
            bar.close()

    def log_step(self, values: dict[str, float]) -> None:
        """After a step: stop on a non-finite loss (all ranks), else a metrics row."""
        self.mid_step = False
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if distributed.any_rank(bool(bad), self.ctx):  # all ranks stop together
            what = (f"loss {bad[0]} is {values[bad[0]]}" if bad
                    else "a loss is not finite on another rank")
            raise _diverged(what, self.iteration, self.run_dir, self.saved_at)
        self.last_losses = values
        if self.metrics is not None:
            self.metrics.log(self.epoch + 1, self.iteration, {"lr": self.trainer.lr, **values})
        self.bar.update(1)
        if self.iteration % 10 == 0 or self.epoch_batch == self.batches_per_epoch:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)

    def step_done(self) -> None:
        c = self.config
        if c.save_every and self.iteration % c.save_every == 0:
            self.checkpoint_now()
        if c.max_steps is not None and self.iteration >= c.max_steps:
            self.stopped = True
            if self.epoch_batch < self.batches_per_epoch and self.ctx.is_main and c.preview:
                # stopped mid-epoch (--max-steps): show where it got to; the checkpoint says
                # where to continue (no validation row: a resumed run's metrics stay equal
                # to an uninterrupted run's)
                self.preview(self.epoch + 1)
        elif self.interrupt.pending():
            raise KeyboardInterrupt

    def end_epoch(self) -> None:
        """After ``epoch`` was counted: schedule, validation, preview, checkpoint, patience."""
        self.trainer.end_epoch()
        self.epoch_batch = 0
        if self.ctx.is_main:
            if self.val_set is not None:
                self.validate_now(self.epoch)
            if self.config.preview:
                self.preview(self.epoch)
            self.metrics.flush()
        self.best.update(distributed.broadcast(
            {k: self.best[k] for k in ("psnr", "epoch") if k in self.best}, self.ctx))
        if self.metrics is not None and self.last_losses:
            self.log(f"epoch {self.epoch}/{self.total_epochs} done, iteration "
                     f"{self.iteration}: " +
                     ", ".join(f"{k} {v:.4g}" for k, v in self.last_losses.items()))
        self.checkpoint_now()
        if self.best.get("epoch") == self.epoch:
            self.save_best()
        if self.interrupt.pending():
            raise KeyboardInterrupt
        if self.epoch < self.total_epochs and self.patience_spent():
            self.stopped = True

    def finish(self) -> None:
        self.checkpoint_now()
        if self.interrupt.pending():
            raise KeyboardInterrupt

    # -- outputs -----------------------------------------------------------------------------
    def checkpoint_now(self) -> None:
        """Save where the run stands, unless that very state is already on disk."""
        position = (self.epoch, self.epoch_batch, self.iteration)
        if self.ctx.is_main and self.saved_at[-1:] != [position]:
            bad = self.trainer.non_finite()
            if bad is not None:
                raise _diverged(f"weight {bad} is not finite", self.iteration, self.run_dir,
                                self.saved_at)
            self.metrics.flush()  # the rows up to this checkpoint survive a kill
            self.saved_at[:] = [position]
            best = {"best": {**self.best, "generators": self.best_weights}} if self.best else {}
            save_checkpoint({**self.trainer.state_dict(),
                             "epoch": self.epoch, "epoch_batch": self.epoch_batch,
                             "iteration": self.iteration, "rng": rng_state(),
                             "elapsed_s": self.elapsed + time.time() - self.t_run,
                             "last_losses": dict(self.last_losses), **best}, self.run_dir)

    def validate_now(self, epoch: int) -> None:
        """A validation row and log line; a better PSNR (epoch >= 1) becomes the best."""
        scores = validate(self.trainer, self.val_set, self.config.batch_size)
        if not scores:
            return
        self.metrics.log(epoch, self.iteration, scores)
        self.log(validation_line(epoch, scores, self.advice))
        if epoch and (not self.best or scores["val_psnr"] > self.best["psnr"]):
            self.best.update(psnr=scores["val_psnr"], epoch=epoch)
            self.best_weights.update({
                d: {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                for d, net in self.trainer.method.generators().items()})

    def patience_spent(self) -> bool:
        """--patience epochs done since the best validation (or the start): stop (logged)."""
        patience, best = self.config.patience, self.best
        since = self.epoch - best.get("epoch", 0)
        if not patience or self.val_set is None or since < patience:
            return False
        self.log(f"stopping at epoch {self.epoch}: validation PSNR has not improved for "
                 f"{since} epoch{'s' if since != 1 else ''} (--patience {patience}; best " +
                 (f"{best['psnr']:.2f} dB at epoch {best['epoch']})" if best else "none)"))
        return True

    def preview(self, epoch_number: int) -> None:
        path = self.run_dir / "previews" / f"epoch_{epoch_number:03d}.png"
        write_preview(self.trainer, self.preview_set[0], self.preview_set.norm, self.meta,
                      self.rgb, path)
        self.metrics.image("preview", path, self.iteration)

    def translation_model(self, summary: dict) -> TranslationModel:
        specs = {}
        for direction, spec in self.trainer.generator_specs.items():
            spec = copy.deepcopy(spec)
            if "pretrained" in spec["kwargs"]:
                spec["kwargs"]["pretrained"] = False  # weights come from the model file
            specs[direction] = spec
        return TranslationModel(self.config.dataset_type, self.trainer.method.generators(),
                                specs, _model_domains(self.meta, self.train_set),
                                self.train_set.crop_size, summary)

    def save_best(self) -> dict:
        """RUN_DIR/best/: the model file of the best epoch's generator (after its checkpoint,
        which also holds it, so a kill in between loses nothing); returns its generators."""
        if not (self.ctx.is_main and self.best):
            return {}
        model = self.translation_model({"best_epoch": self.best["epoch"],
                                        "val_psnr": self.best["psnr"]})
        model.generators = {d: copy.deepcopy(net) for d, net in model.generators.items()}
        for d, net in model.generators.items():
            net.load_state_dict(self.best_weights[d])
        save_model(model, self.run_dir / BEST_DIR)
        return model.generators

    def write_model(self) -> Path:
        """After the loop: weights checked, ranks agree, model.safetensors + model.json."""
        ctx, config, best, run_dir = self.ctx, self.config, self.best, self.run_dir
        if ctx.is_main and self.trainer.non_finite() is not None:
            raise _diverged(f"weight {self.trainer.non_finite()} is not finite", self.iteration,
                            run_dir, self.saved_at)
        if ctx.enabled:
            differing = distributed.ranks_agree(self.trainer.nets, ctx)
            if differing:
                raise RuntimeError(f"DDP ranks disagree on the weights of {', '.join(differing)}")
            self.log(f"all {ctx.world_size} ranks hold identical weights")
        if ctx.is_main:
            seconds = self.elapsed + time.time() - self.t_run
            summary = {
                "epochs": self.epoch, "iterations": self.iteration,
                "final_losses": self.last_losses, "seconds": round(seconds, 2),
                "device": str(self.device), "precision": self.precision,
                "batch_size": config.batch_size, "world_size": ctx.world_size,
                "gan_mode": self.trainer.gan_mode,
                "lambda_identity": getattr(self.trainer.method, "lambda_identity", None),
                "pretrained": config.pretrained, "norm_method": config.norm_method,
                "augment": config.augment,
                "gan_warmup": self.trainer.method.option("gan_warmup"),
                "gan_ramp": self.trainer.method.option("gan_ramp"),
                "data_dir": config.data_dir,
                "started": datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            }
            if best:
                summary.update(best_epoch=best["epoch"], best_val_psnr=best["psnr"],
                               kept=config.keep)
            model = self.translation_model(summary)
            best_generators = self.save_best()  # again: a resumed run may not have written it
            if config.keep == "best" and best:
                model.generators = best_generators
            save_model(model, run_dir)
            kept = (f" (the best validation, epoch {best['epoch']}; the last is not kept)"
                    if config.keep == "best" and best else
                    f"; the best validation (epoch {best['epoch']}) in {run_dir / BEST_DIR}"
                    if best else "")
            self.log(f"done: {self.iteration} iterations in {seconds:.1f} s; model in "
                     f"{run_dir}{kept}")
        if self.metrics is not None:
            figures = {**{f"final_{k}": v for k, v in self.last_losses.items()},
                       **({"best_val_psnr": best["psnr"]} if best else {})}
            self.metrics.hparams(config.to_dict(), figures)
            self.metrics.close()
        if ctx.is_main and config.preview:
            self.write_report()
        distributed.barrier(ctx)
        return run_dir


    def write_report(self) -> None:
        """RUN_DIR/report.html (geotranslate report); a failure is a warning, not a failed run."""
        from geotranslate.report import write_report

        try:
            path = write_report(self.run_dir, device=str(self.device))
        except (GeotranslateError, OSError, ValueError) as e:
            self.log(f"no report written ({e})", logging.WARNING)
        else:
            self.log(f"report: {path}")


def _diverged(what: str, iteration: int, run_dir: Path, saved_at: list) -> GeotranslateError:
    kept = (f"the last good checkpoint (iteration {saved_at[0][2]}) is kept in {run_dir}"
            if saved_at else f"its earlier checkpoint is kept in {run_dir}"
            if checkpoint_path(run_dir).exists() else "no checkpoint was saved")
    return GeotranslateError(
        f"training diverged at iteration {iteration}: {what}; no model written, {kept}; "
        "lower --lr or the loss weights"
    )


def _collate(items: list[dict]) -> dict | GeotranslateError:
    for item in items:
        if isinstance(item, GeotranslateError):
            return item
    out = {k: torch.stack([it[k] for it in items]) for k in ("a", "b", "valid_a", "valid_b")}
    out["name_a"] = [it["name_a"] for it in items]
    out["name_b"] = [it["name_b"] for it in items]
    return out
