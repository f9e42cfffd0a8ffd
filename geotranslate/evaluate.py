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

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geotranslate import schema as sc
from geotranslate.chipeval import ChipPair, ChipScores, score_chips, target_data_range
from geotranslate.errors import GeotranslateError
from geotranslate.evaluate_report import EvaluationReport
from geotranslate.inputs import chip_normalizer
from geotranslate.log import show_progress
from geotranslate.metrics import (
    RANGE_SAMPLES,
    SSIM_MARGIN,
    flat_image,
    reference_data_range,
    standard_metrics,
)
from geotranslate.raster.io import open_raster, parse_bands, read_window
from geotranslate.raster.warp import GridReader
from geotranslate.raster.windows import Grid, own_extents, tile_offsets
from geotranslate.stats import StatsAccumulator

#: tile side for raster mode (plus SSIM_MARGIN of context on each side).
RASTER_TILE = 1024


def _parse_data_range(data_range: float | Sequence[float] | str | None, band_count: int,
                      source: str = "the target"):
    if data_range is None:
        return None
    if isinstance(data_range, str):
        raise GeotranslateError(f"data range {data_range!r}: 'model' is for chip mode only; "
                                "give one positive value or one per band")
    values = np.atleast_1d(np.asarray(data_range, dtype=np.float64)).ravel()
    # the count is checked before broadcasting one value to every band
    if values.size not in (1, band_count) or np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise GeotranslateError(
            f"data range {data_range!r}: give one positive value or one per band "
            f"({source} has {band_count})"
        )
    return np.broadcast_to(values, (band_count,)).tolist()


# ---- chip mode ---------------------------------------------------------------------------------


