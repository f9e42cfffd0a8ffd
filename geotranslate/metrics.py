"""Image-quality metrics between a prediction and a reference, over valid pixels only.

Used by ``geotranslate evaluate`` (chips and rasters) and by the trainer's validation, so the
figures mean the same everywhere. Arrays are (bands, rows, cols) in data units with one
(rows, cols) validity mask: a pixel counts only where it is valid in both images.

Definitions (per band b over the n valid pixels; "overall" pools the bands):

- MAE_b, RMSE_b in data units; overall MAE/RMSE pool all bands' errors (same units only if
  the bands share units, as reflectances or dB do).
- PSNR_b = 10 log10(R_b^2 / MSE_b) with R_b the data range (given by the caller and reported);
  overall PSNR = 10 log10(1 / mean_b(MSE_b / R_b^2)). Identical images give +inf.
- SSIM_b: scikit-image's ``structural_similarity`` (7x7 uniform window, K1=0.01, K2=0.03,
  ``data_range=R_b``) computed with invalid pixels set to the band's valid mean (so nodata
  values do not leak into their neighbours' windows), its SSIM map averaged over valid pixels.
  Overall SSIM = mean over bands.
- SAM (3+ bands): mean over valid pixels of the angle in degrees between the prediction and
  reference spectra (pixels where either spectrum is all zeros are left out).
- ERGAS (3+ bands): 100 * ratio * sqrt(mean_b(RMSE_b^2 / mean_b(ref)^2)), with ratio the
  ratio of pixel sizes; 1 for the same-resolution translation geotranslate does.

Big rasters are fed tile by tile to :class:`MetricsAccumulator`; each tile may carry a margin
of context pixels (``core``) so SSIM windows see across tile borders without double counting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.metrics import structural_similarity

#: side of skimage's default SSIM window; images smaller than this get no SSIM.
SSIM_WINDOW = 7
#: context pixels a tile needs around its core for SSIM to match an untiled computation.
SSIM_MARGIN = SSIM_WINDOW // 2
#: SAM and ERGAS need spectra: at least this many bands.
SPECTRAL_MIN_BANDS = 3


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


class MetricsAccumulator:
    """Pools error sums, SSIM map sums and spectral angles over many chips or tiles."""

    def __init__(
        self,
        band_count: int,
        data_range: float | Sequence[float],
        *,
        resolution_ratio: float = 1.0,
    ):
        self.band_count = band_count
        self.data_range = _as_range(data_range, band_count)
        self.resolution_ratio = float(resolution_ratio)
        self.count = 0
        self._abs = np.zeros(band_count)
        self._sq = np.zeros(band_count)
        self._ref_sum = np.zeros(band_count)
        self._ssim_sum = np.zeros(band_count)
        self._ssim_count = 0
        self._sam_sum = 0.0
        self._sam_count = 0

    def add(
        self,
        pred: np.ndarray,
        ref: np.ndarray,
        valid: np.ndarray,
        core: tuple[slice, slice] | None = None,
    ) -> None:
        """Add one image pair; only pixels inside ``core`` count, the rest is SSIM context."""
        if pred.shape != ref.shape or pred.shape[0] != self.band_count:
            raise ValueError(
                f"shapes differ: prediction {pred.shape}, reference {ref.shape}, "
                f"expected {self.band_count} bands"
            )
        valid = valid & np.isfinite(pred).all(axis=0) & np.isfinite(ref).all(axis=0)
        counted = np.zeros_like(valid)
        counted[core if core is not None else (slice(None), slice(None))] = True
        counted &= valid
        n = int(counted.sum())
        if n == 0:
            return
        p = pred[:, counted].astype(np.float64)
        r = ref[:, counted].astype(np.float64)
        err = p - r
        self.count += n
        self._abs += np.abs(err).sum(axis=1)
        self._sq += (err**2).sum(axis=1)
        self._ref_sum += r.sum(axis=1)
        if min(valid.shape) >= SSIM_WINDOW:
            for b in range(self.band_count):
                _, ssim_map = structural_similarity(
                    _fill_invalid(pred[b], valid),
                    _fill_invalid(ref[b], valid),
                    data_range=float(self.data_range[b]),
                    win_size=SSIM_WINDOW,
                    full=True,
                )
                self._ssim_sum[b] += ssim_map[counted].sum()
            self._ssim_count += n
        if self.band_count >= SPECTRAL_MIN_BANDS:
            p_norm, r_norm = np.linalg.norm(p, axis=0), np.linalg.norm(r, axis=0)
            ok = (p_norm > 0) & (r_norm > 0)
            p_unit, r_unit = p[:, ok] / p_norm[ok], r[:, ok] / r_norm[ok]
            # 2 atan2(|u - v|, |u + v|): exact 0 for equal spectra, unlike arccos of a dot product
            angle = 2.0 * np.arctan2(
                np.linalg.norm(p_unit - r_unit, axis=0), np.linalg.norm(p_unit + r_unit, axis=0)
            )
            self._sam_sum += float(np.degrees(angle).sum())
            self._sam_count += int(ok.sum())

    def result(self, band_names: Sequence[str | None] | None = None) -> dict:
        """Per-band and overall figures (see the module docstring for the definitions)."""
        if self.count == 0:
            raise ValueError("no pixel is valid in both images")
        n = self.count
        mae = self._abs / n
        mse = self._sq / n
        ref_mean = self._ref_sum / n
        ssim = self._ssim_sum / self._ssim_count if self._ssim_count else None
        names = list(band_names or [None] * self.band_count)
        bands = [
            {
                "band": b + 1,
                "name": names[b],
                "mae": float(mae[b]),
                "rmse": float(np.sqrt(mse[b])),
                "psnr": psnr(float(mse[b]), float(self.data_range[b])),
                "ssim": None if ssim is None else float(ssim[b]),
                "data_range": float(self.data_range[b]),
                "reference_mean": float(ref_mean[b]),
            }
            for b in range(self.band_count)
        ]
        overall = {
            "mae": float(mae.mean()),
            "rmse": float(np.sqrt(mse.mean())),
            "psnr": psnr(float((mse / self.data_range**2).mean()), 1.0),
            "ssim": None if ssim is None else float(ssim.mean()),
            "sam_deg": None,
            "ergas": None,
        }
        if self.band_count >= SPECTRAL_MIN_BANDS:
            if self._sam_count:
                overall["sam_deg"] = self._sam_sum / self._sam_count
            if np.all(ref_mean != 0):
                overall["ergas"] = float(
                    100.0 * self.resolution_ratio * np.sqrt((mse / ref_mean**2).mean())
                )
        return {
            "valid_pixels": n,
            "ssim_pixels": self._ssim_count,
            "sam_pixels": self._sam_count,
            "resolution_ratio": self.resolution_ratio,
            "bands": bands,
            "overall": overall,
        }


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
    acc = MetricsAccumulator(pred.shape[0], data_range, resolution_ratio=resolution_ratio)
    acc.add(pred, ref, np.asarray(valid, dtype=bool))
    return acc.result(band_names)


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
