"""Image-quality metrics between a prediction and a reference, over valid pixels only.

Used by ``geotranslate evaluate`` (chips and rasters) and by training's validation, so the
figures mean the same everywhere. Arrays are (bands, rows, cols) in data units with one
(rows, cols) validity mask: a pixel counts only where it is valid in both images.

Definitions (per band b over the n valid pixels; "overall" pools the bands):

- MAE_b, RMSE_b in data units; overall MAE/RMSE pool all bands' errors (same units only if
  the bands share units, as reflectances or dB do).
- PSNR_b = 10 log10(R_b^2 / MSE_b) with R_b the data range (given by the caller and reported;
  ``evaluate`` and the training validation take p98 - p2 of the reference's scored pixels,
  :func:`reference_data_range`); overall PSNR = 10 log10(1 / mean_b(MSE_b / R_b^2)).
  Identical images give +inf.
- SSIM_b: scikit-image's ``structural_similarity`` (7x7 uniform window, K1=0.01, K2=0.03,
  ``data_range=R_b``) computed with invalid pixels set to the band's valid mean (so nodata
  values do not leak into their neighbours' windows), its SSIM map averaged over valid pixels.
  Overall SSIM = mean over bands.
- SAM (3+ bands): mean over valid pixels of the angle in degrees between the prediction and
  reference spectra (pixels where either spectrum is all zeros are left out).
- ERGAS (3+ bands): 100 * ratio * sqrt(mean_b(RMSE_b^2 / mean_b(ref)^2)), with ratio the
  ratio of pixel sizes; 1 for the same-resolution translation geotranslate does.

Each figure is a :class:`Metric`; a :class:`MetricCollection` feeds them the same image pairs
(:func:`standard_metrics`: all of the above). Big rasters are fed tile by tile; each tile may
carry a margin of context pixels (``core``) so SSIM windows see across tile borders without
double counting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from skimage.metrics import structural_similarity

from geotranslate.stats import StatsAccumulator

#: side of skimage's default SSIM window; images smaller than this get no SSIM.
SSIM_WINDOW = 7
#: context pixels a tile needs around its core for SSIM to match an untiled computation.
SSIM_MARGIN = SSIM_WINDOW // 2
#: SAM and ERGAS need spectra: at least this many bands.
SPECTRAL_MIN_BANDS = 3
#: samples of the reference's pixels for its p2/p98 (the default data range), as for meta.json.
RANGE_SAMPLES = 200_000


def _as_range(data_range: float | Sequence[float], band_count: int) -> np.ndarray:
    ranges = np.broadcast_to(np.asarray(data_range, dtype=np.float64), (band_count,)).copy()
    if not np.all(np.isfinite(ranges)) or np.any(ranges <= 0):
        raise ValueError(f"data range must be positive and finite, got {ranges.tolist()}")
    return ranges


def _fill_invalid(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Band as float64 with invalid pixels set to the valid mean (neutral for SSIM windows)."""
    band = band.astype(np.float64)
    return np.where(valid, band, band[valid].mean())


