"""The learning-rate schedule of a method's optimizers (``"g"``, and ``"d"`` where it has
critics): constant for
``--epochs``, then linear to 0 over ``--epochs-decay`` (the reference implementations'
schedule), stepped once per epoch."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from geotranslate.errors import InputError, first_line
from geotranslate.methods import Method


class LRSchedule:
    """One ``LambdaLR`` per optimizer group of ``method``; in the checkpoint as ``schedulers``."""

    def __init__(self, method: Method, lr: float, epochs: int, epochs_decay: int):
        self.lr = lr

        def factor(epoch: int) -> float:  # constant, then linear to 0
            return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)

        self.factor = factor
        self.schedulers = {group: torch.optim.lr_scheduler.LambdaLR(method.optimizers[group],
                                                                    factor)
                           for group in method.optimizers}

    def step(self) -> None:
        """The end of an epoch."""
        with warnings.catch_warnings():
            # a run resumed at the very end of an epoch steps the schedule before its first
            # optimizer step; the optimizers did step (before the checkpoint), so torch's
            # warning about a skipped first rate does not apply
            warnings.filterwarnings(
                "ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)
            for scheduler in self.schedulers.values():
                scheduler.step()

    def state_dict(self) -> dict:
        return {group: s.state_dict() for group, s in self.schedulers.items()}

    def load_state_dict(self, state: dict, path: Path) -> None:
        """The checkpoint's epoch count, with the rates of this schedule's settings (``--lr``,
        ``--epochs``, ``--epochs-decay`` may have changed: the saved rates would keep a
        finished run at learning rate 0)."""
        try:
            for group, scheduler in self.schedulers.items():
                scheduler.load_state_dict(state[group])
        except (KeyError, RuntimeError, ValueError) as e:
            raise InputError(f"{path}: checkpoint does not fit this run ({first_line(e)})") \
                from None
        for scheduler in self.schedulers.values():
            scheduler.base_lrs = [self.lr] * len(scheduler.base_lrs)
            for group in scheduler.optimizer.param_groups:
                group["initial_lr"] = self.lr
                group["lr"] = self.lr * self.factor(scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
