"""Input transforms that do not depend on the tiling: per-scene radiometric normalization and
elevation relative to its surroundings.

**Per-scene normalization** (``norm_scope="scene"``). Each scene (a source raster, or in a
paired export the B raster on one A raster's grid) has its own band statistics: export-tiles
records them in meta.json (``domains.<d>.scene_stats``, keyed by the chips' name stem), from a
regular lattice of at most :data:`SCENE_STATS_PIXELS` pixels of the whole scene. With the
scene scope every band of a scene is first matched to the domain's reference (the mean and
standard deviation of all its scenes together)::

    x' = ref_mean + ref_std * (x - scene_mean) / scene_std

and then scaled to [-1, 1] as usual. The match is affine, so it folds into the Normalizer's
``low``/``high`` (:func:`scene_normalizer`): two copies of a raster that differ by a gain and
an offset normalize to the same values. At prediction the input's scene statistics come from
the same lattice of the whole input (:func:`raster_scene_stats`), whatever the tiles, the
window or the rank; the output is decoded in the reference radiometry.

**Relative elevation** (:class:`RelativeElevation`): chosen bands of a DEM/DSM become height
minus the mean height of the valid pixels within ``radius`` pixels (a (2r+1)² box). Each
window is computed from the window plus a halo of ``radius`` pixels read around it (pixels
beyond the raster are invalid), and every box sum adds the same pixels in the same order, so
a chip and any prediction tile covering the same pixels get bit-identical values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geotranslate.errors import GeotranslateError, InputError, OptionError
from geotranslate.settings import split_list
from geotranslate.stats import BandStats, Normalizer, StatsAccumulator, stats_from_dict

#: how each domain is normalized: by the statistics of the whole dataset (default, and what
#: files written before the option existed use), or each scene by its own first
NORM_SCOPES = ("dataset", "scene")
DEFAULT_NORM_SCOPE = "dataset"
#: pixels of a scene's lattice (every k-th row and column) its statistics are computed from
SCENE_STATS_PIXELS = 250_000
#: values kept per band for a scene's percentiles (mean, std, min and max are exact)
SCENE_STATS_SAMPLES = 4096
#: size of the windows the prediction reads a scene's lattice in
SCENE_READ_BLOCK = 1024

Read = Callable[[Window], tuple[np.ndarray, np.ndarray]]


# ---- per-scene statistics --------------------------------------------------------------------


def scene_step(height: int, width: int) -> int:
    """Lattice step k so that a scene of ``height`` x ``width`` gives at most
    :data:`SCENE_STATS_PIXELS` statistics pixels."""
    return max(1, math.ceil(math.sqrt(height * width / SCENE_STATS_PIXELS)))


def lattice(data: np.ndarray, valid: np.ndarray, step: int, row0: int, col0: int):
    """The pixels of a window at ``(row0, col0)`` whose scene row and column are multiples
    of ``step``: the same pixels whatever the windows a scene is read in."""
    if step == 1:
        return data, valid
    r, c = (-row0) % step, (-col0) % step
    return data[:, r::step, c::step], valid[r::step, c::step]


def scene_accumulator(band_count: int) -> StatsAccumulator:
    return StatsAccumulator(band_count, max_samples=SCENE_STATS_SAMPLES, seed=0)


def raster_scene_stats(read: Read, height: int, width: int, band_count: int) -> dict:
    """A scene's statistics (``StatsAccumulator.to_dict``) from its lattice, read in windows
    of :data:`SCENE_READ_BLOCK` px by ``read``; what export-tiles records per scene."""
    step = scene_step(height, width)
    acc = scene_accumulator(band_count)
    block = max(step, SCENE_READ_BLOCK // step * step)
    for row in range(0, height, block):
        for col in range(0, width, block):
            window = Window(col, row, min(block, width - col), min(block, height - row))
            data, valid = read(window)
            acc.add(*lattice(data, valid, step, row, col))
    if acc.count == 0:
        raise InputError("no valid pixel to compute the scene statistics from")
    return {**acc.to_dict(), "pixel_step": step}


def _affine(scene_mean: float, scene_std: float, ref_mean: float,
            ref_std: float) -> tuple[float, float]:
    """(gain, offset) mapping a scene's band onto the reference mean and standard deviation
    (gain 1 for a constant band)."""
    gain = ref_std / scene_std if scene_std > 0 and ref_std > 0 else 1.0
    return gain, ref_mean - gain * scene_mean


def scene_normalizer(normalizer: Normalizer, scene: Sequence[BandStats],
                     reference: dict) -> Normalizer:
    """``normalizer`` (which scales the reference radiometry) applied after matching
    ``scene`` to ``reference`` ({"mean": [...], "std": [...]}): one affine map per band,
    folded into low/high."""
    low, high = [], []
    for i, (lo, hi, s) in enumerate(zip(normalizer.low, normalizer.high, scene, strict=True)):
        gain, offset = _affine(s.mean, s.std, reference["mean"][i], reference["std"][i])
        low.append((lo - offset) / gain)
        high.append((hi - offset) / gain)
    return Normalizer(normalizer.method, tuple(low), tuple(high))


def reference_of(stats: Sequence[BandStats]) -> dict:
    """The reference radiometry of the scene scope: the domain's mean and std per band."""
    return {"mean": [s.mean for s in stats], "std": [s.std for s in stats]}