def _read_chip(path: Path, band_count: int, domain: str) -> tuple[np.ndarray, np.ndarray]:
    from geotranslate.data import read_chip  # torch only for chip mode

    data, valid = read_chip(path)
    if data.shape[0] != band_count:
        raise GeotranslateError(
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
    import torch

    from geotranslate.device import resolve_device  # torch only for chip mode
    from geotranslate.modelfile import DIRECTIONS, TranslationModel, load_model

    if direction not in DIRECTIONS:
        raise GeotranslateError(f"direction {direction!r}: choose a2b or b2a")
    if batch_size < 1:
        raise GeotranslateError(f"batch size must be at least 1, got {batch_size}")
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
    names = chips.names
    batches = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]
    if show_progress(progress):
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch", leave=False)
    with torch.no_grad():
        score_chips(lambda x: generator(x.to(device)),
                    ([chips.pair(name) for name in batch] for batch in batches), scores)
    if scores.model.count == 0:
        raise GeotranslateError(f"{chips.src_dir}, {chips.tgt_dir}: no pixel is valid in both "
                                "source and target chips")
    settings = {
        "model": model_path, "dataset_type": model.dataset_type, "data_dir": str(chips.data_dir),
        "split": split, "direction": direction, "chips": len(names), "device": str(device),
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


class _SplitChips:
    """The paired chips of one split, read for one direction of a model."""

    def __init__(self, model, data_dir: Path, split: str, direction: str):
        from geotranslate.data import chip_paths
        from geotranslate.modelfile import DIRECTIONS

        self.data_dir = data_dir
        self.src_name, self.tgt_name = DIRECTIONS[direction]
        self.source, self.target = model.source_domain(direction), model.target_domain(direction)
        if not data_dir.is_dir():
            raise GeotranslateError(
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
                raise GeotranslateError(f"{d}: no {split} chips ({hint})")
        src_names = {p.name for p in chip_paths(self.src_dir)}
        self.names = sorted(src_names & {p.name for p in chip_paths(self.tgt_dir)})
        if not self.names:
            raise GeotranslateError(f"{self.src_dir} and {self.tgt_dir}: no chip names in "
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
            raise GeotranslateError(
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
        raise GeotranslateError(
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


def _same_grid(a: rasterio.DatasetReader, b: rasterio.DatasetReader) -> bool:
    return (
        a.crs == b.crs
        and (a.width, a.height) == (b.width, b.height)
        and a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a)))
    )


def _reference_reader(pred, ref, bands: list[int], resampling: str):
    """(read(window) of REF's bands on PRED's grid, the warping reader or None if not warped)."""
    if _same_grid(pred, ref):
        return (lambda window: read_window(ref, window, bands)), None
    if pred.crs is None or ref.crs is None:
        shift = _pixel_shift(pred, ref)
        if shift is None:
            raise GeotranslateError(
                f"{ref.name}: cannot align with {pred.name} without a CRS on both "
                "(rasters without CRS must share pixel size and orientation, shifted by whole "
                "pixels at most)"
            )
        d_row, d_col = shift

        def read_shifted(window: Window):
            return read_window(ref, Window(window.col_off + d_col, window.row_off + d_row,
                                           window.width, window.height), bands)

        return read_shifted, None
    warper = GridReader([ref], bands, Grid(pred.crs, pred.transform, pred.width, pred.height),
                        resampling)
    return warper.read, warper


def _pixel_shift(pred, ref) -> tuple[int, int] | None:
    """(rows, cols) from a PRED pixel to the same pixel of REF, for grids that differ by a
    whole-pixel shift only (same pixel size and orientation); None otherwise."""
    p, r = pred.transform, ref.transform
    if not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
               for x, y in zip((p.a, p.b, p.d, p.e), (r.a, r.b, r.d, r.e), strict=True)):
        return None
    col, row = ~r * (p.c, p.f)  # PRED's origin in REF's pixels
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _common_window(pred, ref) -> Window:
    """Part of PRED's grid that REF covers; error when they do not overlap.

    Computed in PRED's pixel coordinates, so any axis orientation works: north-up maps, and
    the identity transform (south-up) of PNGs and GeoTIFFs without georeference.
    """
    r_left, r_bottom, r_right, r_top = ref.bounds
    if pred.crs is not None and ref.crs is not None and ref.crs != pred.crs:
        r_left, r_bottom, r_right, r_top = transform_bounds(ref.crs, pred.crs, *ref.bounds)
    inverse = ~pred.transform
    corners = [inverse * (x, y) for x in (r_left, r_right) for y in (r_bottom, r_top)]
    c0, c1 = min(c for c, _ in corners), max(c for c, _ in corners)
    r0, r1 = min(r for _, r in corners), max(r for _, r in corners)
    c0, r0 = max(0, math.floor(c0 + 1e-6)), max(0, math.floor(r0 + 1e-6))
    c1, r1 = min(pred.width, math.ceil(c1 - 1e-6)), min(pred.height, math.ceil(r1 - 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise GeotranslateError(f"{pred.name} and {ref.name}: the rasters do not overlap")
    return Window(c0, r0, c1 - c0, r1 - r0)


def _tiles(window: Window, tile: int, margin: int):
    """(read window, core slices within it) covering ``window``; reads add ``margin`` context."""
    c0, r0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    rows = tile_offsets(h, min(tile, h), min(tile, h))
    cols = tile_offsets(w, min(tile, w), min(tile, w))
    # the last tile is flush with the edge and overlaps its neighbour: count each pixel once
    row_ends, col_ends = own_extents(rows, h, min(tile, h)), own_extents(cols, w, min(tile, w))
    for row in rows:
        for col in cols:
            th, tw = row_ends[row] - row, col_ends[col] - col
            top, left = max(0, row - margin), max(0, col - margin)
            bottom, right = min(h, row + th + margin), min(w, col + tw + margin)
            read = Window(c0 + left, r0 + top, right - left, bottom - top)
            core = (slice(row - top, row - top + th), slice(col - left, col - left + tw))
            yield read, core


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
        raise GeotranslateError(f"tile size must be at least 16 px, got {tile_size}")
    pred = open_raster(pred_path, allow_no_crs=allow_no_crs)
    try:
        ref = open_raster(ref_path, allow_no_crs=allow_no_crs)
    except GeotranslateError:
        pred.close()
        raise
    warper = None
    try:
        pred_bands, ref_bands = parse_bands(bands, pred), parse_bands(bands_ref, ref)
        if len(pred_bands) != len(ref_bands):
            hint = "pick them with --bands / --bands-ref" if bands is None and \
                bands_ref is None else "give as many with --bands as with --bands-ref"
            raise GeotranslateError(
                f"{pred_path}: {len(pred_bands)} bands compared but {ref_path} has "
                f"{len(ref_bands)}: band counts must match ({hint})"
            )
        if (pred.crs is None) != (ref.crs is None):
            raise GeotranslateError(
                f"{pred_path if pred.crs is None else ref_path}: has no CRS while the other "
                "raster has one, so they cannot be aligned"
            )
        window = _common_window(pred, ref)
        region = _Region(pred, aoi, exclude, aoi_where)
        window = region.clip(window)
        read_reference, warper = _reference_reader(pred, ref, ref_bands, resampling)
        warped = warper is not None
        band_count = len(pred_bands)

        def pairs(margin: int):
            tiles = list(_tiles(window, tile_size, margin))
            if show_progress(progress):
                from tqdm import tqdm

                tiles = tqdm(tiles, desc="evaluate", unit="tile", leave=False)
            for read, core in tiles:
                p, p_valid = read_window(pred, read, pred_bands)
                r, r_valid = read_reference(read)
                yield p, r, p_valid & r_valid & region.inside(read), core

        ranges = _parse_data_range(data_range, band_count, str(ref_path))
        range_source = "given"
        # a first pass: REF's mean (the flat image's levels) and, unless given, its range
        ref_stats = StatsAccumulator(band_count,
                                     max_samples=RANGE_SAMPLES if ranges is None else 1)
        for _, r, valid, _core in pairs(0):
            ref_stats.add(r, valid)
        if ref_stats.count == 0:
            raise GeotranslateError(
                f"{pred_path} and {ref_path}: no pixel of the common area is valid in both "
                "(all nodata)"
            )
        stats = ref_stats.result()
        levels = [s.mean for s in stats]
        if ranges is None:
            ranges, range_source = reference_data_range(
                ref_stats, "in the common area" + region.label)
        acc = standard_metrics(band_count, ranges)
        flat_acc = standard_metrics(band_count, ranges)
        for p, r, valid, core in pairs(SSIM_MARGIN):
            acc.update(p.astype(np.float64), r.astype(np.float64), valid, core)
            flat_acc.update(flat_image(levels, r.shape), r.astype(np.float64), valid, core)
        if acc.count == 0:
            raise GeotranslateError(
                f"{pred_path} and {ref_path}: no pixel of the common area is valid in both "
                "(all nodata)"
            )
        descriptions = [pred.descriptions[b - 1] or ref.descriptions[b - 1] for b in pred_bands]
        metrics = acc.compute(descriptions)
        settings = {
            "prediction": str(pred_path),
            "reference": str(ref_path),
            "bands": pred_bands,
            "bands_ref": ref_bands,
            "aoi": None if aoi is None else str(aoi),
            "aoi_where": aoi_where,
            "exclude": None if exclude is None else str(exclude),
            "grid": "prediction",
            "reference_warped": warped,
            "resampling": resampling if warped else None,
            "common_window": {
                "col_off": int(window.col_off), "row_off": int(window.row_off),
                "width": int(window.width), "height": int(window.height),
            },
            "crs": pred.crs.to_string() if pred.crs else None,
            "tile_size": tile_size,
            "data_range": [float(r) for r in ranges],
            "data_range_source": range_source,
            "resolution_ratio": 1.0,
        }
        notes = []
        if warped:
            notes.append(f"reference warped onto the prediction's grid ({resampling})")
        baseline = {"levels": levels,
                    "levels_source": "the mean of the reference's pixels valid in both rasters",
                    "metrics": flat_acc.compute(descriptions)}
        return EvaluationReport("rasters", metrics, settings, notes, baseline)
    finally:
        if warper is not None:
            warper.close()
        pred.close()
        ref.close()


class _Region:
    """The scored part of PRED's grid: inside ``aoi``'s polygons (pixel centres) and outside
    ``exclude``'s, both reprojected to PRED's CRS; everything when neither is given."""

    def __init__(self, pred, aoi, exclude, aoi_where: str | None):
        from geotranslate.raster.vector import VectorFilter

        if aoi_where is not None and aoi is None:
            raise GeotranslateError("--aoi-where needs --aoi (the file whose features it picks)")
        self.transform = pred.transform
        self.aoi = (VectorFilter(aoi, "--aoi", where=aoi_where).geometry_in(pred.crs)
                    if aoi is not None else None)
        self.exclude = (VectorFilter(exclude, "--exclude").geometry_in(pred.crs)
                        if exclude is not None else None)
        self.aoi_path = aoi
        parts = []
        if aoi is not None:
            parts.append(f"inside --aoi {aoi}" + (f" ({aoi_where})" if aoi_where else ""))
        if exclude is not None:
            parts.append(f"outside --exclude {exclude}")
        self.label = (", " + " and ".join(parts)) if parts else ""

    def clip(self, window: Window) -> Window:
        """``window`` cut to the pixels whose centres may lie in the AOI's bounding box."""
        if self.aoi is None:
            return window
        left, bottom, right, top = self.aoi.bounds
        inverse = ~self.transform
        corners = [inverse * (x, y) for x in (left, right) for y in (bottom, top)]
        # pixel i is in when its centre i + 0.5 is: i >= c0 - 0.5 and i <= c1 - 0.5
        c0 = max(int(window.col_off), math.ceil(min(c for c, _ in corners) - 0.5))
        r0 = max(int(window.row_off), math.ceil(min(r for _, r in corners) - 0.5))
        c1 = min(int(window.col_off + window.width),
                 math.floor(max(c for c, _ in corners) + 0.5))
        r1 = min(int(window.row_off + window.height),
                 math.floor(max(r for _, r in corners) + 0.5))
        if c1 <= c0 or r1 <= r0:
            raise GeotranslateError(
                f"{self.aoi_path}: --aoi does not overlap the area both rasters cover"
            )
        return Window(c0, r0, c1 - c0, r1 - r0)

    def inside(self, window: Window) -> np.ndarray | bool:
        """Which pixels of ``window`` are scored (True: all of them)."""
        if self.aoi is None and self.exclude is None:
            return True
        from rasterio.features import geometry_mask
        from rasterio.windows import transform as window_transform

        shape = (int(window.height), int(window.width))
        transform = window_transform(window, self.transform)
        keep = np.ones(shape, dtype=bool)
        if self.aoi is not None and not self.aoi.is_empty:
            keep &= geometry_mask([self.aoi], shape, transform, invert=True)
        if self.exclude is not None and not self.exclude.is_empty:
            keep &= geometry_mask([self.exclude], shape, transform)
        return keep
