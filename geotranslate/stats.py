"""Band statistics over valid pixels, and the normalization that training and prediction share.

Statistics are gathered in one streaming pass (window by window): min, max, mean and std are
exact; the 0.1st, 2nd, 98th and 99.9th percentiles are exact while the valid pixels fit in a
bounded sample and come from a uniform random sample of that size otherwise (``method`` says
which). meta.json files written before the 0.1/99.9 percentiles existed still load: those
fields are then None.

:class:`Normalizer` maps data units to the network's [-1, 1] range and back. It is built from
the statistics in ``meta.json`` at training time and stored in ``model.json``, so prediction
normalizes exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

NORM_METHODS = ("robust", "percentile", "minmax", "meanstd")

#: the default: min/max, unless a tail is a far outlier (see :func:`robust_range`).
DEFAULT_NORM_METHOD = "robust"

#: in "robust" mode a tail beyond the 0.1 (99.9) percentile counts as outliers when it is
#: longer than this fraction of the 0.1-99.9 percentile range. Real imagery and terrain have
#: tails of 0-0.75 of that range (Mt Hood DEM: 0.12; Sentinel-2 bright targets: up to 0.73);
#: undeclared fill values and sensor spikes are many times longer.
ROBUST_TAIL = 1.0

#: valid pixels kept per band for percentiles; above it percentiles come from a sample.
DEFAULT_MAX_SAMPLES = 1_000_000

#: in "meanstd" mode, this many standard deviations map to the ends of [-1, 1].
MEANSTD_SIGMAS = 3.0


@dataclass(frozen=True)
class BandStats:
    """Statistics of one band over its valid pixels."""

    min: float
    max: float
    mean: float
    std: float
    p2: float
    p98: float
    count: int
    p0_1: float | None = None  # absent from meta.json files of earlier versions
    p99_9: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BandStats:
        optional = {"p0_1", "p99_9"}
        return cls(**{k: d[k] if k not in optional else d.get(k)
                      for k in cls.__dataclass_fields__})


class StatsAccumulator:
    """Streaming per-band statistics; feed it windows with :meth:`add`, then call :meth:`result`.

    Percentiles use bottom-k sampling (each valid pixel gets a random key, the ``max_samples``
    smallest keys are kept), which gives a uniform sample whatever the order of the windows.
    """

    def __init__(self, band_count: int, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0):
        self.band_count = band_count
        self.max_samples = max_samples
        self._rng = np.random.default_rng(seed)
        self._count = 0
        self._sumsq_dev = np.zeros(band_count, dtype=np.float64)  # Chan et al. parallel update
        self._mean = np.zeros(band_count, dtype=np.float64)
        self._min = np.full(band_count, np.inf)
        self._max = np.full(band_count, -np.inf)
        self._keys = np.empty(0, dtype=np.float64)
        self._samples = np.empty((band_count, 0), dtype=np.float64)

    @property
    def count(self) -> int:
        return self._count

    def add(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of a (bands, rows, cols) window."""
        if data.shape[0] != self.band_count:
            raise ValueError(f"expected {self.band_count} bands, got {data.shape[0]}")
        values = data[:, valid].astype(np.float64)  # (bands, n)
        n = values.shape[1]
        if n == 0:
            return
        mean_new = values.mean(axis=1)
        m2_new = ((values - mean_new[:, None]) ** 2).sum(axis=1)
        total = self._count + n
        delta = mean_new - self._mean
        self._sumsq_dev += m2_new + delta**2 * self._count * n / total
        self._mean += delta * n / total
        self._count = total
        self._min = np.minimum(self._min, values.min(axis=1))
        self._max = np.maximum(self._max, values.max(axis=1))
        keys = self._rng.random(n)
        if n > self.max_samples:
            keep = np.argpartition(keys, self.max_samples - 1)[: self.max_samples]
            keys, values = keys[keep], values[:, keep]
        self._keys = np.concatenate([self._keys, keys])
        self._samples = np.concatenate([self._samples, values], axis=1)
        if self._keys.size > self.max_samples:
            keep = np.argpartition(self._keys, self.max_samples - 1)[: self.max_samples]
            self._keys, self._samples = self._keys[keep], self._samples[:, keep]

    @property
    def exact(self) -> bool:
        """Whether every valid pixel is in the sample, so the percentiles are exact."""
        return self._count <= self.max_samples

    def result(self) -> list[BandStats]:
        if self._count == 0:
            raise ValueError("no valid pixels")
        std = np.sqrt(self._sumsq_dev / self._count)
        p0_1, p2, p98, p99_9 = np.percentile(self._samples, [0.1, 2, 98, 99.9], axis=1)
        return [
            BandStats(
                min=float(self._min[i]),
                max=float(self._max[i]),
                mean=float(self._mean[i]),
                std=float(std[i]),
                p2=float(p2[i]),
                p98=float(p98[i]),
                count=int(self._count),
                p0_1=float(p0_1[i]),
                p99_9=float(p99_9[i]),
            )
            for i in range(self.band_count)
        ]

    def to_dict(self) -> dict:
        """The statistics as stored in meta.json, with how the percentiles were computed."""
        return {
            "method": "exact" if self.exact else "sample",
            "sample_size": int(min(self._count, self.max_samples)),
            "valid_pixels": int(self._count),
            "bands": [s.to_dict() for s in self.result()],
        }


