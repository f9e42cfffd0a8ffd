"""Compare translations with references: a model on paired chips, or two rasters.

Chip mode (:func:`evaluate_chips`) runs a model's generator on the source chips of a split and
compares its output, decoded to data units with the model's target-domain normalizer (and
cast to the target dtype, as ``predict-raster`` writes it), with the real target chips of the
same name. As in ``predict-raster``, instance norms use scene statistics by default: those of
a bounded sample of the split's source chips spread over it (``norm_stats="tile"``: each
chip's own, as in training).

Raster mode (:func:`evaluate_rasters`) compares PRED with REF over their common area on
PRED's grid; REF is warped onto that grid (bilinear by default) when CRS, transform or size
differ. The rasters are processed in tiles with a margin, so memory stays bounded and SSIM
windows see across tile borders. ``bands``/``bands_ref`` pick bands of either raster (1-based,
as export-tiles' ``--bands``); ``aoi``/``exclude`` (vector files in any CRS, e.g. a chip
folder's index.gpkg with ``aoi_where="split=val"``: the held-out blocks) keep the scoring to
the pixels whose centres lie inside the AOI's polygons and outside the excluded ones, on the
AOI's bounding window, so a rectangular AOI scores exactly what a raster cut to it scores.
:mod:`geotranslate.raster_pair` opens and aligns the two rasters.

One data-range convention in both modes: PSNR and SSIM use, per band, p98 - p2 of the
reference's pixels that are scored (valid in both, inside the AOI; exact, or from a bounded
uniform sample when there are many), unless a range is given. Chip mode also takes
``data_range="model"``: the model's target normalization range (high - low of its normalizer,
e.g. the training target's robust min-max); usually wider, so its PSNR is higher. The report
names the range it used. Chip mode's scoring (:mod:`geotranslate.chipeval`) is also the
training validation's.

Both return an :class:`~geotranslate.evaluate_report.EvaluationReport`: a terminal table and
a JSON document holding every figure and the settings, and beside the model's figures those
of a flat image (each band at one value: the reference's mean) scored the same way, the
trivial baseline a translation must beat. Raster mode: the mean of REF's pixels in the common
area that are valid in both rasters; chip mode: the target domain's training mean (meta.json
of the chip folder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geotranslate import schema as sc
from geotranslate.chipeval import ChipPair, ChipScores, score_chips, target_data_range
from geotranslate.errors import InputError, OptionError, StorageError
from geotranslate.evaluate_report import EvaluationReport
from geotranslate.inputs import chip_normalizer
from geotranslate.log import show_progress
from geotranslate.metrics import (
    RANGE_SAMPLES,
    SSIM_MARGIN,
    MetricCollection,
    flat_image,
    reference_data_range,
    standard_metrics,
)
from geotranslate.raster_pair import RasterPair
from geotranslate.stats import StatsAccumulator

#: tile side for raster mode (plus SSIM_MARGIN of context on each side).
RASTER_TILE = 1024


def _parse_data_range(data_range: float | Sequence[float] | str | None, band_count: int,
                      source: str = "the target"):
    if data_range is None:
        return None
    if isinstance(data_range, str):
        raise OptionError(f"data range {data_range!r}: 'model' is for chip mode only; "
                          "give one positive value or one per band")
    values = np.atleast_1d(np.asarray(data_range, dtype=np.float64)).ravel()
    # the count is checked before broadcasting one value to every band
    if values.size not in (1, band_count) or np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise OptionError(
            f"data range {data_range!r}: give one positive value or one per band "
            f"({source} has {band_count})"
        )
    return np.broadcast_to(values, (band_count,)).tolist()


# ---- chip mode ---------------------------------------------------------------------------------


def _read_chip(path: Path, band_count: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    from geotranslate.data import read_chip  # torch only for chip mode

    data, valid = read_chip(path)
    if data.shape[0] != band_count:
        raise InputError(
            f"{path}: {data.shape[0]} bands, but the model's domain {domain} has {band_count}"
        )
    return data, valid


def evaluate_chips(
    model,
    data_dir: str | os.PathLike = "chips",
    split: str = "val",
    direction: str = "a2b",
    *,
    device: str = "cpu",
    batch_size: int = 8,
    data_range: float | Sequence[float] | str | None = None,
    progress: bool | None = None,
    norm_stats: str = "scene",
) -> EvaluationReport:
    """Run ``model``'s ``direction`` generator on the ``split`` chips and compare with the targets.

    ``model`` is a :class:`~geotranslate.modelfile.TranslationModel` or a path for
    :func:`~geotranslate.modelfile.load_model`. Pixels count where both the source and the
    target chip are valid. ``data_range``: None (p98 - p2 of the targets' scored pixels, as
    raster mode), ``"model"`` (the model's target normalization range) or values. The scoring
    is :mod:`geotranslate.chipeval`'s, as the training validation's.
    """
    from geotranslate.device import resolve_device  # torch only for chip mode
    from geotranslate.modelfile import DIRECTIONS, TranslationModel, load_model

    if direction not in DIRECTIONS:
        raise OptionError(f"direction {direction!r}: choose a2b or b2a")
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}")
    device = resolve_device(device)
    model_path = None
    if not isinstance(model, TranslationModel):
        model_path = str(model)
        model = load_model(model, device=device)
    generator = model.generator(direction).to(device).eval()
    chips = _SplitChips(model, Path(data_dir), split, direction)
    generator, norm_label = _chip_scene_generator(generator, norm_stats, chips, device)
    ranges, range_source = _chip_data_range(data_range, chips)
    target = chips.target
    levels, no_levels = _training_means(chips.data_dir, chips.tgt_name, target.band_count)
    scores = ChipScores(target.normalizer, target.dtype, ranges, levels)
    _score_split(generator, chips, scores, batch_size, device, progress)
    settings = {
        "model": model_path, "dataset_type": model.dataset_type, "data_dir": str(chips.data_dir),
        "split": split, "direction": direction, "chips": len(chips.names), "device": str(device),
        "batch_size": batch_size, "norm_stats": norm_label, "target_dtype": target.dtype,
        "data_range": [float(r) for r in ranges], "data_range_source": range_source,
        "resolution_ratio": 1.0,
    }
    notes, baseline = [], None
    if scores.flat is None:
        notes.append(f"no flat-image baseline: {no_levels}")
    else:
        baseline = {"levels": levels,
                    "levels_source": f"the training mean of domain {chips.tgt_name} (meta.json)",
                    "metrics": scores.flat.compute(target.band_descriptions)}
    metrics = scores.model.compute(target.band_descriptions)
    return EvaluationReport("chips", metrics, settings, notes, baseline)


def _score_split(generator, chips: _SplitChips, scores: ChipScores, batch_size: int, device,
                 progress: bool | None) -> None:
    """Run ``generator`` on the split's chips, ``batch_size`` at a time, into ``scores``."""
    import torch

    names = chips.names
    batches = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]
    if show_progress(progress):
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch", leave=False)
    with torch.no_grad():
        score_chips(lambda x: generator(x.to(device)),
                    ([chips.pair(name) for name in batch] for batch in batches), scores)
    if scores.model.count == 0:
        raise InputError(f"{chips.src_dir}, {chips.tgt_dir}: no pixel is valid in both "
                         "source and target chips")


