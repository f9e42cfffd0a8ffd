"""The report of ``geotranslate evaluate``: its figures and settings, as a terminal table and
as JSON.

JSON has no infinity, so an infinite PSNR (identical images) is written as the string ``"inf"``
(``float("inf")`` parses it back) and a missing figure as null.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from geotranslate.files import atomic_path
from geotranslate.metrics import not_above_flat


@dataclass
class EvaluationReport:
    """Metrics (see :mod:`geotranslate.metrics`) with the settings that produced them."""

    mode: str  # "chips" or "rasters"
    metrics: dict
    settings: dict
    notes: list[str] = field(default_factory=list)
    #: the flat image: {"levels": per-band value, "levels_source": text, "metrics": as above}
    baseline: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready: +inf -> "inf", NaN -> null."""
        return _json_safe(
            {"mode": self.mode, "settings": self.settings, "metrics": self.metrics,
             "baseline": self.baseline, "notes": self.notes}
        )

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the report atomically (a killed run leaves no truncated JSON)."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def format_table(self) -> str:
        """A readable terminal table: one row per band, an overall row, then the settings."""
        m = self.metrics
        header = f"{'band':<16}{'MAE':>12}{'RMSE':>12}{'PSNR dB':>10}{'SSIM':>8}{'range':>12}"
        lines = [header, "-" * len(header)]
        for b in m["bands"]:
            label = f"{b['band']} {b['name']}" if b["name"] else str(b["band"])
            lines.append(
                f"{label[:15]:<16}{_fmt(b['mae']):>12}{_fmt(b['rmse']):>12}"
                f"{_fmt(b['psnr'], 2):>10}{_fmt(b['ssim'], 4):>8}{_fmt(b['data_range']):>12}"
            )
        o = m["overall"]
        lines.append("-" * len(header))
        lines.append(
            f"{'overall':<16}{_fmt(o['mae']):>12}{_fmt(o['rmse']):>12}"
            f"{_fmt(o['psnr'], 2):>10}{_fmt(o['ssim'], 4):>8}"
        )
        if self.baseline is not None:
            f = self.baseline["metrics"]["overall"]
            lines.append(
                f"{'flat image':<16}{_fmt(f['mae']):>12}{_fmt(f['rmse']):>12}"
                f"{_fmt(f['psnr'], 2):>10}{_fmt(f['ssim'], 4):>8}"
            )
        if len(m["bands"]) >= 3:
            lines.append(
                f"SAM {_fmt(o['sam_deg'], 3)} deg   ERGAS {_fmt(o['ergas'], 3)} "
                f"(resolution ratio {m['resolution_ratio']:g})"
            )
        lines.append(f"valid pixels: {m['valid_pixels']}")
        lines.append(f"data range (PSNR, SSIM): {self.settings['data_range_source']}")
        if self.baseline is not None:
            levels = ", ".join(_fmt(v) for v in self.baseline["levels"])
            lines.append(f"flat image: each band at {self.baseline['levels_source']} ({levels})")
            worse = not_above_flat(o, self.baseline["metrics"]["overall"])
            if worse:
                lines.append("the translation is no better than the flat image "
                             f"({', '.join(worse)})")
        lines.extend(self.notes)
        return "\n".join(lines)


def _fmt(value: float | None, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.5g}"


def _json_safe(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