def stats_from_dict(d: dict) -> list[BandStats]:
    """Per-band statistics from the ``stats`` entry of a meta.json domain."""
    return [BandStats.from_dict(b) for b in d["bands"]]


def robust_range(s: BandStats, tail: float = ROBUST_TAIL) -> tuple[float, float]:
    """The data range a band is scaled over: its min and max, except where a tail is a far
    outlier.

    A tail (min to the 0.1 percentile, 99.9 percentile to max) longer than ``tail`` times the
    0.1-99.9 percentile range is cut at that percentile; a genuine tail (a summit, a bright
    roof) is kept, so the mapping sees every value it has to reproduce. Statistics from
    meta.json files of earlier versions have no 0.1/99.9 percentiles: the 2/98 percentiles
    stand in for them.
    """
    q_low = s.p0_1 if s.p0_1 is not None else s.p2
    q_high = s.p99_9 if s.p99_9 is not None else s.p98
    spread = q_high - q_low
    if spread <= 0:  # (nearly) constant band: nothing to call an outlier
        return s.min, s.max
    low = q_low if q_low - s.min > tail * spread else s.min
    high = q_high if s.max - q_high > tail * spread else s.max
    return low, high


@dataclass(frozen=True)
class Normalizer:
    """Affine map between data units and the network's [-1, 1], per band.

    ``to_model`` maps ``low`` to -1 and ``high`` to +1 and clips; ``low``/``high`` are
    :func:`robust_range` (robust, the default), the 2/98 percentiles (percentile), min/max
    (minmax) or ``mean ± 3 std`` (meanstd); invalid pixels become 0.
    ``from_model`` is its inverse (up to the clipping).
    """

    method: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_stats(cls, stats: Sequence[BandStats],
                   method: str = DEFAULT_NORM_METHOD) -> Normalizer:
        if method not in NORM_METHODS:
            raise ValueError(f"unknown normalization {method!r}; choose from {NORM_METHODS}")
        if method == "robust":
            low, high = (list(v) for v in zip(*(robust_range(s) for s in stats), strict=True))
        elif method == "percentile":
            low = [s.p2 for s in stats]
            high = [s.p98 for s in stats]
        elif method == "minmax":
            low = [s.min for s in stats]
            high = [s.max for s in stats]
        else:
            low = [s.mean - MEANSTD_SIGMAS * s.std for s in stats]
            high = [s.mean + MEANSTD_SIGMAS * s.std for s in stats]
        # a constant band would divide by zero: give it a unit range around its value
        high = [h if h > lo else lo + 1.0 for lo, h in zip(low, high, strict=True)]
        return cls(method, tuple(float(v) for v in low), tuple(float(v) for v in high))

    @property
    def band_count(self) -> int:
        return len(self.low)

    def _affine(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.band_count,) + (1,) * (ndim - 1)
        low = np.asarray(self.low, dtype=np.float64).reshape(shape)
        high = np.asarray(self.high, dtype=np.float64).reshape(shape)
        return low, high

    def to_model(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(bands, ...) data in its own units -> float32 in [-1, 1]; invalid pixels -> 0."""
        if data.shape[0] != self.band_count:
            raise ValueError(f"expected {self.band_count} bands, got {data.shape[0]}")
        low, high = self._affine(data.ndim)
        work = _work_dtype(data.dtype)
        x = data.astype(work)
        x -= low.astype(work)
        x *= (2.0 / (high - low)).astype(work)
        x -= 1.0
        np.clip(x, -1.0, 1.0, out=x)
        if np.issubdtype(data.dtype, np.floating):
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if valid is not None:
            x *= valid
        return x.astype(np.float32, copy=False)

    def from_model(self, x: np.ndarray, work: type = np.float64) -> np.ndarray:
        """(bands, ...) network output in [-1, 1] -> data units, as ``work`` floats."""
        low, high = self._affine(x.ndim)
        y = x.astype(work)  # a copy, then in place
        y += 1.0
        y *= ((high - low) / 2.0).astype(work)
        y += low.astype(work)
        return y

    def to_data(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """(bands, ...) network output -> ``dtype`` in data units (integers rounded, clipped)."""
        return cast_to_dtype(self.from_model(x, _work_dtype(np.dtype(dtype))), dtype)

    def to_dict(self) -> dict:
        return {"method": self.method, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        low = tuple(float(v) for v in d["low"])
        return cls(d["method"], low, tuple(float(v) for v in d["high"]))


def cast_to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Data-unit floats -> ``dtype``: integers are rounded and clipped to the dtype's range."""
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        rounded = np.rint(values)
        np.clip(rounded, info.min, info.max, out=rounded)
        return rounded.astype(np_dtype)
    return values.astype(np_dtype, copy=False)


def _work_dtype(dtype: np.dtype) -> type:
    """float32 arithmetic where it is exact enough (8/16-bit and float32 data); wider types
    keep float64 so large offsets do not eat the precision."""
    return np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64