class _SplitChips:
    """The paired chips of one split, read for one direction of a model."""

    def __init__(self, model, data_dir: Path, split: str, direction: str):
        from geotranslate.data import chip_paths
        from geotranslate.modelfile import DIRECTIONS

        self.data_dir = data_dir
        self.src_name, self.tgt_name = DIRECTIONS[direction]
        self.source, self.target = model.source_domain(direction), model.target_domain(direction)
        if not data_dir.is_dir():
            raise StorageError(
                f"{data_dir}: no such chip directory (make it with export-tiles)")
        self.src_dir = data_dir / f"{split}_{self.src_name}"
        self.tgt_dir = data_dir / f"{split}_{self.tgt_name}"
        for d in (self.src_dir, self.tgt_dir):
            if not d.is_dir() or not chip_paths(d):
                hint = (
                    "export validation chips with `geotranslate export-tiles ... "
                    "--val-fraction 0.1` or evaluate on --split train"
                    if split == "val"
                    else "export chips with `geotranslate export-tiles` (paired, with --b)"
                )
                raise InputError(f"{d}: no {split} chips ({hint})")
        src_names = {p.name for p in chip_paths(self.src_dir)}
        self.names = sorted(src_names & {p.name for p in chip_paths(self.tgt_dir)})
        if not self.names:
            raise InputError(f"{self.src_dir} and {self.tgt_dir}: no chip names in "
                             "common (chip mode needs paired chips)")
        # the scene scope's normalizer of each chip
        self.source_norm = chip_normalizer(self.source, data_dir, self.src_name)

    def source_chip(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _read_chip(self.src_dir / name, self.source.band_count, self.src_name)

    def target_chip(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _read_chip(self.tgt_dir / name, self.target.band_count, self.tgt_name)

    def pair(self, name: str) -> ChipPair:
        src, src_valid = self.source_chip(name)
        tgt, tgt_valid = self.target_chip(name)
        if src.shape[1:] != tgt.shape[1:]:
            raise InputError(
                f"{self.tgt_dir / name}: {tgt.shape[2]} x {tgt.shape[1]} px, but its source "
                f"chip is {src.shape[2]} x {src.shape[1]} px"
            )
        return ChipPair(name, self.source_norm(name).to_model(src, src_valid), tgt,
                        src_valid & tgt_valid)

    def targets(self):
        """(target, valid in both) of each chip pair of one size (the others are refused,
        with their message, by :meth:`pair`)."""
        for name in self.names:
            _, src_valid = self.source_chip(name)
            data, tgt_valid = self.target_chip(name)
            if src_valid.shape == tgt_valid.shape:
                yield data, src_valid & tgt_valid


def _chip_data_range(data_range, chips: _SplitChips) -> tuple[list[float], str]:
    """The ranges of ``data_range`` (None, ``"model"`` or values) and the sentence naming them."""
    if data_range is None:
        return target_data_range(chips.targets(), chips.target.band_count,
                                 f"{chips.src_dir}, {chips.tgt_dir}")
    if isinstance(data_range, str) and data_range == "model":
        normalizer = chips.target.normalizer
        ranges = [h - lo for lo, h in zip(normalizer.low, normalizer.high, strict=True)]
        return ranges, (f"target domain {chips.tgt_name} normalizer of the model "
                        f"({normalizer.method}: high - low)")
    ranges = _parse_data_range(data_range, chips.target.band_count,
                               f"the model's domain {chips.tgt_name}")
    return ranges, "given"


def _training_means(data_dir: Path, domain: str, band_count: int) -> tuple[list | None, str]:
    """Per-band mean of ``domain`` in the chip folder's meta.json, or None and why not."""
    from geotranslate.data import META_NAME, read_meta

    path = data_dir / META_NAME
    if not path.exists():
        return None, f"{path} is missing"
    meta = sc.load_json(path, "corrupt meta.json")  # one line for a broken or too deep file
    if not isinstance(meta, dict) or "domains" not in meta:
        return None, f"{path} holds no domain statistics"
    bands = read_meta(data_dir).domains[domain].band_stats
    if len(bands) != band_count:
        raise InputError(
            f"{data_dir / META_NAME}: domain {domain} has statistics of {len(bands)} bands, "
            f"but the model's has {band_count}"
        )
    return [s.mean for s in bands], ""


def _chip_scene_generator(generator, norm_stats, chips: _SplitChips, device):
    """The generator with scene statistics from chips spread over the split, and the label."""
    from contextlib import nullcontext

    from geotranslate.predict.scene import (
        SAMPLE_PIXELS,
        SAMPLE_TILES,
        sample_offsets,
        scene_generator,
    )

    names = chips.names

    def sample() -> np.ndarray:
        first, _ = chips.source_chip(names[0])
        count = max(1, min(SAMPLE_TILES, SAMPLE_PIXELS // (first.shape[1] * first.shape[2])))
        samples = []
        for i in sample_offsets(len(names), 1, count):
            data, valid = chips.source_chip(names[i])
            if data.shape == first.shape:  # one batch: one shape
                samples.append(chips.source_norm(names[i]).to_model(data, valid))
        return np.stack(samples)

    return scene_generator(generator, norm_stats, sample, device, nullcontext)


# ---- raster mode -------------------------------------------------------------------------------


def evaluate_rasters(
    pred_path: str | os.PathLike,
    ref_path: str | os.PathLike,
    *,
    resampling: str = "bilinear",
    data_range: float | Sequence[float] | None = None,
    tile_size: int = RASTER_TILE,
    allow_no_crs: bool = False,
    progress: bool | None = None,
    bands: str | Sequence[int] | None = None,
    bands_ref: str | Sequence[int] | None = None,
    aoi: str | os.PathLike | None = None,
    exclude: str | os.PathLike | None = None,
    aoi_where: str | None = None,
) -> EvaluationReport:
    """Compare PRED with REF over their common area, on PRED's grid, valid pixels only.

    ``bands``/``bands_ref``: PRED's and REF's bands compared, in order ("1,2,3", 1-based;
    default: every band but alpha). ``aoi``/``exclude``: vector files (any CRS) restricting
    the scored pixels; ``aoi_where`` ("COLUMN=VALUE[,VALUE...]") keeps only the AOI's
    features with those values (e.g. ``split=val`` of an index.gpkg).
    """
    if tile_size < 16:
        raise OptionError(f"tile size must be at least 16 px, got {tile_size}")
    with RasterPair(pred_path, ref_path, resampling=resampling, allow_no_crs=allow_no_crs,
                    bands=bands, bands_ref=bands_ref, aoi=aoi, exclude=exclude,
                    aoi_where=aoi_where) as pair:
        ranges = _parse_data_range(data_range, pair.band_count, str(ref_path))
        levels, ranges, range_source = _reference_levels(pair, ranges, tile_size, progress)
        model, flat = _score_tiles(pair, ranges, levels, tile_size, progress)
        settings = {**pair.settings(), "tile_size": tile_size,
                    "data_range": [float(r) for r in ranges], "data_range_source": range_source,
                    "resolution_ratio": 1.0}
        notes = []
        if pair.warped:
            notes.append(f"reference warped onto the prediction's grid ({resampling})")
        descriptions = pair.descriptions()
        baseline = {"levels": levels,
                    "levels_source": "the mean of the reference's pixels valid in both rasters",
                    "metrics": flat.compute(descriptions)}
        return EvaluationReport("rasters", model.compute(descriptions), settings, notes, baseline)


def _reference_levels(pair: RasterPair, ranges: list[float] | None, tile_size: int,
                      progress: bool | None) -> tuple[list[float], list[float], str]:
    """A first pass over the tiles: REF's mean (the flat image's levels) and, unless
    ``ranges`` is given, its data range; (levels, ranges, the sentence naming the ranges)."""
    ref_stats = StatsAccumulator(pair.band_count,
                                 max_samples=RANGE_SAMPLES if ranges is None else 1)
    for _, r, valid, _core in pair.tiles(tile_size, 0, progress):
        ref_stats.add(r, valid)
    if ref_stats.count == 0:
        raise pair.nothing_valid()
    levels = [s.mean for s in ref_stats.result()]
    if ranges is None:
        return levels, *reference_data_range(ref_stats,
                                             "in the common area" + pair.region.label)
    return levels, ranges, "given"


def _score_tiles(pair: RasterPair, ranges: list[float], levels: list[float], tile_size: int,
                 progress: bool | None) -> tuple[MetricCollection, MetricCollection]:
    """The second pass: PRED's figures against REF, and the flat image's at ``levels``."""
    model = standard_metrics(pair.band_count, ranges)
    flat = standard_metrics(pair.band_count, ranges)
    for p, r, valid, core in pair.tiles(tile_size, SSIM_MARGIN, progress):
        r = r.astype(np.float64)
        model.update(p.astype(np.float64), r, valid, core)
        flat.update(flat_image(levels, r.shape), r, valid, core)
    if model.count == 0:
        raise pair.nothing_valid()
    return model, flat