def psnr(mse: float, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; +inf when the error is exactly zero."""
    if mse <= 0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def reference_data_range(stats: StatsAccumulator, where: str) -> tuple[list[float], str]:
    """The default data range R_b of each band, p98 - p2 of the reference's scored pixels
    (max - min, or 1, where that is 0), and the sentence that says so."""
    ranges = [s.p98 - s.p2 if s.p98 > s.p2 else s.max - s.min for s in stats.result()]
    ranges = [r if r > 0 else 1.0 for r in ranges]
    source = (f"p98 - p2 of the reference's valid pixels {where} "
              f"({'exact' if stats.exact else 'from a uniform sample'}; "
              "max - min, or 1, where that is 0)")
    return ranges, source


class Pixels:
    """One image pair as the metrics see it: the pixels that count, and the sums they share."""

    def __init__(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray,
                 core: tuple[slice, slice] | None = None):
        self.pred, self.ref = pred, ref
        #: valid in both and finite (SSIM's context); ``counted``: those inside ``core``
        self.valid = valid & np.isfinite(pred).all(axis=0) & np.isfinite(ref).all(axis=0)
        counted = np.zeros_like(self.valid)
        counted[core if core is not None else (slice(None), slice(None))] = True
        self.counted = counted & self.valid
        self.count = int(self.counted.sum())

    @cached_property
    def p(self) -> np.ndarray:
        """(bands, n) counted pixels of the prediction, float64."""
        return self.pred[:, self.counted].astype(np.float64)

    @cached_property
    def r(self) -> np.ndarray:
        """(bands, n) counted pixels of the reference, float64."""
        return self.ref[:, self.counted].astype(np.float64)

    @cached_property
    def error(self) -> np.ndarray:
        return self.p - self.r

    @cached_property
    def squared_error_sum(self) -> np.ndarray:
        return (self.error**2).sum(axis=1)

    @cached_property
    def reference_sum(self) -> np.ndarray:
        return self.r.sum(axis=1)


class Metric:
    """A figure pooled over image pairs (:class:`Pixels`), kept under :attr:`name`.

    :meth:`compute` gives ``{"bands": one figure per band}`` and/or ``{"overall": one
    figure}`` (a figure that cannot be computed is None); :meth:`extras` adds top-level
    entries (pixel counts) to the result.
    """

    name: str = ""

    def update(self, px: Pixels) -> None:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError

    def extras(self) -> dict:
        return {}


class _PerBandSum(Metric):
    """A per-band sum over the counted pixels and their number."""

    def __init__(self, band_count: int):
        self.sum, self.n = np.zeros(band_count), 0

    def add(self, px: Pixels, values: np.ndarray) -> None:
        self.sum += values
        self.n += px.count


class MAE(_PerBandSum):
    """Mean absolute error in data units; overall: the mean over bands."""

    name = "mae"

    def update(self, px: Pixels) -> None:
        self.add(px, np.abs(px.error).sum(axis=1))

    def compute(self) -> dict:
        mae = self.sum / self.n
        return {"bands": [float(v) for v in mae], "overall": float(mae.mean())}


class RMSE(_PerBandSum):
    """Root mean squared error in data units; overall pools the bands' squared errors."""

    name = "rmse"

    def update(self, px: Pixels) -> None:
        self.add(px, px.squared_error_sum)

    def compute(self) -> dict:
        mse = self.sum / self.n
        return {"bands": [float(np.sqrt(v)) for v in mse], "overall": float(np.sqrt(mse.mean()))}


class PSNR(_PerBandSum):
    """PSNR_b = 10 log10(R_b^2 / MSE_b); overall 10 log10(1 / mean_b(MSE_b / R_b^2))."""

    name = "psnr"

    def __init__(self, data_range: np.ndarray):
        super().__init__(len(data_range))
        self.data_range = data_range

    def update(self, px: Pixels) -> None:
        self.add(px, px.squared_error_sum)

    def compute(self) -> dict:
        mse = self.sum / self.n
        return {"bands": [psnr(float(m), float(r)) for m, r in zip(mse, self.data_range,
                                                                  strict=True)],
                "overall": psnr(float((mse / self.data_range**2).mean()), 1.0)}


class SSIM(Metric):
    """scikit-image's SSIM with ``data_range=R_b``, its map averaged over counted pixels;
    invalid pixels are set to the band's valid mean first. Overall: the mean over bands."""

    name = "ssim"

    def __init__(self, data_range: np.ndarray):
        self.data_range = data_range
        self.sum, self.n = np.zeros(len(data_range)), 0

    def update(self, px: Pixels) -> None:
        if min(px.valid.shape) < SSIM_WINDOW:
            return
        for b, data_range in enumerate(self.data_range):
            _, ssim_map = structural_similarity(
                _fill_invalid(px.pred[b], px.valid), _fill_invalid(px.ref[b], px.valid),
                data_range=float(data_range), win_size=SSIM_WINDOW, full=True)
            self.sum[b] += ssim_map[px.counted].sum()
        self.n += px.count

    def compute(self) -> dict:
        if not self.n:
            return {"bands": [None] * len(self.sum), "overall": None}
        ssim = self.sum / self.n
        return {"bands": [float(v) for v in ssim], "overall": float(ssim.mean())}

    def extras(self) -> dict:
        return {"ssim_pixels": self.n}


class DataRange(Metric):
    """R_b, reported beside the figures that use it."""

    name = "data_range"

    def __init__(self, data_range: np.ndarray):
        self.data_range = data_range

    def update(self, px: Pixels) -> None:
        pass

    def compute(self) -> dict:
        return {"bands": [float(r) for r in self.data_range]}


class ReferenceMean(_PerBandSum):
    """The reference's mean per band over the counted pixels."""

    name = "reference_mean"

    def update(self, px: Pixels) -> None:
        self.add(px, px.reference_sum)

    def compute(self) -> dict:
        return {"bands": [float(v) for v in self.sum / self.n]}


class SAM(Metric):
    """Spectral angle (3+ bands): mean over counted pixels of the angle in degrees between
    the two spectra, leaving out pixels where either is all zeros."""

    name = "sam_deg"

    def __init__(self):
        self.sum, self.n = 0.0, 0

    def update(self, px: Pixels) -> None:
        if px.p.shape[0] < SPECTRAL_MIN_BANDS:
            return
        p_norm, r_norm = np.linalg.norm(px.p, axis=0), np.linalg.norm(px.r, axis=0)
        ok = (p_norm > 0) & (r_norm > 0)
        p_unit, r_unit = px.p[:, ok] / p_norm[ok], px.r[:, ok] / r_norm[ok]
        # 2 atan2(|u - v|, |u + v|): exact 0 for equal spectra, unlike arccos of a dot product
        angle = 2.0 * np.arctan2(
            np.linalg.norm(p_unit - r_unit, axis=0), np.linalg.norm(p_unit + r_unit, axis=0)
        )
        self.sum += float(np.degrees(angle).sum())
        self.n += int(ok.sum())

    def compute(self) -> dict:
        return {"overall": self.sum / self.n if self.n else None}

    def extras(self) -> dict:
        return {"sam_pixels": self.n}


class ERGAS(Metric):
    """100 * ratio * sqrt(mean_b(RMSE_b^2 / mean_b(ref)^2)) for 3+ bands, ratio the ratio of
    pixel sizes (1 for the same-resolution translation geotranslate does)."""

    name = "ergas"

    def __init__(self, band_count: int, resolution_ratio: float = 1.0):
        self.band_count = band_count
        self.resolution_ratio = float(resolution_ratio)
        self.squared, self.reference, self.n = np.zeros(band_count), np.zeros(band_count), 0

    def update(self, px: Pixels) -> None:
        self.squared += px.squared_error_sum
        self.reference += px.reference_sum
        self.n += px.count

    def compute(self) -> dict:
        mse, ref_mean = self.squared / self.n, self.reference / self.n
        if self.band_count < SPECTRAL_MIN_BANDS or not np.all(ref_mean != 0):
            return {"overall": None}
        return {"overall": float(100.0 * self.resolution_ratio
                                 * np.sqrt((mse / ref_mean**2).mean()))}

    def extras(self) -> dict:
        return {"resolution_ratio": self.resolution_ratio}


class MetricCollection:
    """Named metrics fed the same image pairs; :meth:`append` adds one.

    :meth:`update` takes a (bands, rows, cols) prediction and reference with a (rows, cols)
    validity mask (a pixel counts where it is valid in both, and finite); only pixels inside
    ``core`` count, the rest is SSIM context. :meth:`compute` gives each band's figures, the
    overall ones and the pixel counts (``valid_pixels`` and the metrics' extras).
    """

    def __init__(self, band_count: int, metrics: Sequence[Metric] = ()):
        self.band_count = band_count
        self.metrics = list(metrics)
        self.count = 0

    def append(self, metric: Metric) -> None:
        self.metrics.append(metric)

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray,
               core: tuple[slice, slice] | None = None) -> None:
        if pred.shape != ref.shape or pred.shape[0] != self.band_count:
            raise ValueError(
                f"shapes differ: prediction {pred.shape}, reference {ref.shape}, "
                f"expected {self.band_count} bands"
            )
        px = Pixels(pred, ref, valid, core)
        if px.count == 0:
            return
        self.count += px.count
        for metric in self.metrics:
            metric.update(px)

    def compute(self, band_names: Sequence[str | None] | None = None) -> dict:
        if self.count == 0:
            raise ValueError("no pixel is valid in both images")
        results = [(m.name, m.compute()) for m in self.metrics]
        names = list(band_names or [None] * self.band_count)
        out = {"valid_pixels": self.count}
        for metric in self.metrics:
            out.update(metric.extras())
        out["bands"] = [{"band": b + 1, "name": names[b],
                         **{name: r["bands"][b] for name, r in results if "bands" in r}}
                        for b in range(self.band_count)]
        out["overall"] = {name: r["overall"] for name, r in results if "overall" in r}
        return out


