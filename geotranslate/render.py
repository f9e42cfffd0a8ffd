"""Every picture geotranslate makes: training previews, the demo figure and ``preview``.

A raster of any band count and dtype becomes an 8-bit image by a per-band percentile
stretch; three bands are chosen for RGB from the band descriptions when they name colours
(``--rgb-bands`` overrides), otherwise the first band is shown in gray. Invalid pixels are
transparent. Panels are laid side by side with a title above each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geotranslate.raster.io import atomic_path

_COLOUR_NAMES = {
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "blue": ("blue", "b", "b2", "b02", "sr_b2"),
}
TITLE_HEIGHT = 18
GAP = 4


@dataclass
class Panel:
    """One image to show: (bands, rows, cols) data in any units, with validity and a title."""

    title: str
    data: np.ndarray
    valid: np.ndarray | None = None
    band_descriptions: Sequence[str | None] | None = None
    rgb_bands: Sequence[int] | None = None  # 1-based, overrides the descriptions


def choose_display_bands(
    band_count: int,
    descriptions: Sequence[str | None] | None = None,
    rgb_bands: Sequence[int] | None = None,
) -> list[int]:
    """0-based indexes of the bands to show: three for RGB or one for gray."""
    if rgb_bands:
        chosen = [int(b) - 1 for b in rgb_bands]
        if any(b < 0 or b >= band_count for b in chosen) or len(chosen) not in (1, 3):
            raise ValueError(f"rgb bands {list(rgb_bands)} do not fit {band_count} bands")
        return chosen
    if descriptions:
        names = [(d or "").strip().lower() for d in descriptions]
        found = []
        for colour in ("red", "green", "blue"):
            matches = [i for i, n in enumerate(names) if n in _COLOUR_NAMES[colour]]
            if not matches:
                break
            found.append(matches[0])
        if len(found) == 3:
            return found
    if band_count == 3:
        return [0, 1, 2]
    return [0]


def stretch(
    data: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98)
) -> np.ndarray:
    """(bands, rows, cols) -> uint8 with each band's percentile range over valid pixels to 0..255."""
    out = np.zeros(data.shape, dtype=np.uint8)
    if valid is None:
        valid = np.ones(data.shape[1:], dtype=bool)
    valid = valid & np.isfinite(data).all(axis=0)
    for i, band in enumerate(data):
        values = band[valid]
        if values.size == 0:
            continue
        low, high = np.percentile(values.astype(np.float64), percentiles)
        if high <= low:
            high = low + 1e-6 if low == low else 1.0
        scaled = (band.astype(np.float64) - low) / (high - low)
        out[i] = np.clip(np.nan_to_num(scaled) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def to_rgba(panel: Panel, percentiles: tuple[float, float] = (2, 98)) -> np.ndarray:
    """A panel as an (rows, cols, 4) uint8 RGBA array; invalid pixels transparent."""
    data = np.asarray(panel.data)
    if data.ndim == 2:
        data = data[None]
    bands = choose_display_bands(data.shape[0], panel.band_descriptions, panel.rgb_bands)
    valid = panel.valid if panel.valid is not None else np.ones(data.shape[1:], dtype=bool)
    shown = stretch(data[bands], valid, percentiles)
    if shown.shape[0] == 1:
        shown = np.repeat(shown, 3, axis=0)
    alpha = np.where(valid & np.isfinite(data[bands]).all(axis=0), 255, 0).astype(np.uint8)
    return np.concatenate([shown, alpha[None]], axis=0).transpose(1, 2, 0)


def compose(panels: Sequence[Panel], columns: int | None = None, scale: int = 1) -> Image.Image:
    """Lay panels out in a grid (row-major), each titled, on a white background."""
    if not panels:
        raise ValueError("nothing to render")
    columns = columns or len(panels)
    images = [Image.fromarray(to_rgba(p), "RGBA") for p in panels]
    if scale != 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images) + TITLE_HEIGHT
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new(
        "RGBA", (columns * cell_w + (columns - 1) * GAP, rows * cell_h + (rows - 1) * GAP),
        (255, 255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    checker = _checkerboard(cell_w, cell_h - TITLE_HEIGHT)
    for k, (panel, im) in enumerate(zip(panels, images, strict=True)):
        x = (k % columns) * (cell_w + GAP)
        y = (k // columns) * (cell_h + GAP)
        draw.text((x + 2, y + 3), panel.title[:60], fill=(0, 0, 0, 255), font=font)
        canvas.paste(checker.crop((0, 0, im.width, im.height)), (x, y + TITLE_HEIGHT))
        canvas.alpha_composite(im, (x, y + TITLE_HEIGHT))
    return canvas.convert("RGB")


def _checkerboard(width: int, height: int, cell: int = 8) -> Image.Image:
    """Light checkerboard drawn under transparent (nodata) pixels, so they read as 'no data'."""
    yy, xx = np.mgrid[0:height, 0:width]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 235, 205).astype(np.uint8)
    return Image.fromarray(np.stack([board] * 3 + [np.full_like(board, 255)], axis=-1), "RGBA")


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically (a killed run leaves no half-written picture)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def render_panels(
    panels: Sequence[Panel], path: str | os.PathLike, columns: int | None = None, scale: int = 1
) -> Image.Image:
    """Compose panels and save them as a PNG; returns the image."""
    image = compose(panels, columns=columns, scale=scale)
    save_png(image, path)
    return image
