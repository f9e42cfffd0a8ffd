"""One training run: its directory and everything written there (rank 0 writes).

RUN_DIR holds ``config.json``, ``train.log``, ``metrics.csv`` (:mod:`.metrics_log`),
``previews/``, ``checkpoints/last.pt`` (:mod:`.checkpoint`), ``best/`` (the generator of the
best validation PSNR) and, at the end, the model file and ``report.html``.

:class:`Run` is what :func:`geotranslate.train.loop.train_loop` drives: ``batches`` /
``log_step`` / ``step_done`` per step, ``end_epoch`` per epoch, ``finish`` at the end;
``interrupts()`` defers Ctrl-C to step boundaries and saves a checkpoint when one stops the
run. A resumed run takes the method, the schedule, the position, the best model and the
random streams from the checkpoint and continues exactly; ``--patience`` stops a run whose
validation PSNR has not improved for that many epochs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from geotranslate.data import read_meta
from geotranslate.device import resolve_device, resolve_precision
from geotranslate.errors import GeotranslateError, OptionError
from geotranslate.files import atomic_path
from geotranslate.log import Advice, show_progress
from geotranslate.methods import Method
from geotranslate.modelfile import TranslationModel, save_model
from geotranslate.models import unwrap
from geotranslate.render import parse_rgb_bands, write_preview
from geotranslate.train import distributed
from geotranslate.train.checkpoint import (
    checkpoint_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from geotranslate.train.config import CONFIG_NAME, TrainConfig
from geotranslate.train.interrupts import InterruptAtStepEnd
from geotranslate.train.metrics_log import MetricsLog
from geotranslate.train.outputs import preview_panels, translation_model
from geotranslate.train.rundir import choose_run_dir, point_latest, remove_new
from geotranslate.train.schedule import LRSchedule
from geotranslate.train.setup import make_loader, open_datasets, training_method
from geotranslate.train.validation import Validation, validation_line

#: settings that fix the networks' shapes or the meaning of the run: a resume must match them.
ARCHITECTURE_KEYS = ("dataset_type", "generator_specs", "discriminator_specs", "gan_mode",
                     "nce_layers")
LOG = logging.getLogger("geotranslate.train")
LOG_NAME = "train.log"
#: RUN_DIR/best/: the model file of the generator with the best validation PSNR
BEST_DIR = "best"
#: the units of the checkpoint's best validation PSNR (train/validation.py); checkpoints of
#: earlier versions, without it, hold it in the model's [-1, 1] units
BEST_UNITS = "data units"


@contextlib.contextmanager
def open_run(config: TrainConfig, ctx: distributed.DistContext) -> Iterator[Run]:
    """The run of ``config``; a fresh run that fails before its first checkpoint removes what
    it added to RUN_DIR (and runs/latest pointing at it)."""
    undo: dict = {}  # what a fresh run adds to RUN_DIR (Run fills it)
    try:
        run = Run(config, ctx, undo)
        try:
            yield run
        finally:
            # before a failed fresh run's directory is removed: no TensorBoard writer thread
            # may write into it afterwards
            if run.metrics is not None:
                run.metrics.close()
    except GeotranslateError:
        if undo and not checkpoint_path(undo["run_dir"]).exists():
            remove_new(undo["run_dir"], undo["before"], undo["existed"])
        raise


class Run:
    """One run's directory, data, method, metrics, checkpoints and outputs (see the module)."""

    def __init__(self, config: TrainConfig, ctx: distributed.DistContext, undo: dict):
        self.started = time.time()
        # an absolute data path keeps config.json usable for --resume from another directory
        config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).absolute()))
        self.config, self.ctx = config, ctx
        self.device = resolve_device(config.device, ctx.local_rank if ctx.enabled else None)
        self.precision = resolve_precision(config.precision, self.device, training=True)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.meta = read_meta(config.data_dir)
        self.train_set, self.val_set = open_datasets(config, self.meta)
        self.run_dir, checkpoint = choose_run_dir(config, ctx)
        self.log_lines: list[str] = []  # kept until RUN_DIR exists, then appended to train.log
        self.log_file: Path | None = None
        self.method: Method = training_method(config, self.meta, self.train_set.crop_size,
                                              self.device, self.precision, ctx, self.log)
        self.schedule = LRSchedule(self.method, config.lr, config.epochs, config.epochs_decay)
        self.epoch, self.epoch_batch, self.iteration, self.elapsed = 0, 0, 0, 0.0
        self.last_losses: dict[str, float] = {}
        self.best: dict = {}  # {"psnr", "epoch"} of the best validation (the model in best/)
        self.best_weights: dict = {}  # direction -> that epoch's generator state (rank 0, CPU)
        best_units = self._restore(checkpoint) if checkpoint is not None else BEST_UNITS
        self._open_run_dir(undo, fresh=checkpoint is None)
        self._log_start(resumed=checkpoint is not None)
        self.loader, self.sampler = make_loader(self.train_set, config, ctx, self.device,
                                                self.log)
        self.total_epochs, self.max_steps = config.total_epochs, config.max_steps
        self.batches_per_epoch = math.ceil(self.sampler.per_rank / config.batch_size)
        self.validation = (Validation(self.val_set, config.batch_size)
                           if ctx.is_main and self.val_set is not None else None)
        if self.best and best_units != BEST_UNITS and self.validation is not None:
            self._rescore_best()
        self.rgb = parse_rgb_bands(config.rgb_bands)
        self.metrics = (MetricsLog(self.run_dir / "metrics.csv", self.method.loss_names(),
                                   self.iteration if checkpoint is not None else None,
                                   config.tensorboard) if ctx.is_main else None)
        self.preview_set = self.val_set or self.train_set
        self.t_run = time.time()
        self.saved_at: list[tuple[int, int, int]] = []  # (epoch, batch, iteration) last saved
        self.stopped = self.max_steps is not None and self.iteration >= self.max_steps
        self.interrupt = InterruptAtStepEnd(ctx)
        self.advice = Advice()  # long advice once per session, then a reminder with a count
        self.mid_step = False  # a KeyboardInterrupt while True would leave a half-updated state

    # -- starting ----------------------------------------------------------------------------
    def _restore(self, checkpoint: dict) -> str | None:
        """Continue where ``checkpoint`` left off; returns the units of its best PSNR."""
        path = checkpoint_path(self.run_dir)
        _check_resumable(checkpoint.get("specs", {}), run_specs(self.config, self.method),
                         path)
        self.method.load_state_dict(checkpoint, path)
        self.schedule.load_state_dict(checkpoint["schedulers"], path)
        self.epoch = int(checkpoint["epoch"])
        self.epoch_batch = int(checkpoint["epoch_batch"])
        self.iteration = int(checkpoint["iteration"])
        self.method.iteration = self.iteration
        self.elapsed = float(checkpoint.get("elapsed_s", 0))
        self.last_losses = dict(checkpoint.get("last_losses", {}))
        self.best = dict(checkpoint.get("best", {}))
        self.best_weights = self.best.pop("generators", {})
        units = self.best.pop("units", None)
        set_rng_state(checkpoint["rng"])
        if self.ctx.enabled:  # each rank continues its own dropout stream
            torch.manual_seed(self.config.seed + self.ctx.rank + self.iteration)
        return units

    def _open_run_dir(self, undo: dict, fresh: bool) -> None:
        """RUN_DIR with config.json (rank 0); ``undo`` notes what a fresh run adds to it."""
        run_dir = self.run_dir
        if not self.ctx.is_main:
            return
        if fresh:  # removed again if it fails before a checkpoint
            undo["run_dir"] = run_dir
            undo["existed"] = run_dir.exists()
            undo["before"] = set(os.listdir(run_dir)) if run_dir.exists() else set()
        (run_dir / "previews").mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2))
        if not self.config.out and not self.config.resume:
            point_latest(run_dir)
        self.log_file = run_dir / LOG_NAME

    def _log_start(self, resumed: bool) -> None:
        chips, ctx, bands = self.train_set, self.ctx, self.method.bands
        crops = "" if chips.crop_size == chips.chip_size else \
            f" (crops of {chips.crop_size})"
        world = f", world size {ctx.world_size}" if ctx.enabled else ""
        self.log(f"{self.config.dataset_type} on {len(chips)} chips of {chips.chip_size} px"
                 f"{crops}, augment {chips.augment}, {bands['a']} -> {bands['b']} bands, "
                 f"device {self.device}, {self.precision}{world}; run dir {self.run_dir}")
        if resumed:
            self.log(f"resuming at epoch {self.epoch + 1}, iteration {self.iteration}")

    def _rescore_best(self) -> None:
        """The best validation of a checkpoint of an earlier version, whose PSNR is in the
        model's [-1, 1] units: its generator scored again as validation scores today."""
        generators = self.method.generators()
        current = {d: copy.deepcopy(net.state_dict()) for d, net in generators.items()}
        for d, net in generators.items():
            net.load_state_dict(self.best_weights[d])
        try:
            scores = self.validation.scores(self.method)
        finally:
            for d, net in generators.items():
                net.load_state_dict(current[d])
        if scores:
            self.log(f"validation figures are now in domain B's data units (earlier rows of "
                     f"metrics.csv are in the model's [-1, 1] units): the best epoch's "
                     f"({self.best['epoch']}) PSNR, {self.best['psnr']:.2f} dB before, is "
                     f"{scores['val_psnr']:.2f} dB")
            self.best["psnr"] = scores["val_psnr"]

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
            if self.validation is not None and self.iteration == 0:
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
            self.metrics.log(self.epoch + 1, self.iteration, {"lr": self.method.lr, **values})
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
        self.schedule.step()
        self.epoch_batch = 0
        if self.ctx.is_main:
            if self.validation is not None:
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

    # -- checkpoints, validation, best model ---------------------------------------------------
    def checkpoint_now(self) -> None:
        """Save where the run stands, unless that very state is already on disk."""
        position = (self.epoch, self.epoch_batch, self.iteration)
        if self.ctx.is_main and self.saved_at[-1:] != [position]:
            bad = _non_finite(self.method.nets)
            if bad is not None:
                raise _diverged(f"weight {bad} is not finite", self.iteration, self.run_dir,
                                self.saved_at)
            self.metrics.flush()  # the rows up to this checkpoint survive a kill
            self.saved_at[:] = [position]
            best = ({"best": {**self.best, "units": BEST_UNITS,
                              "generators": self.best_weights}} if self.best else {})
            save_checkpoint({**self.method.state_dict(),
                             "schedulers": self.schedule.state_dict(),
                             "specs": run_specs(self.config, self.method),
                             "epoch": self.epoch, "epoch_batch": self.epoch_batch,
                             "iteration": self.iteration, "rng": rng_state(),
                             "elapsed_s": self.elapsed + time.time() - self.t_run,
                             "last_losses": dict(self.last_losses), **best}, self.run_dir)

    def validate_now(self, epoch: int) -> None:
        """A validation row and log line; a better PSNR (epoch >= 1) becomes the best."""
        scores = self.validation.scores(self.method)
        if not scores:
            return
        self.metrics.log(epoch, self.iteration, scores)
        self.log(validation_line(epoch, scores, self.advice))
        if epoch and (not self.best or scores["val_psnr"] > self.best["psnr"]):
            self.best.update(psnr=scores["val_psnr"], epoch=epoch)
            self.best_weights.update({
                d: {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                for d, net in self.method.generators().items()})

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

    # -- outputs -----------------------------------------------------------------------------
    def preview(self, epoch_number: int) -> None:
        """RUN_DIR/previews/epoch_NNN.png of the first validation (else training) chip."""
        path = self.run_dir / "previews" / f"epoch_{epoch_number:03d}.png"
        write_preview(preview_panels(self.method, self.preview_set[0], self.preview_set.norm,
                                     self.meta, self.rgb), path)
        self.metrics.image("preview", path, self.iteration)

    def translation_model(self, summary: dict) -> TranslationModel:
        return translation_model(self.config, self.method, self.meta, self.train_set, summary)

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
        if ctx.is_main and _non_finite(self.method.nets) is not None:
            raise _diverged(f"weight {_non_finite(self.method.nets)} is not finite",
                            self.iteration, run_dir, self.saved_at)
        if ctx.enabled:
            differing = distributed.ranks_agree(self.method.nets, ctx)
            if differing:
                raise RuntimeError(f"DDP ranks disagree on the weights of {', '.join(differing)}")
            self.log(f"all {ctx.world_size} ranks hold identical weights")
        if ctx.is_main:
            self._save_final_model()
        if self.metrics is not None:
            figures = {**{f"final_{k}": v for k, v in self.last_losses.items()},
                       **({"best_val_psnr": best["psnr"]} if best else {})}
            self.metrics.hparams(config.to_dict(), figures)
            self.metrics.close()
        if ctx.is_main and config.preview:
            self.write_report()
        distributed.barrier(ctx)
        return run_dir

    def _save_final_model(self) -> None:
        """model.safetensors + model.json: the last generator, or the best (--keep best)."""
        config, best, run_dir, method = self.config, self.best, self.run_dir, self.method
        seconds = self.elapsed + time.time() - self.t_run
        summary = {
            "epochs": self.epoch, "iterations": self.iteration,
            "final_losses": self.last_losses, "seconds": round(seconds, 2),
            "device": str(self.device), "precision": self.precision,
            "batch_size": config.batch_size, "world_size": self.ctx.world_size,
            "gan_mode": method.gan_mode,
            "pretrained": config.pretrained, "norm_method": config.norm_method,
            "augment": config.augment, **method.summary(),
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

    def write_report(self) -> None:
        """RUN_DIR/report.html (geotranslate report); a failure is a warning, not a failed run."""
        from geotranslate.report import write_report

        try:
            path = write_report(self.run_dir, device=str(self.device))
        except (GeotranslateError, OSError, ValueError) as e:
            self.log(f"no report written ({e})", logging.WARNING)
        else:
            self.log(f"report: {path}")


def run_specs(config: TrainConfig, method: Method) -> dict:
    """What fixes the networks' shapes and the run's meaning (the checkpoint's ``specs``)."""
    specs = {"dataset_type": config.dataset_type,
             "generator_specs": method.generator_specs,
             "discriminator_specs": method.discriminator_specs,
             "gan_mode": method.gan_mode}
    layers = getattr(method, "nce_layers", None)
    if layers is not None:
        specs["nce_layers"] = list(layers)
    return specs


def _check_resumable(saved: dict, mine: dict, path: Path) -> None:
    for key in ARCHITECTURE_KEYS:
        if saved.get(key) != mine.get(key):
            raise OptionError(
                f"{path}: cannot resume: the run has {key.replace('_', ' ')} "
                f"{_short(saved.get(key))}, these settings give {_short(mine.get(key))}"
            )


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 160 else text[:157] + "..."


def _non_finite(nets: dict[str, nn.Module]) -> str | None:
    """The first weight that is NaN or infinite, as ``net.param``; None if all are finite."""
    for name, net in nets.items():
        for key, value in unwrap(net).state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"{name}.{key}"
    return None


def _diverged(what: str, iteration: int, run_dir: Path, saved_at: list) -> GeotranslateError:
    kept = (f"the last good checkpoint (iteration {saved_at[0][2]}) is kept in {run_dir}"
            if saved_at else f"its earlier checkpoint is kept in {run_dir}"
            if checkpoint_path(run_dir).exists() else "no checkpoint was saved")
    return GeotranslateError(
        f"training diverged at iteration {iteration}: {what}; no model written, {kept}; "
        "lower --lr or the loss weights"
    )
