"""Every picture geotranslate makes: training previews, the demo figure and ``preview``.

A raster of any band count and dtype becomes an 8-bit image by a per-band percentile
stretch; three bands are chosen for RGB from the band descriptions when they name colours
(``--rgb-bands`` overrides), otherwise the first band is shown in gray. Invalid pixels are
transparent. Panels are laid side by side with a title above each.

Rasters are read for display with bounded size (:func:`read_for_display`): the longest side
is decimated to ``max_size`` pixels by GDAL (from overviews when the file has them), so a
30 000 x 30 000 raster previews in seconds and a few MB; ``--window`` zooms on a region given
in pixels or map coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import ColorInterp
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from geotranslate.errors import OptionError
from geotranslate.files import atomic_path, check_not_input
from geotranslate.raster.io import open_raster, parse_bands, read_window
from geotranslate.raster.sources import input_files
from geotranslate.raster.windows import parse_pixel_window
from geotranslate.settings import split_list

_COLOUR_NAMES = {
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "blue": ("blue", "b", "b2", "b02", "sr_b2"),
}
TITLE_HEIGHT = 18
TITLE_CHARS = 60  # longer titles are cut
GAP = 4


@dataclass
class Panel:
    """One image to show: (bands, rows, cols) data in any units, with validity and a title."""

    title: str
    data: np.ndarray
    valid: np.ndarray | None = None
    band_descriptions: Sequence[str | None] | None = None
    rgb_bands: Sequence[int] | None = None  # 1-based, overrides the descriptions
    #: (low, high) per shown band instead of the panel's own 2-98 %: panels that share them
    #: (a translation and its target) show the same value in the same colour
    limits: np.ndarray | None = None


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


def stretch_limits(
    data: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98)
) -> np.ndarray:
    """(bands, 2): each band's (low, high) percentiles over valid pixels (NaN: none valid)."""
    if valid is None:
        valid = np.ones(data.shape[1:], dtype=bool)
    valid = valid & np.isfinite(data).all(axis=0)
    limits = np.full((data.shape[0], 2), np.nan)
    for i, band in enumerate(data):
        values = band[valid]
        if values.size:
            limits[i] = np.percentile(values.astype(np.float64), percentiles)
    return limits


def stretch(
    data: np.ndarray, valid: np.ndarray | None = None, percentiles: tuple[float, float] = (2, 98),
    limits: np.ndarray | None = None,
) -> np.ndarray:
    """(bands, rows, cols) -> uint8: each band's percentile range over valid pixels (or the
    given (bands, 2) ``limits``) to 0..255."""
    out = np.zeros(data.shape, dtype=np.uint8)
    if limits is None:
        limits = stretch_limits(data, valid, percentiles)
    for i, band in enumerate(data):
        low, high = limits[i]
        if np.isnan(low):
            continue
        if high <= low:
            high = low + 1e-6 if low == low else 1.0
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: clipped anyway
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
    limits = None if panel.limits is None else np.asarray(panel.limits)[bands]
    shown = stretch(data[bands], valid, percentiles, limits)
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
        draw.text((x + 2, y + 3), panel.title[:TITLE_CHARS], fill=(0, 0, 0, 255), font=font)
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


