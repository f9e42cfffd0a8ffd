"""Ctrl-C during training, deferred to the end of the step under way."""

from __future__ import annotations

import signal
import threading

from geotranslate.train import distributed


class InterruptAtStepEnd:
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

    def __enter__(self) -> InterruptAtStepEnd:
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
