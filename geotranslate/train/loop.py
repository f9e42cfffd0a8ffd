"""Training: :func:`train` sets up a run and loops over its batches.

The loop knows nothing about a particular method (``method.step`` runs one update of
:class:`geotranslate.methods.Method`) nor about files (the ``run`` object owns the run
directory, metrics, checkpoints, previews and the model file: :class:`geotranslate.train.run.Run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from geotranslate.device import resolve_device
from geotranslate.train import distributed
from geotranslate.train.config import TrainConfig
from geotranslate.train.run import open_run


def train(config: TrainConfig) -> Path:
    """Train the method ``config.dataset_type`` names; returns the run directory (see
    docs/formats.md)."""
    config.validate()
    ctx = distributed.setup(resolve_device(config.device).type)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, ctx)  # the run and its DDP networks are gone before teardown
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.teardown(ctx)


def _train(config: TrainConfig, ctx: distributed.DistContext) -> Path:
    with open_run(config, ctx) as run:
        with run.interrupts():
            train_loop(run.method, run)
        return run.write_model()


class Stepper(Protocol):
    def step(self, batch: dict) -> dict[str, torch.Tensor]: ...  # one update, its losses


class Run(Protocol):
    """What the loop needs from the run (run directory, metrics, checkpoints, outputs)."""

    epoch: int  # epochs done
    epoch_batch: int  # batches done in the current epoch
    iteration: int  # steps done in total
    total_epochs: int
    batches_per_epoch: int

    def batches(self, epoch: int, start_batch: int):  # the loader positioned for resume
        ...

    def log_step(self, losses: dict[str, float]) -> None: ...  # NaN stop, metrics row, bar

    def step_done(self) -> None: ...  # checkpoint every --save-every, --max-steps, SIGINT

    def should_stop(self) -> bool: ...  # --max-steps reached, --patience spent

    def end_epoch(self) -> None: ...  # lr schedule, validation, preview, checkpoint

    def finish(self) -> None: ...  # the last checkpoint


def train_loop(method: Stepper, run: Run) -> None:
    """Steps until the epochs are done or ``run`` says stop; ``run`` writes everything."""
    stopped = run.should_stop()
    while run.epoch < run.total_epochs and not stopped:
        for batch in run.batches(run.epoch, run.epoch_batch):
            losses = method.step(batch)
            run.iteration += 1
            run.epoch_batch += 1
            values = torch.stack(list(losses.values())).float().tolist()
            run.log_step(dict(zip(losses, values, strict=True)))
            run.step_done()
            if run.should_stop():
                stopped = True
                break
        if stopped and run.epoch_batch < run.batches_per_epoch:
            break  # stopped mid-epoch: the checkpoint says where to continue
        run.epoch += 1
        run.epoch_batch = 0
        run.end_epoch()
        stopped = run.should_stop()
    run.finish()