def matched_stats(scenes: Sequence[Sequence[BandStats]],
                  reference: Sequence[BandStats]) -> list[BandStats]:
    """The domain's statistics after every scene is matched to ``reference``: what the
    Normalizer of the scene scope is built from (ranges are the widest of the scenes';
    the 2/98 percentiles a pixel-weighted mean of theirs)."""
    out = []
    for i, ref in enumerate(reference):
        mapped = []
        for scene in scenes:
            s = scene[i]
            gain, offset = _affine(s.mean, s.std, ref.mean, ref.std)
            values = [None if v is None else gain * v + offset
                      for v in (s.min, s.max, s.p2, s.p98, s.p0_1, s.p99_9)]
            mapped.append((s.count, *values))
        total = sum(m[0] for m in mapped) or 1
        out.append(BandStats(
            min=min(m[1] for m in mapped), max=max(m[2] for m in mapped), mean=ref.mean,
            std=ref.std, p2=sum(m[0] * m[3] for m in mapped) / total,
            p98=sum(m[0] * m[4] for m in mapped) / total, count=int(total),
            p0_1=None if any(m[5] is None for m in mapped) else min(m[5] for m in mapped),
            p99_9=None if any(m[6] is None for m in mapped) else max(m[6] for m in mapped),
        ))
    return out


def chip_stem(name: str) -> str:
    """The scene a chip was cut from: its name less ``_<row>_<col>.tif``."""
    return name.rsplit("_", 2)[0]


def check_norm_scope(scope: str) -> str:
    if scope not in NORM_SCOPES:
        raise OptionError(f"norm scope {scope!r}: choose from {', '.join(NORM_SCOPES)}")
    return scope


def scene_stats_of(scenes: object, where: str) -> dict[str, list[BandStats]]:
    """{chip stem: band statistics} from a meta.json domain's ``scene_stats``; refuses files
    without them."""
    if not isinstance(scenes, dict) or not scenes:
        raise InputError(
            f"{where}: no per-scene statistics (scene_stats); re-export the chips with this "
            "version of export-tiles to use --norm-scope scene"
        )
    try:
        return {stem: stats_from_dict(s) for stem, s in scenes.items()}
    except (KeyError, TypeError) as e:
        raise InputError(f"{where}: scene_stats unreadable ({e})") from None


# ---- relative elevation ----------------------------------------------------------------------


