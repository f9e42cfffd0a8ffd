"""The validation of a paired run: after each epoch, the figures of the ``val_*`` chips and
the log line that shows them beside a flat image's.

The chips are scored by the core of ``evaluate`` in chip mode (:mod:`geotranslate.chipeval`,
which states the units): in domain B's data units, with the data range fixed once per run
from the validation targets. ``val_l1`` is the MAE, ``val_psnr`` and ``val_ssim`` use that
range; ``val_flat_*`` are the figures of a flat image at B's training mean on the same pixels.
Each chip's instance-norm statistics are its own, as in training, so with the whole chip as
crop a row equals ``evaluate --model RUN --split val --norm-stats tile``.
"""

from __future__ import annotations

from geotranslate.chipeval import ChipPair, ChipScores, score_chips, target_data_range
from geotranslate.data import ChipDataset
from geotranslate.errors import InputError
from geotranslate.log import Advice
from geotranslate.methods import Method
from geotranslate.metrics import not_above_flat

#: metrics.csv columns of a validation row
VAL_COLUMNS = ("val_l1", "val_psnr", "val_ssim", "val_flat_l1", "val_flat_psnr", "val_flat_ssim")
#: after this many epochs a model whose validation PSNR is not above the flat image is flagged.
FLAT_PATIENCE_EPOCHS = 5
#: the PSNR logged for identical images (metrics.csv holds no infinity)
PSNR_CAP = 100.0


class Validation:
    """The validation chips of a run (targets read in data units) and their scoring."""

    def __init__(self, val_set: ChipDataset, batch_size: int):
        self.val_set, self.batch_size = val_set, batch_size
        domain = val_set.meta.domains["b"]
        self.dtype = domain.dtype
        self.levels = [s.mean for s in domain.band_stats]
        # the targets in data units: kept in memory when the chips are, else read each time
        self.targets = ([val_set.chip_data("b", i) for i in range(len(val_set))]
                        if val_set.cached else None)
        try:
            self.ranges, _ = target_data_range(
                ((pair.target, pair.valid) for pair in self.pairs()),
                len(self.levels), str(val_set.root / "val_b"))
        except InputError:  # no pixel is valid in both: no validation figures
            self.ranges = None

    def pair(self, index: int) -> ChipPair:
        item = self.val_set[index]
        target, _ = (self.targets[index] if self.targets is not None
                     else self.val_set.chip_data("b", index))
        valid = (item["valid_a"][0] * item["valid_b"][0]).numpy() > 0
        return ChipPair(item["name_b"], item["a"].numpy(), target, valid)

    def pairs(self):
        return (self.pair(i) for i in range(len(self.val_set)))

    def scores(self, method: Method) -> dict[str, float]:
        """The ``val_*`` figures of ``method``'s A -> B generator ({} when no pixel counts)."""
        if self.ranges is None:
            return {}
        scores = ChipScores(self.val_set.norm["b"], self.dtype, self.ranges, self.levels)
        n = len(self.val_set)
        batches = ([self.pair(i) for i in range(start, min(start + self.batch_size, n))]
                   for start in range(0, n, self.batch_size))
        score_chips(lambda x: method.translate("a2b", x), batches, scores)
        if scores.model.count == 0:
            return {}
        figures = {}
        for prefix, metrics in (("val_", scores.model), ("val_flat_", scores.flat)):
            overall = metrics.compute()["overall"]
            figures.update({prefix + "l1": overall["mae"],
                            prefix + "psnr": min(overall["psnr"], PSNR_CAP)})
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
    model = {k.removeprefix("val_"): v for k, v in scores.items() if not k.startswith("val_flat_")}
    flat = {k.removeprefix("val_flat_"): v for k, v in scores.items() if k.startswith("val_flat_")}
    worse = not_above_flat(model, flat)
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