def chip_rows(rows: Sequence[Sequence[Panel]], min_size: int = 128) -> Image.Image:
    """One row of panels per chip, e.g. input | translations | target, as one image.

    The panels after the first share the stretch of the row's last panel (the target), so a
    translation's colours can be compared with the target's; small chips are enlarged.
    """
    panels = []
    for row in rows:
        last = row[-1]
        data = last.data if last.data.ndim == 3 else last.data[None]
        limits = stretch_limits(data, last.valid)
        panels.append(row[0])
        panels.extend(Panel(p.title, p.data, p.valid, p.band_descriptions, p.rgb_bands, limits)
                      for p in row[1:])
    size = max(max(p.data.shape[-2:]) for p in panels)
    return compose(panels, columns=max(len(r) for r in rows), scale=max(1, min_size // size))


# ---- training previews -----------------------------------------------------------------------

#: small chips are enlarged (nearest neighbour) to at least this many pixels in previews.
PREVIEW_MIN_PX = 128


def parse_rgb_bands(spec: str | None) -> dict[str, list[int] | None]:
    """``"3,2,1"`` (both domains where it fits) or ``"a:1,2,3;b:3,2,1"`` -> per-domain bands."""
    out: dict[str, list[int] | None] = {"a": None, "b": None}
    if not spec:
        return out
    try:
        for part in spec.replace(" ", "").split(";"):
            if ":" in part:
                domain, bands = part.split(":", 1)
                domain = domain.lower()
                if domain not in out:
                    raise ValueError
                out[domain] = [int(b) for b in bands.split(",")]
            else:
                out["a"] = out["b"] = [int(b) for b in part.split(",")]
    except ValueError:
        raise OptionError(
            f"--rgb-bands {spec!r}: expected e.g. 3,2,1 or a:1,2,3;b:3,2,1"
        ) from None
    return out


def chip_panel(title: str, data: np.ndarray, valid: np.ndarray | None,
               band_descriptions: Sequence[str | None] | None,
               rgb_bands: Sequence[int] | None) -> Panel:
    """A panel of one domain's chip; ``rgb_bands`` that do not fit its bands are left out
    (``--rgb-bands 3,2,1`` names both domains, one of which may have fewer bands)."""
    if rgb_bands and any(b < 1 or b > data.shape[0] for b in rgb_bands):
        rgb_bands = None
    return Panel(title, data, valid, band_descriptions, rgb_bands)


def write_preview(panels: Sequence[Panel], path: str | os.PathLike) -> None:
    """A training preview (real A, fake B, ...): rows of three, small chips enlarged."""
    size = max(p.data.shape[-1] for p in panels)
    render_panels(panels, path, columns=3, scale=max(1, PREVIEW_MIN_PX // size))


# ---- rasters for display: bounded, decimated reads ------------------------------------------

#: longest side of a panel read from a raster, unless the caller asks otherwise.
DEFAULT_MAX_SIZE = 1024
#: panels smaller than this are enlarged by an integer factor (nearest) to stay legible.
DEFAULT_MIN_SIZE = 256


@dataclass(frozen=True)
class DisplayWindow:
    """A region to show: pixel offsets (col, row, width, height) or map bounds.

    Map bounds are (left, bottom, right, top) in ``crs``; None means the CRS of the first
    raster shown, so one window zooms every panel on the same ground.
    """

    kind: str  # "pixel" or "map"
    values: tuple[float, float, float, float]
    crs: str | None = None


def parse_window(spec: str | None) -> DisplayWindow | None:
    """``"ROW_OFF,COL_OFF,HEIGHT,WIDTH"`` (pixels, as predict-raster) or
    ``"map:LEFT,BOTTOM,RIGHT,TOP"`` (map units)."""
    if spec is None or not spec.strip():
        return None
    text = spec.strip()
    if not text.lower().startswith("map:"):
        row, col, height, width = parse_pixel_window(text)
        if height <= 0 or width <= 0:
            raise OptionError(f"window {spec!r}: height and width must be positive")
        if row < 0 or col < 0:
            raise OptionError(f"window {spec!r}: row and column offsets must be >= 0")
        return DisplayWindow("pixel", (col, row, width, height))
    try:
        values = split_list(text[4:], float)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise OptionError(
            f"window {spec!r}: expected map:LEFT,BOTTOM,RIGHT,TOP (map coordinates) or "
            "ROW_OFF,COL_OFF,HEIGHT,WIDTH (pixels)"
        )
    if values[2] <= values[0] or values[3] <= values[1]:
        raise OptionError(f"window {spec!r}: need LEFT < RIGHT and BOTTOM < TOP")
    return DisplayWindow("map", values)  # type: ignore[arg-type]


def _pixel_window(ds: rasterio.DatasetReader, window: DisplayWindow | None) -> Window:
    """The display window on ``ds``'s grid, clipped to the raster; error if it misses it."""
    full = Window(0, 0, ds.width, ds.height)
    if window is None:
        return full
    if window.kind == "pixel":
        col, row, width, height = window.values
        wanted = Window(col, row, width, height)
    else:
        left, bottom, right, top = window.values
        if window.crs and ds.crs and rasterio.crs.CRS.from_user_input(window.crs) != ds.crs:
            left, bottom, right, top = transform_bounds(window.crs, ds.crs, *window.values)
        wanted = from_bounds(left, bottom, right, top, transform=ds.transform)
        # normalise for any axis orientation (south-up rasters give negative heights)
        r0, r1 = sorted((wanted.row_off, wanted.row_off + wanted.height))
        c0, c1 = sorted((wanted.col_off, wanted.col_off + wanted.width))
        wanted = Window(c0, r0, c1 - c0, r1 - r0)
    c0 = max(0, math.floor(wanted.col_off))
    r0 = max(0, math.floor(wanted.row_off))
    c1 = min(ds.width, math.ceil(wanted.col_off + wanted.width))
    r1 = min(ds.height, math.ceil(wanted.row_off + wanted.height))
    if c1 <= c0 or r1 <= r0:
        raise OptionError(
            f"{ds.name}: window {list(window.values)} lies outside the raster "
            f"({ds.width} x {ds.height} px)"
        )
    return Window(c0, r0, c1 - c0, r1 - r0)


def display_descriptions(ds: rasterio.DatasetReader, bands: Sequence[int]) -> list[str | None]:
    """Band descriptions, falling back to the colour interpretation (red/green/blue) when unset."""
    colours = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
    out: list[str | None] = []
    for b in bands:
        desc = ds.descriptions[b - 1]
        out.append(desc if desc else colours.get(ds.colorinterp[b - 1]))
    return out


def read_for_display(
    path: str | os.PathLike,
    *,
    rgb_bands: str | Sequence[int] | None = None,
    window: DisplayWindow | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    db: bool = False,
    title: str | None = None,
) -> Panel:
    """Read the bands to show from a raster as a :class:`Panel`, longest side <= ``max_size``.

    Only the displayed bands are read (RGB from descriptions or colour interpretation,
    ``rgb_bands`` to override, else the first band in gray), decimated by GDAL (nearest,
    from overviews when present), so memory and time stay bounded for any raster size.
    ``db`` shows 10*log10 of the values (linear SAR power); values <= 0 become invalid.
    """
    if max_size < 1:
        raise OptionError(f"max size must be at least 1 px, got {max_size}")
    ds = open_raster(path, allow_no_crs=True)  # display needs no georeference; any source
    path = ds.name
    try:
        spectral = parse_bands(None, ds)
        if rgb_bands:
            shown = parse_bands(rgb_bands, ds)
            if len(shown) not in (1, 3):
                raise OptionError(
                    f"{path}: --rgb-bands needs 1 or 3 bands, got {len(shown)}"
                )
        else:
            descriptions = display_descriptions(ds, spectral)
            shown = [spectral[i] for i in choose_display_bands(len(spectral), descriptions)]
        win = _pixel_window(ds, window)
        scale = max(win.width, win.height) / max_size
        out_shape = None
        if scale > 1:
            out_shape = (
                max(1, round(win.height / scale)),
                max(1, round(win.width / scale)),
            )
        data, valid = read_window(ds, win, shown, out_shape=out_shape)
        descriptions = display_descriptions(ds, shown)
    finally:
        ds.close()
    if db:
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = (data > 0).all(axis=0)
            data = np.where(data > 0, 10.0 * np.log10(data.astype(np.float64)), np.nan)
        valid = valid & positive
    name = title if title is not None else PurePosixPath(path.split("?")[0]).name or path
    note = f" (1:{scale:.3g})" if out_shape is not None else ""
    room = TITLE_CHARS - len(note)
    if len(name) > room:  # keep both ends of long file names: dates and extensions matter
        name = name[: room // 2 - 2] + "..." + name[-(room - room // 2 - 1) :]
    name += note
    return Panel(
        title=name,
        data=data,
        valid=valid,
        band_descriptions=descriptions,
        rgb_bands=list(range(1, len(shown) + 1)),
    )


def _enlarge(panel: Panel, min_size: int) -> Panel:
    """Integer nearest-neighbour enlargement of a small panel, so a 20 px chip is visible."""
    data = np.asarray(panel.data)
    if data.ndim == 2:
        data = data[None]
    longest = max(data.shape[1:])
    factor = min_size // longest if longest else 1
    if factor <= 1:
        return panel
    data = data.repeat(factor, axis=1).repeat(factor, axis=2)
    valid = None
    if panel.valid is not None:
        valid = panel.valid.repeat(factor, axis=0).repeat(factor, axis=1)
    return Panel(panel.title, data, valid, panel.band_descriptions, panel.rgb_bands,
                 panel.limits)


def render_rasters(
    sources: Sequence[str | os.PathLike | np.ndarray | Panel],
    out_png: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    rgb_bands: str | Sequence[int] | None = None,
    window: DisplayWindow | str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    min_size: int = DEFAULT_MIN_SIZE,
    columns: int | None = None,
    db: bool = False,
) -> Image.Image:
    """Side-by-side PNG of rasters (paths), arrays ((bands, rows, cols), NaN = no data) or Panels.

    Each panel is stretched per band (2-98 %), titled with its file name (or ``titles``),
    no-data shown over a checkerboard. Paths are read with :func:`read_for_display`; a map
    ``window`` is in the CRS of the first raster path unless it names its own. Returns the image.
    """
    if not sources:
        raise OptionError("preview: give at least one raster")
    if titles is not None and len(titles) != len(sources):
        raise OptionError(f"preview: {len(titles)} titles for {len(sources)} rasters")
    check_not_input(out_png, input_files([s for s in sources if isinstance(s, (str, os.PathLike))]))
    if columns is not None and columns < 1:
        raise OptionError(f"--columns {columns}: must be at least 1")
    if isinstance(window, str):
        window = parse_window(window)
    if window is not None and window.kind == "map" and window.crs is None:
        window = DisplayWindow("map", window.values, _first_crs(sources))
    panels: list[Panel] = []
    for i, source in enumerate(sources):
        title = titles[i] if titles is not None else None
        if isinstance(source, Panel):
            panel = source if title is None else Panel(
                title, source.data, source.valid, source.band_descriptions, source.rgb_bands
            )
        elif isinstance(source, np.ndarray):
            data = source[None] if source.ndim == 2 else source
            valid = np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else None
            panel = Panel(title or f"array {i + 1}", data, valid)
        else:
            panel = read_for_display(
                source, rgb_bands=rgb_bands, window=window, max_size=max_size, db=db, title=title
            )
        panels.append(_enlarge(panel, min(min_size, max_size)))
    try:
        return render_panels(panels, out_png, columns=columns)
    except ValueError as e:  # e.g. rgb bands that do not fit an array panel
        raise OptionError(f"preview: {e}") from None


def _first_crs(sources: Sequence[object]) -> str | None:
    """CRS of the first raster path among ``sources`` (for map windows), or None."""
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            ds = open_raster(source, allow_no_crs=True)
            try:
                return ds.crs.to_wkt() if ds.crs else None
            finally:
                ds.close()
    return None
