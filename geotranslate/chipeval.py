"""Scoring a translator on paired chips: the one core of ``evaluate`` in chip mode and of the
validation line in training.

Units, stated once. Every figure is in the target domain's data units: the generator's output
decoded by the target normalizer and cast to the target dtype (the values ``predict-raster``
writes), against the target chip as export-tiles wrote it, over the pixels valid in both
chips. PSNR and SSIM use, per band, the data range R_b = p98 - p2 of those target pixels over
all the chips scored (:func:`geotranslate.metrics.reference_data_range`) unless the caller
gives ranges. Beside the model, a flat image at the target domain's training mean (meta.json)
is scored on the same pixels with the same ranges: the bar a translation must clear. The
figures themselves are defined in :mod:`geotranslate.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from geotranslate.errors import InputError
from geotranslate.metrics import (
    RANGE_SAMPLES,
    MetricCollection,
    flat_image,
    reference_data_range,
    standard_metrics,
)
from geotranslate.stats import Normalizer, StatsAccumulator


@dataclass
class ChipPair:
    """A source chip ready for the generator, and its target chip."""

    name: str
    x: np.ndarray  # (bands, rows, cols) float32: the source chip normalized for the generator
    target: np.ndarray  # (bands, rows, cols): the target chip in its data units
    valid: np.ndarray  # (rows, cols) bool: valid in both chips


def target_data_range(targets: Iterable[tuple[np.ndarray, np.ndarray]], band_count: int,
                      what: str) -> tuple[list[float], str]:
    """R_b of ``(target, valid)`` chips, and the sentence that says so; ``what`` names the
    chips in the error when no pixel is valid."""
    stats = StatsAccumulator(band_count, max_samples=RANGE_SAMPLES)
    for data, valid in targets:
        stats.add(data, valid)
    if stats.count == 0:
        raise InputError(f"{what}: no pixel is valid in both source and target chips")
    return reference_data_range(stats, "in the split's chips")


class ChipScores:
    """The model's figures (``model``) and the flat image's (``flat``, None without training
    means) over the chips added, each a :class:`~geotranslate.metrics.MetricCollection`."""

    def __init__(self, target: Normalizer, dtype: str, data_range: float | Sequence[float],
                 levels: Sequence[float] | None):
        self.target, self.dtype, self.levels = target, dtype, levels
        self.model: MetricCollection = standard_metrics(target.band_count, data_range)
        self.flat: MetricCollection | None = (
            standard_metrics(target.band_count, data_range) if levels is not None else None)

    def add(self, output: np.ndarray, pair: ChipPair) -> None:
        """One generator output (model units) against its pair's target."""
        pred = self.target.to_data(output, self.dtype).astype(np.float64)
        ref = pair.target.astype(np.float64)
        self.model.update(pred, ref, pair.valid)
        if self.flat is not None:
            self.flat.update(flat_image(self.levels, ref.shape), ref, pair.valid)


def score_chips(translate: Callable, batches: Iterable[Sequence[ChipPair]],
                scores: ChipScores) -> ChipScores:
    """``translate`` (a (N, bands, rows, cols) float32 tensor -> the generator's output) on
    each batch of pairs, chips of one shape together, the outputs added to ``scores``."""
    import torch

    for batch in batches:
        groups: dict[tuple[int, ...], list[ChipPair]] = {}
        for pair in batch:
            groups.setdefault(pair.x.shape, []).append(pair)
        for pairs in groups.values():
            x = torch.from_numpy(np.stack([pair.x for pair in pairs]))
            outputs = translate(x).float().cpu().numpy()
            for output, pair in zip(outputs, pairs, strict=True):
                scores.add(output, pair)
    return scores