def standard_metrics(band_count: int, data_range: float | Sequence[float], *,
                     resolution_ratio: float = 1.0) -> MetricCollection:
    """MAE, RMSE, PSNR, SSIM, R_b, the reference mean, SAM and ERGAS: what ``evaluate``
    reports and the training validation logs."""
    ranges = _as_range(data_range, band_count)
    return MetricCollection(band_count, [
        MAE(band_count), RMSE(band_count), PSNR(ranges), SSIM(ranges), DataRange(ranges),
        ReferenceMean(band_count), SAM(), ERGAS(band_count, resolution_ratio)])


def flat_image(levels: Sequence[float], shape: tuple[int, ...]) -> np.ndarray:
    """A (bands, rows, cols) image holding one value per band: the trivial baseline a model
    must beat (``levels`` = the target's mean), scored with the same metrics as the model."""
    levels = np.asarray(levels, dtype=np.float64).reshape(-1, 1, 1)
    return np.broadcast_to(levels, shape)


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    valid: np.ndarray | None,
    data_range: float | Sequence[float],
    *,
    band_names: Sequence[str | None] | None = None,
    resolution_ratio: float = 1.0,
) -> dict:
    """All metrics between two (bands, rows, cols) arrays over pixels valid in both.

    ``valid`` (rows, cols) marks usable pixels (None: all; NaNs are always excluded);
    ``data_range`` is one value or one per band, used by PSNR and SSIM.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.ndim == 2:
        pred, ref = pred[None], ref[None]
    if valid is None:
        valid = np.ones(pred.shape[1:], dtype=bool)
    metrics = standard_metrics(pred.shape[0], data_range, resolution_ratio=resolution_ratio)
    metrics.update(pred, ref, np.asarray(valid, dtype=bool))
    return metrics.compute(band_names)


def not_above_flat(model: dict, flat: dict) -> list[str]:
    """The figures, of PSNR and SSIM, in which ``model`` is no better than the flat image
    ``flat`` (dicts with ``psnr`` and ``ssim`` keys; a figure missing or None in either is
    not compared; NaN counts as no better). A translation can beat the flat image's PSNR by
    getting the tone right and still lose on SSIM by painting texture where there is none."""
    worse = []
    for name in ("psnr", "ssim"):
        ours, theirs = model.get(name), flat.get(name)
        if ours is None or theirs is None:
            continue
        if not float(ours) > float(theirs):
            worse.append(name.upper())
    return worse
