"""``RUN_DIR/metrics.csv`` (one row per iteration, plus the validation rows) and, when
TensorBoard is installed, the same figures, the previews and the run's settings in
``RUN_DIR/tensorboard/``. A resumed run drops what was logged after its checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from geotranslate.train.validation import VAL_COLUMNS


class MetricsLog:
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
