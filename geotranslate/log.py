"""geotranslate's messages: Python ``logging``, progress bars only on a terminal, advice once.

Every message goes to the ``geotranslate`` logger (``geotranslate.train`` for training's),
written to stderr as one line: ``geotranslate: …``, ``geotranslate train: …``,
``geotranslate: warning: …``. A handler is installed once, so the lines show when the
library is used from Python too; an application routes them elsewhere with the usual
``logging.getLogger("geotranslate")`` (its ``propagate`` is off, its handler replaceable).

- Verbosity (``--quiet``/``--verbose`` on every command, :func:`verbosity_options`): quiet
  keeps warnings and errors, verbose adds debug lines. Errors of the command line stay one
  line whatever the verbosity (cli.py prints them).
- Progress bars (:func:`show_progress`) are drawn only when stderr is a terminal, unless
  ``--progress``/``--no-progress`` says otherwise; --quiet draws none. A log file thus gets
  no ``\\r`` fragments.
- Under torchrun (``WORLD_SIZE`` > 1), a line of a rank other than 0 says its rank; rank 0
  alone says what concerns the whole run (:func:`is_main_process`).
- :class:`Advice`: a long piece of advice is said once, later repeats are a short reminder
  with a count.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter

import click

LOGGER_NAME = "geotranslate"
logger = logging.getLogger(LOGGER_NAME)
#: --quiet, (default), --verbose
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def is_main_process() -> bool:
    """Rank 0 of a torchrun or job-array run (or a single process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = record.name.replace(".", " ")  # geotranslate, geotranslate train
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not is_main_process():
            prefix += f" [rank {os.environ['RANK']}]"
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{prefix}: {level}{record.getMessage()}"


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (captured by tests, redirected by users), above a
    running progress bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    _handler = _StderrHandler()
    _handler.setFormatter(_Formatter())
    logger.addHandler(_handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)


def set_verbosity(verbosity: int) -> None:
    """-1 quiet (warnings and errors), 0 normal (info), 1 verbose (debug)."""
    logger.setLevel(LEVELS[max(-1, min(1, verbosity))])


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: as asked, else on a terminal unless --quiet."""
    if progress is not None:
        return bool(progress)
    return logger.isEnabledFor(logging.INFO) and sys.stderr.isatty()


class Advice:
    """Long advice said once; its repeats are a short reminder with a count."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, key: str, text: str, reminder: str) -> str:
        """``text`` the first time ``key`` is advised, else ``reminder`` with the count."""
        self.counts[key] += 1
        n = self.counts[key]
        return text if n == 1 else f"{reminder} ({n} times; see the advice above)"


def _verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    chosen = ctx.meta.setdefault("geotranslate_verbosity", param.name)
    if chosen != param.name:
        raise click.UsageError("--quiet and --verbose contradict each other", ctx)
    set_verbosity(-1 if param.name == "quiet" else 1)


def verbosity_options() -> list[click.Option]:
    """``--quiet``/``-q`` and ``--verbose``/``-v``, as every command has them."""
    return [
        click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_verbosity,
                     help="Only warnings and errors on stderr (no info lines, no progress "
                          "bar unless --progress)."),
        click.Option(["--verbose", "-v"], is_flag=True, expose_value=False,
                     callback=_verbosity, help="Also debug lines."),
    ]


def progress_option(**kwargs):
    """``--progress/--no-progress``: default, a bar only when stderr is a terminal."""
    return click.option("--progress/--no-progress", default=None, show_default=False,
                        help="Show a progress bar  [default: when stderr is a terminal]",
                        **kwargs)
