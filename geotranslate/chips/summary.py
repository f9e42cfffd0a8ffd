"""What an export run did: counts, warnings and the paragraph the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geotranslate.chips.meta import DOMAINS, SPLITS


@dataclass
class ExportSummary:
    """What one export run did; ``str()`` is the paragraph the CLI prints."""

    out_dir: str
    pairing: str
    tile_size: int
    stride: int
    written: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {d: 0 for d in DOMAINS} for s in SPLITS}
    )
    skipped_nodata: int = 0
    skipped_aoi: int = 0
    skipped_exclude: int = 0
    dropped_buffer: int = 0
    already_present: int = 0
    constant: dict[str, int] = field(default_factory=dict)  # domain -> chips of one value
    constant_example: str = ""  # "NAME (value V)" of the first one
    val_note: str = ""  # why the validation fraction could not be met, if it was not
    padded_sources: list[str] = field(default_factory=list)
    stats_methods: dict[str, str] = field(default_factory=dict)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def chips_written(self) -> int:
        return sum(sum(d.values()) for d in self.written.values())

    def __str__(self) -> str:
        per_split = "; ".join(
            f"{split}: " + ", ".join(f"{d} {n}" for d, n in counts.items() if n or split == "train")
            for split, counts in self.written.items()
            if any(counts.values()) or split == "train"
        )
        text = (
            f"Exported {self.chips_written} chips into {self.out_dir} in {self.seconds:.1f} s "
            f"({self.pairing}, {self.tile_size} px tiles, stride {self.stride}) — "
            f"{per_split}. "
            f"Skipped {self.skipped_nodata} windows over the invalid-pixel limit, "
            f"{self.skipped_aoi} outside the AOI, {self.skipped_exclude} excluded, "
            f"{self.dropped_buffer} dropped as buffer around validation blocks; "
            f"{self.already_present} already present."
        )
        if self.padded_sources:
            text += (
                f" Padded with nodata to one tile (smaller than {self.tile_size} px): "
                + ", ".join(self.padded_sources)
                + "."
            )
        if self.val_note:
            text += f" Warning: {self.val_note}."
        if self.constant:
            counts = ", ".join(f"{n} {d} chips" for d, n in sorted(self.constant.items()))
            text += (
                f" Warning: {counts} hold a single value in every band "
                f"(e.g. {self.constant_example}): if that value is a fill, declare it as the "
                "source's nodata (gdal_edit.py -a_nodata VALUE) and export again."
            )
        if self.stats_methods:
            text += " Statistics: " + ", ".join(
                f"{d} {m}" for d, m in sorted(self.stats_methods.items())
            )
            text += "."
        if self.totals:
            text += " Now in the directory: " + "; ".join(
                f"{s} " + ", ".join(f"{d} {n}" for d, n in c.items())
                for s, c in self.totals.items()
                if any(c.values())
            )
            text += "."
        return text


def count_if_constant(summary: ExportSummary, domain: str, name: str, data: np.ndarray,
                       valid: np.ndarray) -> None:
    """Count a chip whose valid pixels hold one value per band: usually an undeclared fill
    (a black collar without nodata), which a GAN learns nothing from."""
    if not valid.any():
        return
    values = data.reshape(len(data), -1) if valid.all() else data[:, valid]
    low, high = values.min(axis=1), values.max(axis=1)
    if not (low == high).all():
        return
    summary.constant[domain] = summary.constant.get(domain, 0) + 1
    if not summary.constant_example:
        value = low[0].item()
        summary.constant_example = f"{name} in {domain}, value {value:g}"


def zero_chips_message(paths, summary: ExportSummary, max_nodata: float) -> str:
    names = ", ".join(str(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
    reasons = []
    if summary.skipped_nodata:
        reasons.append(
            f"{summary.skipped_nodata} windows had more than {max_nodata:.0%} invalid pixels "
            "(nodata, NaN, alpha = 0" + (", padding" if summary.padded_sources else "") + ")"
        )
    if summary.skipped_aoi:
        reasons.append(f"{summary.skipped_aoi} lay outside the AOI")
    if summary.skipped_exclude:
        reasons.append(f"{summary.skipped_exclude} were excluded")
    if summary.dropped_buffer:
        reasons.append(f"{summary.dropped_buffer} were dropped as validation buffer")
    hint = " (try a smaller --tile-size or a higher --max-nodata)" if summary.padded_sources else ""
    return f"{names}: zero chips exported, nothing written: " + "; ".join(reasons) + hint