@dataclass(frozen=True)
class RelativeElevation:
    """Height minus the mean of the valid heights within ``radius`` px, on ``bands``
    (1-based positions among the domain's bands; empty: every band)."""

    radius: int
    bands: tuple[int, ...] = ()

    KIND = "relative_elevation"

    @classmethod
    def parse(cls, text: str) -> RelativeElevation:
        """``RADIUS_PX`` or ``RADIUS_PX:BANDS`` (e.g. ``32`` or ``32:1``)."""
        radius_text, _, bands_text = str(text).partition(":")
        try:
            radius = int(radius_text)
            bands = split_list(bands_text, int)
        except ValueError:
            raise OptionError(
                f"--relative-elevation {text!r}: expected RADIUS_PX or RADIUS_PX:BANDS "
                "(e.g. 32 or 32:1)"
            ) from None
        if radius < 1 or any(b < 1 for b in bands):
            raise OptionError(
                f"--relative-elevation {text!r}: the radius and the bands must be >= 1"
            )
        return cls(radius, bands)

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "radius_px": self.radius, "bands": list(self.bands)}

    @classmethod
    def from_dict(cls, d: dict) -> RelativeElevation:
        if d.get("kind") != cls.KIND:
            raise ValueError(f"unknown input transform {d.get('kind')!r}")
        return cls(int(d["radius_px"]), tuple(int(b) for b in d.get("bands", [])))

    def check_bands(self, band_count: int, where: str) -> None:
        bad = [b for b in self.bands if b > band_count]
        if bad:
            raise OptionError(
                f"{where}: --relative-elevation band {bad[0]}, but the domain has "
                f"{band_count} band(s)"
            )

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """float32 (C, H, W): the chosen bands relative to their surroundings (NaN where
        invalid: a relative height of any value is data), the others as they are. Beyond
        the arrays' edges counts as invalid: give a halo of ``radius`` px for exact values."""
        out = data.astype(np.float32)
        weight = valid.astype(np.float64)
        count = _box_sum(weight, self.radius)
        for b in self.bands or range(1, len(data) + 1):
            z = np.where(valid, data[b - 1].astype(np.float64), 0.0)
            mean = _box_sum(z, self.radius) / np.maximum(count, 1.0)
            out[b - 1] = np.where(valid, z - mean, np.nan).astype(np.float32)
        return out

    def wrap(self, read: Read, height: int, width: int) -> Read:
        """``read`` with the transform: each window is read with its halo (clipped to the
        ``height`` x ``width`` source; pixels beyond it are invalid)."""
        r = self.radius

        def read_relative(window: Window) -> tuple[np.ndarray, np.ndarray]:
            row, col = int(window.row_off), int(window.col_off)
            h, w = int(window.height), int(window.width)
            top, left = max(0, row - r), max(0, col - r)
            bottom, right = min(height, row + h + r), min(width, col + w + r)
            if bottom <= top or right <= left:  # nothing of the source around it
                data, valid = read(window)
                return np.zeros(data.shape, np.float32), np.zeros_like(valid)
            data, valid = read(Window(left, top, right - left, bottom - top))
            canvas = np.zeros((data.shape[0], h + 2 * r, w + 2 * r), dtype=data.dtype)
            canvas_valid = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
            y0, x0 = top - (row - r), left - (col - r)
            canvas[:, y0:y0 + bottom - top, x0:x0 + right - left] = data
            canvas_valid[y0:y0 + bottom - top, x0:x0 + right - left] = valid
            out = self.apply(canvas, canvas_valid)
            return out[:, r:r + h, r:r + w], canvas_valid[r:r + h, r:r + w]

        return read_relative


def _box_sum(x: np.ndarray, r: int) -> np.ndarray:
    """Sum over the (2r+1)² box around each pixel (zeros beyond the edges). The terms are
    added in one fixed order for every pixel, so the result does not depend on the extent
    of the array around it (a moving sum would)."""
    height, width = x.shape
    padded = np.pad(x, r)
    rows = padded[0:height, :].copy()
    for i in range(1, 2 * r + 1):
        rows += padded[i:i + height, :]
    out = rows[:, 0:width].copy()
    for j in range(1, 2 * r + 1):
        out += rows[:, j:j + width]
    return out


def transforms_from_dicts(items: object) -> list[RelativeElevation]:
    """The input transforms recorded in meta.json / model.json (``input_transforms``)."""
    if not items:
        return []
    if not isinstance(items, list):
        raise ValueError("input_transforms: expected a list")
    return [RelativeElevation.from_dict(t) for t in items]


def transformed_read(read: Read, transforms: Sequence[RelativeElevation], height: int,
                     width: int) -> Read:
    for transform in transforms:
        read = transform.wrap(read, height, width)
    return read


# ---- prediction ------------------------------------------------------------------------------


def input_reader(spec, bands: Sequence[int]) -> Callable | None:
    """``read(ds, window)`` of a model's input domain ``spec`` (a DomainSpec): its bands,
    through its input transforms; None when it has none (a plain read)."""
    from geotranslate.raster.io import read_window

    transforms = transforms_from_dicts(spec.input_transforms)
    if not transforms:
        return None

    def read(ds, window: Window) -> tuple[np.ndarray, np.ndarray]:
        def plain(w: Window) -> tuple[np.ndarray, np.ndarray]:
            return read_window(ds, w, bands)

        return transformed_read(plain, transforms, ds.height, ds.width)(window)

    return read


