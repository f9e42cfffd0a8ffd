"""DRAFT for the integrator (issue 10): the training loop over a method and a run object.

Not wired in yet: ``trainer._train`` still runs training. The loop knows nothing about a
particular method (:class:`geotranslate.methods.Method` does one step) nor about files (the
``run`` object owns the run directory, metrics, checkpoints, previews and the model file;
see :class:`Run` for what it must offer).
"""

from __future__ import annotations

from typing import Protocol

import torch

from geotranslate.methods import Method


class Run(Protocol):
    """What the loop needs from the run (run directory, metrics, checkpoints, outputs)."""

    epoch: int  # epochs done
    epoch_batch: int  # batches done in the current epoch
    iteration: int  # steps done in total
    total_epochs: int
    batches_per_epoch: int
    max_steps: int | None

    def batches(self, epoch: int, start_batch: int):  # the loader positioned for resume
        ...

    def log_step(self, losses: dict[str, float]) -> None: ...  # metrics row, progress bar

    def step_done(self) -> None: ...  # checkpoint every --save-every, stop on NaN or SIGINT

    def should_stop(self) -> bool: ...  # --max-steps reached, SIGINT seen, NaN loss

    def end_epoch(self) -> None: ...  # lr schedulers, validation row, preview, checkpoint

    def finish(self, method: Method) -> None: ...  # last checkpoint and the model file


def train_loop(method: Method, run: Run) -> None:
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
    run.finish(method)
