"""What a run is built from: its chip datasets, the loader over the training chips and the
method, for this process (device, precision, DDP rank)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from geotranslate.chips.meta import DOMAINS, ChipMeta
from geotranslate.data import (
    BATCH_KEYS,
    ChipDataset,
    EpochSampler,
    ErrorsAsItems,
    has_split,
    ignore_sigint,
)
from geotranslate.errors import GeotranslateError, OptionError, first_line
from geotranslate.methods import METHODS, Method, build_method
from geotranslate.models import build_discriminator
from geotranslate.train import distributed
from geotranslate.train.config import TrainConfig


def open_datasets(config: TrainConfig, meta: ChipMeta) -> tuple[ChipDataset, ChipDataset | None]:
    """The training chips and, for a paired method with ``val_*`` chips, the validation ones."""
    paired = METHODS[config.dataset_type].paired
    train_set = ChipDataset(
        config.data_dir, "train", paired=paired, norm_method=config.norm_method,
        norm_scope=config.norm_scope,
        crop_size=config.crop_size, augment=config.augment, cache=config.cache,
        seed=config.seed, meta=meta)
    val_set = None
    if paired and has_split(config.data_dir, "val"):
        val_set = ChipDataset(config.data_dir, "val", paired=True,
                              norm_method=config.norm_method, norm_scope=config.norm_scope,
                              crop_size=config.crop_size, augment=False, random_crop=False,
                              cache=config.cache, seed=config.seed, meta=meta)
    if (config.keep == "best" or config.patience) and val_set is None:
        what = "--keep best" if config.keep == "best" else "--patience"
        raise OptionError(
            f"{config.data_dir}: {what} needs a validation split of paired chips "
            f"({config.dataset_type} on {'these chips' if paired else 'unpaired data'} "
            "has none; export-tiles --val-fraction makes one)")
    return train_set, val_set


def make_loader(train_set: ChipDataset, config: TrainConfig, ctx: distributed.DistContext,
                device: torch.device, log: Callable[[str], None]
                ) -> tuple[DataLoader, EpochSampler]:
    """This rank's loader of training batches and its sampler (set per epoch)."""
    sampler = EpochSampler(len(train_set), seed=config.seed, rank=ctx.rank,
                           world_size=ctx.world_size)
    cores = _usable_cores()
    workers = config.workers if config.workers is not None else (
        0 if train_set.cached else min(4, cores))
    if workers > cores:  # CPU-bound processes: more than the cores only wait (and cost RAM)
        log(f"note: --workers {workers}: more loader processes than usable cores "
            f"({cores}) gain nothing; using {cores}")
        workers = cores
    loader = DataLoader(
        ErrorsAsItems(train_set), batch_size=config.batch_size, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, generator=torch.Generator(), collate_fn=_collate,
        worker_init_fn=ignore_sigint)
    return loader, sampler


def training_method(config: TrainConfig, meta: ChipMeta, chip_size: int, device: torch.device,
                    precision: str, ctx: distributed.DistContext,
                    log: Callable[[str], None] = print) -> Method:
    """The method ``config.dataset_type`` names, its networks compiled (``--compile``) and
    under DDP for the step, checked to fit ``chip_size`` px chips."""

    def wrap(net: nn.Module) -> nn.Module:  # compile, then DDP
        wrapped = torch.compile(net) if config.compile else net
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    bands = {d: meta.domains[d].band_count for d in DOMAINS}
    method = build_method(config.dataset_type, config, bands, chip_size, device=device,
                          precision=precision, rank=ctx.rank, wrap=wrap, log=log)
    check_fits(method, config, chip_size)
    return method


def check_fits(method: Method, config: TrainConfig, size: int) -> None:
    """Refuse networks that cannot run on these chips, before any file is written.

    A dry run on the meta device (shapes only, no memory, no computation) of every
    generator and discriminator (heads such as CUT's f_ab take features, not images).
    """
    c = config
    for name, net in method.nets.items():
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
                raise OptionError(
                    f"--n-layers-d {c.n_layers_d}: the discriminator does not fit "
                    f"{size} px chips at batch size {c.batch_size}{hint} ({first_line(e)})"
                ) from None
            raise OptionError(
                f"the {c.resolved_generator()} generator does not fit {size} px chips at "
                f"batch size {c.batch_size} ({first_line(e)})"
            ) from None


def _fits(net: nn.Module, x: torch.Tensor) -> bool:
    try:
        net.to("meta")(x)
    except (RuntimeError, ValueError):
        return False
    return True


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _collate(items: list[dict]) -> dict | GeotranslateError:
    for item in items:
        if isinstance(item, GeotranslateError):
            return item
    out = {k: torch.stack([it[k] for it in items]) for k in BATCH_KEYS}
    out["name_a"] = [it["name_a"] for it in items]
    out["name_b"] = [it["name_b"] for it in items]
    return out