def scene_spec(spec, ds, bands: Sequence[int], read: Callable | None):
    """``spec`` (a DomainSpec) as it normalizes the raster ``ds``: with the scene scope, its
    normalizer folded with the match of ``ds``'s own statistics (the whole raster's lattice)."""
    import dataclasses

    from geotranslate.raster.io import read_window

    if spec.norm_scope != "scene":
        return spec
    if read is None:
        def read(d, w):
            return read_window(d, w, bands)
    try:
        stats = raster_scene_stats(lambda w: read(ds, w), ds.height, ds.width, len(bands))
    except GeotranslateError:
        raise InputError(
            f"{ds.name}: no valid pixel to compute its scene statistics from"
        ) from None
    return dataclasses.replace(
        spec, normalizer=scene_normalizer(spec.normalizer, stats_from_dict(stats),
                                          spec.reference))


def _describe(parts: Sequence[dict]) -> str:
    return " + ".join(f"{p['band_count']} {p['dtype']} band(s)"
                      + (f" ({p['source']})" if p.get("source") else "") for p in parts)


def check_composition(spec, in_source, in_path: str, direction: str) -> None:
    """Refuse an input fused from other sources than the model's input domain (``spec``,
    a DomainSpec): another number of rasters, or a raster of other bands or dtype."""
    model_parts = list(spec.composition)
    input_parts = list(getattr(in_source, "composition", ()) or ())
    if not model_parts and not input_parts:
        return
    domain = "A" if direction == "a2b" else "B"
    if not model_parts:
        raise InputError(
            f"{in_path}: fused from {len(input_parts)} rasters ({_describe(input_parts)}), "
            f"but the model's domain {domain} is a single raster of {spec.band_count} "
            f"{spec.dtype} band(s)"
        )
    if not input_parts:
        raise InputError(
            f"{in_path}: a single raster, but the model's domain {domain} is fused from "
            f"{len(model_parts)} rasters ({_describe(model_parts)}); give fuse:…+… in that order"
        )
    if len(model_parts) != len(input_parts):
        raise InputError(
            f"{in_path}: fused from {len(input_parts)} rasters ({_describe(input_parts)}), but "
            f"the model's domain {domain} from {len(model_parts)} ({_describe(model_parts)})"
        )
    for i, (want, got) in enumerate(zip(model_parts, input_parts, strict=True)):
        if (want["band_count"], want["dtype"]) != (got["band_count"], got["dtype"]):
            raise InputError(
                f"{in_path}: raster {i + 1} of the fuse ({got.get('source')}) has "
                f"{got['band_count']} {got['dtype']} band(s), but the model's domain {domain} "
                f"expects {want['band_count']} {want['dtype']} band(s) there "
                f"(as {want.get('source')})"
            )


def chip_normalizer(spec, data_dir, domain: str) -> Callable:
    """``normalizer(chip name)`` of chips of ``domain`` under ``data_dir`` as the model's
    input domain ``spec`` (a DomainSpec) normalizes them: with the scene scope, by the chip's
    scene statistics in the folder's meta.json."""
    from pathlib import Path

    from geotranslate.chips.meta import META_NAME, read_chip_meta

    if spec.norm_scope != "scene":
        return lambda name: spec.normalizer
    meta_path = Path(data_dir) / META_NAME
    dom = read_chip_meta(meta_path, domains=()).domains.get(domain)
    if dom is None:
        raise InputError(f"{meta_path}: no domain {domain.upper()}")
    scenes = scene_stats_of(dom.scene_stats, f"{meta_path} (domain {domain.upper()})")
    normalizers = {stem: scene_normalizer(spec.normalizer, s, spec.reference)
                   for stem, s in scenes.items()}

    def normalizer(name: str) -> Normalizer:
        if chip_stem(name) not in normalizers:
            raise InputError(
                f"{meta_path}: no scene statistics for chip {name} (scene {chip_stem(name)!r})"
            )
        return normalizers[chip_stem(name)]

    return normalizer
