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
import math
import os
import shutil
import signal
import sys
import threading
import time
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
from geotranslate.device import autocast, default_channels_last, resolve_device, resolve_precision
from geotranslate.errors import GeotranslateError, first_line
from geotranslate.metrics import MetricsAccumulator, flat_image
from geotranslate.modelfile import DomainSpec, TranslationModel, save_model
from geotranslate.models import (
    GANLoss,
    ImagePool,
    build_discriminator,
    build_generator,
    default_unet_depth,
    generator_spec,
    masked_l1,
    total_variation,
    unwrap,
)
from geotranslate.raster.io import atomic_path
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

#: settings that fix the networks' shapes or the meaning of the run: a resume must match them.
ARCHITECTURE_KEYS = ("dataset_type", "generator_specs", "discriminator_specs", "gan_mode")
VAL_COLUMNS = ("val_l1", "val_psnr", "val_ssim", "val_flat_l1", "val_flat_psnr", "val_flat_ssim")
#: after this many epochs a model whose validation PSNR is not above the flat image is flagged.
FLAT_PATIENCE_EPOCHS = 5
LOG_NAME = "train.log"
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

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """Networks, optimizers and the update rules of one run."""

    def __init__(self, config: TrainConfig, meta: dict, chip_size: int,
                 device: torch.device, precision: str, ctx: distributed.DistContext,
                 log=print):
        self.config = config
        self.device = device
        self.precision = precision
        self.ctx = ctx
        self.cycle = config.dataset_type == "CycleGAN"
        self.bands = {d: int(meta["domains"][d]["band_count"]) for d in ("a", "b")}
        self.chip_size = chip_size
        self.gan_mode = config.resolved_gan_mode()
        self.lambda_identity = config.lambda_identity
        if self.cycle and config.lambda_identity > 0 and self.bands["a"] != self.bands["b"]:
            log(f"identity loss off: domain A has {self.bands['a']} bands and domain B "
                f"{self.bands['b']} (the identity mapping needs equal band counts)")
            self.lambda_identity = 0.0

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.g_ab = self._build_generator(self.bands["a"], self.bands["b"])
        d_b_in = self.bands["b"] + (0 if self.cycle else self.bands["a"])
        self.d_b = build_discriminator(d_b_in, config.ndf, config.n_layers_d, config.net_norm)
        self.nets: dict[str, nn.Module] = {"g_ab": self.g_ab, "d_b": self.d_b}
        if self.cycle:
            self.g_ba = self._build_generator(self.bands["b"], self.bands["a"])
            self.d_a = build_discriminator(self.bands["a"], config.ndf, config.n_layers_d,
                                           config.net_norm)
            self.nets.update(g_ba=self.g_ba, d_a=self.d_a)
        self.generator_specs = {"a2b": generator_spec(self.g_ab).to_dict()}
        if self.cycle:
            self.generator_specs["b2a"] = generator_spec(self.g_ba).to_dict()
        self.discriminator_specs = {
            name: {"in_channels": net.in_channels, **net.arch_kwargs}
            for name, net in self.nets.items() if name.startswith("d_")
        }
        self.channels_last = (config.channels_last if config.channels_last is not None
                              else default_channels_last(device, precision))
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for net in self.nets.values():
            net.to(device, memory_format=memory_format)
            net.train()

        betas = (config.beta1, config.beta2)
        g_params = [p for n, net in self.nets.items() if n.startswith("g_") for p in
                    net.parameters()]
        d_params = [p for n, net in self.nets.items() if n.startswith("d_") for p in
                    net.parameters()]
        self.opt_g = torch.optim.Adam(g_params, lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(d_params, lr=config.lr, betas=betas)
        epochs, decay = config.epochs, config.epochs_decay

        def lr_factor(epoch: int) -> float:  # constant, then linear to 0 (reference schedule)
            return 1.0 - max(0, epoch + 1 - epochs) / float(decay + 1)

        self.lr_factor = lr_factor
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lr_factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.gan_loss = GANLoss(self.gan_mode)
        self.pools = {}
        if self.cycle:
            self.pools = {"a": ImagePool(config.pool_size, seed=config.seed * 2 + 1 + ctx.rank),
                          "b": ImagePool(config.pool_size, seed=config.seed * 2 + 2 + ctx.rank)}
        torch.manual_seed(config.seed + ctx.rank)  # dropout differs per rank, as in DDP usage

        # wrappers used in the training step (DDP / compile); self.nets keeps the bare ones
        self.run_nets: dict[str, nn.Module] = {}
        for name, net in self.nets.items():
            wrapped = torch.compile(net) if config.compile else net
            if ctx.enabled:
                ids = [device.index] if device.type == "cuda" else None
                wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
            self.run_nets[name] = wrapped
        self._check_fits()

    def _check_fits(self) -> None:
        """Refuse networks that cannot run on these chips, before any file is written.

        A dry run on the meta device (shapes only, no memory, no computation).
        """
        c, size = self.config, self.chip_size
        for name, net in self.nets.items():
            probe = copy.deepcopy(net).to("meta")
            x = torch.empty(c.batch_size, net.in_channels, size, size, device="meta")
            try:
                probe(x)
            except (RuntimeError, ValueError) as e:
                if name.startswith("d_"):
                    fits = [n for n in range(c.n_layers_d - 1, 0, -1)
                            if _fits(build_discriminator(net.in_channels, 1, n, c.net_norm), x)]
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

    def _build_generator(self, in_channels: int, out_channels: int) -> nn.Module:
        c = self.config
        arch = c.resolved_generator()
        try:
            if arch == "resnet":
                n_blocks = c.n_blocks if c.n_blocks is not None else (
                    9 if self.chip_size >= 256 else 6)
                net = build_generator(arch, in_channels, out_channels, ngf=c.ngf,
                                      n_blocks=n_blocks, norm=c.net_norm)
            elif arch == "unet":
                depth = c.unet_depth or default_unet_depth(self.chip_size)
                net = build_generator(arch, in_channels, out_channels, ngf=c.ngf,
                                      num_downs=depth, norm=c.net_norm)
            else:
                net = build_generator(arch, in_channels, out_channels,
                                      pretrained=c.pretrained, norm=c.net_norm)
        except (ValueError, RuntimeError, KeyError) as e:
            raise GeotranslateError(f"--generator {arch}: {e}") from None
        stride = int(getattr(net, "total_stride", 1))
        if self.chip_size < stride:
            raise GeotranslateError(
                f"chip size {self.chip_size} px is smaller than {stride}, the stride of the "
                f"{arch} generator; use a smaller --unet-depth or larger chips"
            )
        if self.chip_size % stride:
            fit = self.chip_size // stride * stride
            hint = (
                f"use --crop-size {fit}" if fit else
                f"use chips (or a --crop-size) of a multiple of {stride} px, or a generator "
                "with fewer down-samplings"
            )
            raise GeotranslateError(
                f"chip size {self.chip_size} px is not divisible by {stride}, which the {arch} "
                f"generator needs; {hint}"
            )
        return net

    # -- the update rules ----------------------------------------------------------------------
    def autocast(self):
        return autocast(self.device, self.precision)

    def loss_names(self) -> list[str]:
        if not self.cycle:
            names = ["d_b", "g_ab_gan", "g_ab_l1"]
        else:
            names = ["d_a", "d_b", "g_ab_gan", "g_ba_gan", "cycle_a", "cycle_b"]
            if self.lambda_identity > 0:
                names += ["idt_a", "idt_b"]
        if self.config.lambda_tv > 0:
            names.append("tv")
        return names

    def _to_device(self, batch: dict) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return {k: batch[k].to(self.device, non_blocking=nb, memory_format=fmt)
                for k in ("a", "b", "valid_a", "valid_b")}

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update; returns the (detached) losses."""
        b = self._to_device(batch)
        try:
            return self._step_cycle(b) if self.cycle else self._step_pix2pix(b)
        except torch.cuda.OutOfMemoryError:
            raise GeotranslateError(
                f"out of GPU memory at batch size {self.config.batch_size}, "
                f"{self.chip_size} px, ngf {self.config.ngf}: lower --batch-size, --crop-size "
                "or --ngf (or use --precision bf16)"
            ) from None

    def _backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def _step_pix2pix(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, g_ab, d_b = self.config, self.run_nets["g_ab"], self.run_nets["d_b"]
        real_a, real_b = b["a"], b["b"]
        valid = b["valid_a"] * b["valid_b"]
        with self.autocast():
            fake_b = g_ab(real_a)
        # discriminator: (A, real B) then (A, fake B), the same conditioning for both
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            pred_real = d_b(torch.cat([real_a, real_b], 1))
            pred_fake = d_b(torch.cat([real_a, fake_b.detach()], 1))
        loss_d = 0.5 * (self.gan_loss(pred_real, True) + self.gan_loss(pred_fake, False))
        self._backward_step(loss_d, self.opt_d)
        # generator: D is frozen and called without its DDP wrapper (no gradient sync for it)
        self.opt_g.zero_grad(set_to_none=True)
        d_plain = unwrap(d_b)
        d_plain.requires_grad_(False)
        with self.autocast():
            pred_fake = d_plain(torch.cat([real_a, fake_b], 1))
        loss_gan = self.gan_loss(pred_fake, True, for_discriminator=False)
        loss_l1 = masked_l1(fake_b, real_b, valid) * c.lambda_l1
        loss_g = loss_gan + loss_l1
        losses = {"d_b": loss_d, "g_ab_gan": loss_gan, "g_ab_l1": loss_l1}
        if c.lambda_tv > 0:
            losses["tv"] = total_variation(fake_b) * c.lambda_tv
            loss_g = loss_g + losses["tv"]
        self._backward_step(loss_g, self.opt_g)
        d_plain.requires_grad_(True)
        self.scaler.update()
        return {k: v.detach() for k, v in losses.items()}

    def _step_cycle(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        g_ab, g_ba = self.run_nets["g_ab"], self.run_nets["g_ba"]
        real_a, real_b, valid_a, valid_b = b["a"], b["b"], b["valid_a"], b["valid_b"]
        d_plain = {k: unwrap(self.run_nets[k]) for k in ("d_a", "d_b")}
        for net in d_plain.values():
            net.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
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
            "cycle_a": masked_l1(rec_a, real_a, valid_a) * c.lambda_a,
            "cycle_b": masked_l1(rec_b, real_b, valid_b) * c.lambda_b,
        }
        if self.lambda_identity > 0:
            with self.autocast():
                idt_b = g_ab(real_b)  # g_ab should leave a B image unchanged
                idt_a = g_ba(real_a)
            losses["idt_a"] = masked_l1(idt_a, real_a, valid_a) * c.lambda_a * self.lambda_identity
            losses["idt_b"] = masked_l1(idt_b, real_b, valid_b) * c.lambda_b * self.lambda_identity
        if c.lambda_tv > 0:
            losses["tv"] = (total_variation(fake_b) + total_variation(fake_a)) * c.lambda_tv
        self._backward_step(sum(losses.values()), self.opt_g)
        for net in d_plain.values():
            net.requires_grad_(True)
        # discriminators on real images and on fakes from the history pools
        self.opt_d.zero_grad(set_to_none=True)
        pooled_b = self.pools["b"].query(fake_b.detach())
        pooled_a = self.pools["a"].query(fake_a.detach())
        with self.autocast():
            d_b, d_a = self.run_nets["d_b"], self.run_nets["d_a"]
            pred_real_b, pred_pool_b = d_b(real_b), d_b(pooled_b)
            pred_real_a, pred_pool_a = d_a(real_a), d_a(pooled_a)
        losses["d_b"] = 0.5 * (self.gan_loss(pred_real_b, True) + self.gan_loss(pred_pool_b, False))
        losses["d_a"] = 0.5 * (self.gan_loss(pred_real_a, True) + self.gan_loss(pred_pool_a, False))
        self._backward_step(losses["d_a"] + losses["d_b"], self.opt_d)
        self.scaler.update()
        return {k: v.detach() for k, v in losses.items()}

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    @property
    def lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    # -- state -------------------------------------------------------------------------------
    def specs(self) -> dict:
        return {"dataset_type": self.config.dataset_type,
                "generator_specs": self.generator_specs,
                "discriminator_specs": self.discriminator_specs,
                "gan_mode": self.gan_mode}

    def state_dict(self) -> dict:
        return {
            "nets": {n: unwrap(net).state_dict() for n, net in self.nets.items()},
            "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()},
            "schedulers": {"g": self.sched_g.state_dict(), "d": self.sched_d.state_dict()},
            "scaler": self.scaler.state_dict(),
            "pools": {d: pool.state_dict() for d, pool in self.pools.items()},
            "specs": self.specs(),
        }

    def load_state_dict(self, state: dict, path: Path) -> None:
        saved, mine = state.get("specs", {}), self.specs()
        for key in ARCHITECTURE_KEYS:
            if saved.get(key) != mine.get(key):
                raise GeotranslateError(
                    f"{path}: cannot resume: the run has {key.replace('_', ' ')} "
                    f"{_short(saved.get(key))}, these settings give {_short(mine.get(key))}"
                )
        try:
            for name, net in self.nets.items():
                net.load_state_dict(state["nets"][name])
            self.opt_g.load_state_dict(state["optimizers"]["g"])
            self.opt_d.load_state_dict(state["optimizers"]["d"])
            self.sched_g.load_state_dict(state["schedulers"]["g"])
            self.sched_d.load_state_dict(state["schedulers"]["d"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            for d, pool in self.pools.items():
                pool.load_state_dict(state["pools"][d])
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
    @torch.no_grad()
    def translate(self, direction: str, x: torch.Tensor) -> torch.Tensor:
        net = unwrap(self.nets["g_ab" if direction == "a2b" else "g_ba"])
        net.eval()
        try:
            with self.autocast():
                return net(x.to(self.device)).float()
        finally:
            net.train()


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


def _check_separate(run_dir: Path, data_dir: str) -> None:
    """Refuse a run directory that is, holds or lies inside the chip folder."""
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
    :class:`geotranslate.metrics.MetricsAccumulator`, the same definitions as ``evaluate``.
    ``val_flat_*``: the same figures of a flat image at domain B's training mean (meta.json
    statistics, normalized like the chips) on the same chips and pixels: the bar to clear.
    """
    means = [s.mean for s in stats_from_dict(dataset.meta["domains"]["b"]["stats"])]
    flat_b = dataset.norm["b"].to_model(np.asarray(means).reshape(-1, 1, 1))
    accumulator: MetricsAccumulator | None = None
    baseline: MetricsAccumulator | None = None
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        a = torch.stack([it["a"] for it in items])
        fake_b = trainer.translate("a2b", a).float().cpu().numpy()
        for item, fake in zip(items, fake_b, strict=True):
            real = item["b"].numpy()
            valid = (item["valid_a"][0] * item["valid_b"][0]).numpy() > 0
            if accumulator is None:
                accumulator = MetricsAccumulator(real.shape[0], data_range=2.0)
                baseline = MetricsAccumulator(real.shape[0], data_range=2.0)
            accumulator.add(fake, real, valid)
            baseline.add(flat_image(flat_b[:, 0, 0], real.shape), real, valid)
    if accumulator is None or accumulator.count == 0:
        return {}
    figures = {}
    for prefix, acc in (("val_", accumulator), ("val_flat_", baseline)):
        overall = acc.result()["overall"]
        figures.update({prefix + "l1": overall["mae"],
                        prefix + "psnr": min(overall["psnr"], 100.0)})
        if overall["ssim"] is not None:  # chips under 7 px have no SSIM
            figures[prefix + "ssim"] = overall["ssim"]
    return figures


def validation_line(epoch: int, scores: dict[str, float]) -> str:
    """The log line of one validation: the model's figures, the flat image's, and a plain
    warning when, after FLAT_PATIENCE_EPOCHS epochs, the model's PSNR is not above it."""

    def figures(prefix: str) -> str:
        text = f"L1 {scores[prefix + 'l1']:.4f}, PSNR {scores[prefix + 'psnr']:.2f} dB"
        if prefix + "ssim" in scores:
            text += f", SSIM {scores[prefix + 'ssim']:.4f}"
        return text

    when = f"epoch {epoch}" if epoch else "untrained model"
    line = (f"{when} validation: {figures('val_')} (flat image at the target mean: "
            f"{figures('val_flat_')})")
    if scores["val_psnr"] <= scores["val_flat_psnr"]:
        if epoch >= FLAT_PATIENCE_EPOCHS:
            line += (f"; no better than a flat image after {epoch} epochs: check --augment "
                     "(flips/rotations break direction-dependent mappings), the normalization "
                     "(--norm-method) and the pairing of A and B")
        elif epoch:
            line += "; not yet better than a flat image"
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
    if trainer.cycle:
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
                            dom.get("nodata"), dataset.norm[d])
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
    started = time.time()
    # an absolute data path keeps config.json usable for --resume from another directory
    config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).absolute()))
    device = resolve_device(config.device, ctx.local_rank if ctx.enabled else None)
    precision = resolve_precision(config.precision, device)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    meta = read_meta(config.data_dir)
    paired = config.dataset_type == "Pix2Pix"
    train_set = ChipDataset(config.data_dir, "train", paired=paired, norm_method=config.norm_method,
                            crop_size=config.crop_size, augment=config.augment,
                            cache=config.cache, seed=config.seed, meta=meta)
    val_set = None
    if paired and has_split(config.data_dir, "val"):
        val_set = ChipDataset(config.data_dir, "val", paired=True,
                              norm_method=config.norm_method, crop_size=config.crop_size,
                              augment=False, random_crop=False, cache=config.cache,
                              seed=config.seed, meta=meta)

    # run directory: rank 0 decides, everyone agrees
    if config.resume:
        run_dir = Path(config.resume)
        _check_separate(run_dir, config.data_dir)
        checkpoint = load_checkpoint(run_dir)
    else:
        checkpoint = None
        run_dir = Path(config.out) if config.out else _default_run_dir(config.dataset_type)
        _check_separate(run_dir, config.data_dir)
        if run_dir.exists() and (
                checkpoint_path(run_dir).parent.exists() or (run_dir / "model.json").exists()):
            raise GeotranslateError(f"{run_dir}: already holds a run; continue it with "
                                    "--resume or choose another --out")
    run_dir = Path(distributed.broadcast(str(run_dir), ctx))
    log_lines: list[str] = []  # kept until RUN_DIR exists, then appended to train.log
    log_file: list[Path] = []

    def log(message: str) -> None:
        if ctx.is_main:
            tqdm.write(f"geotranslate train: {message}", file=sys.stderr)
            log_lines.append(message)
            if log_file:
                with open(log_file[0], "a") as f:
                    f.writelines(line + "\n" for line in log_lines)
                log_lines.clear()

    trainer = Trainer(config, meta, train_set.crop_size, device, precision, ctx, log)
    start_epoch, start_batch, iteration, elapsed = 0, 0, 0, 0.0
    last_losses: dict[str, float] = {}
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint, checkpoint_path(run_dir))
        start_epoch, start_batch = int(checkpoint["epoch"]), int(checkpoint["epoch_batch"])
        iteration, elapsed = int(checkpoint["iteration"]), float(checkpoint.get("elapsed_s", 0))
        last_losses = dict(checkpoint.get("last_losses", {}))
        set_rng_state(checkpoint["rng"])
        if ctx.enabled:  # each rank continues its own dropout stream
            torch.manual_seed(config.seed + ctx.rank + iteration)

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
        log_file.append(run_dir / LOG_NAME)
    crops = "" if train_set.crop_size == train_set.chip_size else \
        f" (crops of {train_set.crop_size})"
    world = f", world size {ctx.world_size}" if ctx.enabled else ""
    log(f"{config.dataset_type} on {len(train_set)} chips of {train_set.chip_size} px{crops}, "
        f"augment {train_set.augment}, "
        f"{trainer.bands['a']} -> {trainer.bands['b']} bands, device {device}, {precision}"
        f"{world}; run dir {run_dir}")
    if checkpoint is not None:
        log(f"resuming at epoch {start_epoch + 1}, iteration {iteration}")

    sampler = EpochSampler(len(train_set), seed=config.seed, rank=ctx.rank,
                           world_size=ctx.world_size)
    workers = config.workers if config.workers is not None else (
        0 if train_set.cached else min(4, os.cpu_count() or 1))
    loader = DataLoader(ErrorsAsItems(train_set), batch_size=config.batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, generator=torch.Generator(),
                        collate_fn=_collate, worker_init_fn=ignore_sigint)
    batches_per_epoch = math.ceil(sampler.per_rank / config.batch_size)
    metrics = None
    if ctx.is_main:
        metrics = _Metrics(run_dir / "metrics.csv", trainer.loss_names(),
                           iteration if checkpoint is not None else None, config.tensorboard)
    rgb = parse_rgb_bands(config.rgb_bands)
    preview_set = val_set or train_set
    epoch, epoch_batch = start_epoch, start_batch
    t_run = time.time()

    saved_at: list[tuple[int, int, int]] = []  # (epoch, batch, iteration) of the last save

    def checkpoint_now() -> None:
        """Save where the run stands, unless that very state is already on disk."""
        position = (epoch, epoch_batch, iteration)
        if ctx.is_main and saved_at[-1:] != [position]:
            bad = trainer.non_finite()
            if bad is not None:
                raise _diverged(f"weight {bad} is not finite", iteration, run_dir, saved_at)
            metrics.flush()  # the rows up to this checkpoint survive a kill
            saved_at[:] = [position]
            save_checkpoint({**trainer.state_dict(),
                             "epoch": epoch, "epoch_batch": epoch_batch,
                             "iteration": iteration, "rng": rng_state(),
                             "elapsed_s": elapsed + time.time() - t_run,
                             "last_losses": dict(last_losses)}, run_dir)

    def end_of_epoch_outputs(done_epoch: int) -> None:
        if not ctx.is_main:
            return
        if val_set is not None:
            scores = validate(trainer, val_set, config.batch_size)
            if scores:
                metrics.log(done_epoch, iteration, scores)
                log(validation_line(done_epoch, scores))
        if config.preview:
            _preview(done_epoch)
        metrics.flush()

    def _preview(epoch_number: int) -> None:
        write_preview(trainer, preview_set[0], preview_set.norm, meta, rgb,
                      run_dir / "previews" / f"epoch_{epoch_number:03d}.png")

    stopped = config.max_steps is not None and iteration >= config.max_steps
    interrupt = _InterruptAtStepEnd(ctx).__enter__()
    mid_step = False  # a KeyboardInterrupt while True would leave a half-updated state
    try:
        if ctx.is_main and val_set is not None and iteration == 0:
            scores = validate(trainer, val_set, config.batch_size)  # the untrained baseline
            if scores:
                metrics.log(0, 0, scores)
                log(validation_line(0, scores))
        while epoch < config.total_epochs and not stopped:
            sampler.set_epoch(epoch, start=epoch_batch * config.batch_size)
            bar = tqdm(total=batches_per_epoch, initial=epoch_batch,
                       desc=f"epoch {epoch + 1}/{config.total_epochs}", unit="it",
                       disable=not (ctx.is_main and config.progress), leave=False,
                       dynamic_ncols=True)
            for batch in loader:
                if isinstance(batch, GeotranslateError):  # a chip failed in a worker
                    raise batch
                mid_step = True
                losses = trainer.step(batch)
                iteration += 1
                epoch_batch += 1
                mid_step = False
                values = dict(zip(losses, torch.stack(list(losses.values())).float().tolist(),
                                  strict=True))
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if distributed.any_rank(bool(bad), ctx):  # all ranks stop together
                    what = (f"loss {bad[0]} is {values[bad[0]]}" if bad
                            else "a loss is not finite on another rank")
                    raise _diverged(what, iteration, run_dir, saved_at)
                last_losses = values
                if metrics is not None:
                    metrics.log(epoch + 1, iteration, {"lr": trainer.lr, **values})
                bar.update(1)
                if iteration % 10 == 0 or epoch_batch == batches_per_epoch:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
                if config.save_every and iteration % config.save_every == 0:
                    checkpoint_now()
                if config.max_steps is not None and iteration >= config.max_steps:
                    stopped = True
                    break
                if interrupt.pending():
                    raise KeyboardInterrupt
            bar.close()
            if stopped and epoch_batch < batches_per_epoch:
                # stopped mid-epoch (--max-steps): show where it got to; the checkpoint says
                # where to continue (no validation row: a resumed run's metrics stay equal to
                # an uninterrupted run's)
                if ctx.is_main and config.preview:
                    _preview(epoch + 1)
                break
            trainer.end_epoch()
            epoch += 1
            epoch_batch = 0
            end_of_epoch_outputs(epoch)
            if metrics is not None and last_losses:
                log(f"epoch {epoch}/{config.total_epochs} done, iteration {iteration}: " +
                    ", ".join(f"{k} {v:.4g}" for k, v in last_losses.items()))
            checkpoint_now()
            if interrupt.pending():
                raise KeyboardInterrupt
        checkpoint_now()
        if interrupt.pending():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        if mid_step:  # a second Ctrl-C inside a step: its state is half updated, not saved
            last = (f"the last checkpoint (iteration {saved_at[0][2]})" if saved_at
                    else "no checkpoint from this session")
            log(f"interrupted again inside iteration {iteration + 1}; not saved, {last} "
                f"is kept in {run_dir}")
        else:
            checkpoint_now()
            log(f"interrupted at iteration {iteration}; checkpoint saved, continue with "
                f"--resume {run_dir}")
        if metrics is not None:
            metrics.close()
        raise
    finally:
        interrupt.__exit__()

    if ctx.is_main and trainer.non_finite() is not None:
        raise _diverged(f"weight {trainer.non_finite()} is not finite", iteration, run_dir,
                        saved_at)
    if ctx.enabled:
        differing = distributed.ranks_agree(trainer.nets, ctx)
        if differing:
            raise RuntimeError(f"DDP ranks disagree on the weights of {', '.join(differing)}")
        log(f"all {ctx.world_size} ranks hold identical weights")
    if ctx.is_main:
        seconds = elapsed + time.time() - t_run
        specs = {}
        for direction, spec in trainer.generator_specs.items():
            spec = copy.deepcopy(spec)
            if "pretrained" in spec["kwargs"]:
                spec["kwargs"]["pretrained"] = False  # weights come from the model file
            specs[direction] = spec
        gens = {"a2b": unwrap(trainer.g_ab)}
        if trainer.cycle:
            gens["b2a"] = unwrap(trainer.g_ba)
        summary = {
            "epochs": epoch, "iterations": iteration, "final_losses": last_losses,
            "seconds": round(seconds, 2), "device": str(device), "precision": precision,
            "batch_size": config.batch_size, "world_size": ctx.world_size,
            "gan_mode": trainer.gan_mode, "lambda_identity": trainer.lambda_identity,
            "pretrained": config.pretrained, "norm_method": config.norm_method,
            "augment": config.augment,
            "data_dir": config.data_dir,
            "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        }
        save_model(TranslationModel(config.dataset_type, gens, specs,
                                    _model_domains(meta, train_set), train_set.crop_size,
                                    summary), run_dir)
        log(f"done: {iteration} iterations in {seconds:.1f} s; model in {run_dir}")
    if metrics is not None:
        metrics.close()
    distributed.barrier(ctx)
    return run_dir


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
