"""Metrics against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geotranslate.metrics import SSIM_MARGIN, Metric, compute_metrics, standard_metrics


def _image(bands: int = 3, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(100, 1000, size=(bands, size, size))


def test_identical_images_give_perfect_scores():
    ref = _image()
    m = compute_metrics(ref.copy(), ref, None, data_range=900.0)
    for band in m["bands"]:
        assert band["mae"] == 0 and band["rmse"] == 0
        assert band["psnr"] == math.inf
        assert band["ssim"] == pytest.approx(1.0, abs=1e-9)
    overall = m["overall"]
    assert overall["psnr"] == math.inf
    assert overall["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert overall["sam_deg"] == 0.0
    assert overall["ergas"] == 0.0
    assert m["valid_pixels"] == 24 * 24


def test_known_shift_gives_known_errors_and_psnr():
    ref = _image(bands=2)
    m = compute_metrics(ref + 3.0, ref, None, data_range=[300.0, 600.0])
    for band, data_range in zip(m["bands"], (300.0, 600.0), strict=True):
        assert band["mae"] == pytest.approx(3.0)
        assert band["rmse"] == pytest.approx(3.0)
        assert band["psnr"] == pytest.approx(20 * math.log10(data_range / 3.0))
    # overall PSNR pools MSE / range^2 over bands: 10 log10(1 / mean(9/300^2, 9/600^2))
    expected = 10 * math.log10(1 / np.mean([9 / 300**2, 9 / 600**2]))
    assert m["overall"]["psnr"] == pytest.approx(expected)
    assert m["overall"]["sam_deg"] is None and m["overall"]["ergas"] is None  # < 3 bands


def test_mixed_errors_hand_computed():
    ref = np.zeros((1, 2, 2))
    pred = np.array([[[1.0, -2.0], [3.0, -4.0]]])
    m = compute_metrics(pred, ref, None, data_range=10.0)
    band = m["bands"][0]
    assert band["mae"] == pytest.approx(2.5)  # (1 + 2 + 3 + 4) / 4
    assert band["rmse"] == pytest.approx(math.sqrt(30 / 4))
    assert band["psnr"] == pytest.approx(10 * math.log10(100 / 7.5))
    assert band["ssim"] is None  # 2 x 2 px is smaller than the 7 x 7 SSIM window
    assert m["ssim_pixels"] == 0


def test_ssim_of_constant_images_matches_the_formula():
    # with zero variance SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    pred, ref = np.full((1, 16, 16), 3.0), np.full((1, 16, 16), 5.0)
    c1 = (0.01 * 10.0) ** 2
    m = compute_metrics(pred, ref, None, data_range=10.0)
    assert m["bands"][0]["ssim"] == pytest.approx((2 * 3 * 5 + c1) / (9 + 25 + c1))


def test_sam_and_ergas_hand_computed():
    # pixel 1: (1,0,0) vs (1,1,0) -> 45 deg; pixel 2: (0,0,2) vs (0,0,5) -> 0 deg
    pred = np.array([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 2.0]]])
    ref = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 5.0]]])
    m = compute_metrics(pred, ref, None, data_range=1.0)
    assert m["overall"]["sam_deg"] == pytest.approx(22.5)
    # ERGAS: constant references 10, 20, 40 with errors 1, 2, 4 -> RMSE/mean = 0.1 per band
    ref = np.stack([np.full((8, 8), v) for v in (10.0, 20.0, 40.0)])
    pred = ref + np.array([1.0, 2.0, 4.0])[:, None, None]
    m = compute_metrics(pred, ref, None, data_range=50.0)
    assert m["overall"]["ergas"] == pytest.approx(100 * math.sqrt(0.01))
    assert m["overall"]["sam_deg"] == pytest.approx(0.0, abs=1e-9)  # pred is 1.1 x ref: same angle
    m = compute_metrics(pred, ref, None, data_range=50.0, resolution_ratio=0.5)
    assert m["overall"]["ergas"] == pytest.approx(50 * math.sqrt(0.01))


def test_invalid_pixels_do_not_count():
    ref = _image()
    pred = ref + 2.0
    valid = np.ones(ref.shape[1:], dtype=bool)
    valid[5:12, 3:20] = False
    garbage_a, garbage_b = pred.copy(), pred.copy()
    garbage_a[:, ~valid] = 1e9
    garbage_b[:, ~valid] = -7.0
    m_a = compute_metrics(garbage_a, ref, valid, data_range=900.0)
    m_b = compute_metrics(garbage_b, ref, valid, data_range=900.0)
    assert m_a["valid_pixels"] == valid.sum()
    for band in m_a["bands"]:
        assert band["mae"] == pytest.approx(2.0)
        assert band["rmse"] == pytest.approx(2.0)
        assert 0.9 < band["ssim"] < 1.0
    # SSIM sees band means in place of invalid pixels, so their values do not leak into it
    assert [b["ssim"] for b in m_a["bands"]] == pytest.approx([b["ssim"] for b in m_b["bands"]])
    # NaN is never valid, even where the mask says so
    garbage_b[1, 0, 0] = np.nan
    m_nan = compute_metrics(garbage_b, ref, valid, data_range=900.0)
    assert m_nan["valid_pixels"] == valid.sum() - 1
    assert m_nan["bands"][0]["mae"] == pytest.approx(2.0)


def test_tiles_with_margin_match_whole_image():
    ref = _image(size=40, seed=1)
    pred = ref + np.random.default_rng(2).normal(0, 30, size=ref.shape)
    whole = compute_metrics(pred, ref, None, data_range=900.0)
    acc = standard_metrics(3, 900.0)
    tile, m = 16, SSIM_MARGIN
    for r in range(0, 40, tile):
        for c in range(0, 40, tile):
            r0, c0 = max(0, r - m), max(0, c - m)
            r1, c1 = min(40, r + tile + m), min(40, c + tile + m)
            th, tw = min(tile, 40 - r), min(tile, 40 - c)
            core = (slice(r - r0, r - r0 + th), slice(c - c0, c - c0 + tw))
            valid = np.ones((r1 - r0, c1 - c0), dtype=bool)
            acc.update(pred[:, r0:r1, c0:c1], ref[:, r0:r1, c0:c1], valid, core)
    tiled = acc.compute()
    assert tiled["valid_pixels"] == 1600
    for key in ("mae", "rmse", "psnr", "ssim", "sam_deg", "ergas"):
        assert tiled["overall"][key] == pytest.approx(whole["overall"][key], rel=1e-9)


def test_bad_inputs():
    ref = _image()
    with pytest.raises(ValueError, match="data range"):
        compute_metrics(ref, ref, None, data_range=0.0)
    with pytest.raises(ValueError, match="no pixel is valid"):
        compute_metrics(ref, ref, np.zeros(ref.shape[1:], dtype=bool), data_range=1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        compute_metrics(ref, ref[:2], None, data_range=1.0)


def test_a_metric_added_to_the_collection_is_reported_beside_the_others():
    class Bias(Metric):  # mean signed error, per band and over bands
        name = "bias"

        def __init__(self):
            self.sum, self.n = np.zeros(2), 0

        def update(self, px):
            self.sum += px.error.sum(axis=1)
            self.n += px.count

        def compute(self):
            bias = self.sum / self.n
            return {"bands": [float(v) for v in bias], "overall": float(bias.mean())}

    ref = _image(bands=2)
    valid = np.ones(ref.shape[1:], dtype=bool)
    valid[:4] = False
    metrics = standard_metrics(2, 900.0)
    metrics.append(Bias())
    metrics.update(ref + np.array([1.0, -3.0])[:, None, None], ref, valid)
    m = metrics.compute()
    assert [b["bias"] for b in m["bands"]] == pytest.approx([1.0, -3.0])
    assert m["overall"]["bias"] == pytest.approx(-1.0)
    assert [b["mae"] for b in m["bands"]] == pytest.approx([1.0, 3.0])
    assert m["valid_pixels"] == valid.sum()
