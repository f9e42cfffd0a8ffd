"""Generate the small synthetic, co-registered sample scene committed under ``sample_data/``.

The scene is fully synthetic (fixed seed, numpy only, no network) so that tests, docs and demos
have real-looking GeoTIFFs in several imaging domains on one grid, plus one raster in another CRS
and resolution so that paired export has to warp. A land-cover class map is built first and every
modality is derived from it, which keeps the domains consistent and the translation learnable.

Usage: ``python tools/make_sample_data.py [--out sample_data]``. Output is byte-identical between
runs with the same numpy/GDAL builds (no timestamps are written, profiles are fixed).
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import calculate_default_transform, reproject

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sample_data"
SEED = 20240611
SIZE = 512
PIXEL = 10.0
ORIGIN = (500_000.0, 5_300_000.0)  # upper-left corner, EPSG:32633
CRS_MAIN = "EPSG:32633"
CRS_OTHER = "EPSG:32632"
PIXEL_OTHER = 15.0
SUBAREA_FRACTION = 0.775  # per side, i.e. ~60 % of the area for the second optical raster
NODATA_FLOAT = -9999.0
NODATA_PATCH = (slice(24, 64), slice(420, 480))  # rows, cols: a 40 x 60 px DSM data gap

# Land-cover classes (0 is unused so that a zero can never be mistaken for a class).
WATER, FOREST, GRASS, WHEAT, MAIZE, RAPESEED, BARE, ROAD, BUILDING, URBAN = range(1, 11)
CLASS_NAMES = {
    WATER: "water (river and lake)",
    FOREST: "forest",
    GRASS: "grassland / field margins",
    WHEAT: "wheat",
    MAIZE: "maize",
    RAPESEED: "rapeseed (flowering)",
    BARE: "bare / ploughed soil",
    ROAD: "road (incl. bridges)",
    BUILDING: "building",
    URBAN: "urban open space (yards, gardens, paving)",
}
CROPS = np.array([WHEAT, MAIZE, RAPESEED, BARE, GRASS])
CROP_P = np.array([0.3, 0.2, 0.15, 0.2, 0.15])

# Surface reflectance x 10000 (blue, green, red, nir) per class.
OPTICAL = {
    WATER: (650, 560, 380, 220),
    FOREST: (260, 460, 320, 3300),
    GRASS: (420, 780, 560, 3600),
    WHEAT: (460, 820, 620, 3900),
    MAIZE: (360, 720, 460, 4300),
    RAPESEED: (520, 1250, 1150, 3800),
    BARE: (1250, 1600, 2050, 2500),
    ROAD: (1250, 1320, 1420, 1650),
    BUILDING: (1500, 1600, 1750, 2000),
    URBAN: (900, 1100, 1150, 2300),
}
ROOF_TILES = (950, 1150, 2300, 2600)

# Backscatter (VV dB, VH - VV dB) per class.
SAR = {
    WATER: (-22.0, -7.0),
    FOREST: (-7.5, -6.0),
    GRASS: (-12.0, -7.0),
    WHEAT: (-11.0, -6.5),
    MAIZE: (-9.0, -6.5),
    RAPESEED: (-10.0, -6.0),
    BARE: (-13.0, -8.0),
    ROAD: (-17.0, -7.5),
    BUILDING: (2.5, -8.0),
    URBAN: (-6.5, -7.0),
}

# Web-map colours (OSM-like).
MAP_RGB = {
    WATER: (170, 211, 223),
    FOREST: (173, 209, 158),
    GRASS: (205, 235, 176),
    WHEAT: (245, 232, 180),
    MAIZE: (236, 219, 150),
    RAPESEED: (250, 241, 140),
    BARE: (232, 216, 196),
    ROAD: (255, 255, 255),
    BUILDING: (217, 208, 201),
    URBAN: (232, 227, 223),
}
MAIN_ROAD_RGB = (252, 214, 164)
ROAD_CASING_RGB = (150, 140, 130)
BUILDING_OUTLINE_RGB = (180, 165, 155)

# Roads as pixel polylines (col, row), kind 1 = main road, 2 = minor road.
ROADS: list[tuple[int, float, list[tuple[float, float]]]] = [
    (1, 1.6, [(0, 215), (150, 200), (260, 185), (340, 170), (420, 190), (511, 235)]),
    (1, 1.6, [(340, 170), (352, 260), (372, 345), (395, 430), (410, 511)]),
    (2, 1.1, [(330, 170), (318, 90), (300, 0)]),
    (2, 1.1, [(150, 200), (130, 290), (90, 400), (60, 511)]),
    (2, 1.1, [(372, 345), (470, 370), (511, 372)]),
    (2, 1.1, [(260, 185), (235, 260), (205, 330), (190, 420), (215, 511)]),
    (2, 1.1, [(420, 190), (440, 110), (430, 60), (511, 40)]),
]


@dataclass
class Scene:
    """Everything the renderers need, all on the main 512 x 512 grid."""

    classes: np.ndarray  # uint8 land-cover class
    terrain: np.ndarray  # float64 bare-earth elevation (m)
    object_height: np.ndarray  # float64 building / tree height above terrain (m)
    parcel: np.ndarray  # int32 field-parcel id, for per-parcel variation
    road_kind: np.ndarray  # uint8, 0 none, 1 main, 2 minor
    roof_tiles: np.ndarray  # bool, buildings with red tile roofs
    bridge: np.ndarray  # bool, road pixels over water


def main_transform() -> Affine:
    """Geotransform of the main grid (north-up, 10 m)."""
    return Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])


# --------------------------------------------------------------------------- helpers


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur via FFT (periodic edges): numpy-only, so no scipy dependency."""
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.rfftfreq(a.shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(a) * kernel, s=a.shape)


def normalise(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] so that thresholds and ranges are independent of the noise amplitude."""
    return (a - a.min()) / (a.max() - a.min())


def smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Unit-range smooth random field of a given correlation length (pixels)."""
    return normalise(blur(rng.standard_normal((SIZE, SIZE)), sigma))


def grid() -> tuple[np.ndarray, np.ndarray]:
    """Row and column index arrays (float) of the main grid."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    return rows.astype(np.float64), cols.astype(np.float64)


def segment_distance(
    rows: np.ndarray, cols: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    """Distance (px) from every pixel centre to the segment p0-p1 given as (col, row)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = ((cols - x0) * dx + (rows - y0) * dy) / max(dx * dx + dy * dy, 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(cols - (x0 + t * dx), rows - (y0 + t * dy))


def polyline_distance(
    rows: np.ndarray, cols: np.ndarray, points: list[tuple[float, float]]
) -> np.ndarray:
    """Distance (px) to a polyline, the minimum over its segments."""
    dist = np.full(rows.shape, np.inf)
    for p0, p1 in zip(points[:-1], points[1:], strict=True):
        dist = np.minimum(dist, segment_distance(rows, cols, p0, p1))
    return dist


def slope_components(terrain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elevation gradient towards east and north (m/m), used by hillshade and radar geometry."""
    d_row, d_col = np.gradient(terrain, PIXEL)
    return d_col, -d_row


def hillshade(terrain: np.ndarray, azimuth: float = 135.0, altitude: float = 45.0) -> np.ndarray:
    """Cosine of the local solar incidence angle (0..1); sun from the south-east by default."""
    east, north = slope_components(terrain)
    az, alt = np.radians(azimuth), np.radians(altitude)
    sun = np.array([np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)])
    normal_len = np.sqrt(east**2 + north**2 + 1.0)
    cos_i = (-east * sun[0] - north * sun[1] + sun[2]) / normal_len
    return np.clip(cos_i, 0.0, 1.0)


# --------------------------------------------------------------------------- layout


def river_centre(cols: np.ndarray) -> np.ndarray:
    """Row of the river centre line for each column; it meanders west to east."""
    return (
        335.0
        + 38.0 * np.sin(2 * np.pi * cols / 330.0 + 0.6)
        + 12.0 * np.sin(2 * np.pi * cols / 120.0 + 1.3)
    )


def make_terrain(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Fractal relief with a few hills, then a river valley and a lake basin carved into it."""
    relief = sum(w * smooth_noise(rng, s) for w, s in ((1.0, 60), (0.45, 24), (0.2, 9), (0.07, 3)))
    for r0, c0, amp, rad in ((60, 180, 1.2, 70), (470, 300, 0.9, 60), (90, 470, 0.8, 55)):
        relief = relief + amp * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * rad**2))
    terrain = 240.0 + 360.0 * normalise(relief)

    river_level = 228.0 - 16.0 * cols / SIZE  # flows west -> east
    river_dist = np.abs(rows - river_centre(cols))
    valley = 1.0 - np.exp(-((river_dist / 70.0) ** 2))
    terrain = river_level + (terrain - river_level) * valley

    lake_dist = lake_distance(rows, cols)
    lake_level = 236.0
    basin = 1.0 - np.exp(-((np.maximum(lake_dist, 0.0) * 40.0 / 50.0) ** 2))
    terrain = np.where(lake_dist <= 0, lake_level, lake_level + (terrain - lake_level) * basin)
    return np.maximum(terrain, river_level)


def lake_distance(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Approximate distance outside the lake ellipse in units of its minor radius (<=0 inside)."""
    r = np.hypot((rows - 118.0) / 38.0, (cols - 95.0) / 60.0)
    return r - 1.0


def field_parcels(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Voronoi parcels in a rotated, stretched frame, so fields look elongated and aligned."""
    seeds = rng.uniform(-40, SIZE + 40, size=(140, 2))
    ang = np.radians(28.0)
    u = (cols * np.cos(ang) + rows * np.sin(ang)) / 1.9
    v = -cols * np.sin(ang) + rows * np.cos(ang)
    su = (seeds[:, 1] * np.cos(ang) + seeds[:, 0] * np.sin(ang)) / 1.9
    sv = -seeds[:, 1] * np.sin(ang) + seeds[:, 0] * np.cos(ang)
    wobble = 6.0 * (smooth_noise(rng, 10) - 0.5)
    best = np.full(rows.shape, np.inf)
    parcel = np.zeros(rows.shape, dtype=np.int32)
    for i in range(len(seeds)):
        d = (u - su[i]) ** 2 + (v + wobble - sv[i]) ** 2
        closer = d < best
        best[closer] = d[closer]
        parcel[closer] = i
    return parcel


def parcel_edges(parcel: np.ndarray) -> np.ndarray:
    """Pixels on a parcel boundary: they become grass margins between fields."""
    edge = np.zeros(parcel.shape, dtype=bool)
    edge[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
    edge[1:, :] |= parcel[1:, :] != parcel[:-1, :]
    return edge


def forest_mask(rng: np.random.Generator, terrain: np.ndarray) -> np.ndarray:
    """Forest on the higher, rougher ground: a smooth noise field biased by elevation."""
    score = smooth_noise(rng, 14) + 0.9 * normalise(terrain) + 0.15 * smooth_noise(rng, 3)
    return score > np.quantile(score, 0.78)


def town_frame(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Street-aligned coordinates (px) of the town, rotated 14 degrees from north."""
    ang = np.radians(14.0)
    dc, dr = cols - 335.0, rows - 165.0
    return dc * np.cos(ang) + dr * np.sin(ang), -dc * np.sin(ang) + dr * np.cos(ang)


def make_town(
    rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Town footprint, street grid, building heights and roof type from a jittered block grid."""
    u, v = town_frame(rows, cols)
    radius = 62.0 * (0.75 + 0.5 * smooth_noise(rng, 10))
    area = np.hypot(u, v) < radius
    block = 24.0
    streets = area & ((np.mod(u, block) < 2.0) | (np.mod(v, block) < 2.0))
    height = np.zeros(rows.shape)
    tiles = np.zeros(rows.shape, dtype=bool)
    for bu in np.arange(-4, 4) * block:
        for bv in np.arange(-4, 4) * block:
            centre_dist = np.hypot(bu + block / 2, bv + block / 2)
            for ou in (7.5, 18.5):
                for ov in (7.5, 18.5):
                    if rng.uniform() > 0.8:
                        continue
                    cu, cv = bu + ou + rng.uniform(-1.5, 1.5), bv + ov + rng.uniform(-1.5, 1.5)
                    hu, hv = rng.uniform(1.6, 4.2), rng.uniform(1.6, 4.2)
                    h = np.clip(24.0 - centre_dist / 5.0 + rng.normal(0, 3.0), 5.0, 25.0)
                    roof = rng.uniform() < 0.45
                    if np.hypot(cu, cv) > 62.0:
                        continue
                    mask = area & (np.abs(u - cu) < hu) & (np.abs(v - cv) < hv)
                    height[mask] = h
                    tiles[mask] = roof
    height[streets] = 0.0
    tiles[height == 0] = False
    return area, streets, height, tiles


def make_roads(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Road raster (0 none, 1 main, 2 minor) from the fixed polylines."""
    kind = np.zeros(rows.shape, dtype=np.uint8)
    for road_kind, half_width, points in sorted(ROADS, key=lambda r: -r[0]):
        kind[polyline_distance(rows, cols, points) <= half_width] = road_kind
    return kind


def tree_height(rng: np.random.Generator, forest: np.ndarray) -> np.ndarray:
    """Canopy height (m): 12-28 m with crown texture, tapering at the forest edge."""
    canopy = 14.0 + 12.0 * smooth_noise(rng, 6) + 2.0 * rng.standard_normal(forest.shape)
    edge = np.clip(blur(forest.astype(np.float64), 1.5) * 1.6, 0.0, 1.0)
    return np.where(forest, np.clip(canopy, 8.0, 30.0) * edge, 0.0)


def build_scene(seed: int = SEED) -> Scene:
    """Lay out the whole scene; the draw order is fixed, which is what makes output repeatable."""
    rng = np.random.default_rng(seed)
    rows, cols = grid()
    terrain = make_terrain(rng, rows, cols)
    parcel = field_parcels(rng, rows, cols)
    crops = rng.choice(CROPS, size=parcel.max() + 1, p=CROP_P)
    classes = crops[parcel].astype(np.uint8)
    classes[parcel_edges(parcel)] = GRASS

    forest = forest_mask(rng, terrain)
    town, streets, building_h, tiles = make_town(rng, rows, cols)
    forest &= blur(town.astype(np.float64), 4.0) < 0.05
    classes[forest] = FOREST
    classes[town] = URBAN
    classes[building_h > 0] = BUILDING

    river_half_width = 3.2 + 1.2 * smooth_noise(rng, 20)
    water = (np.abs(rows - river_centre(cols)) <= river_half_width) | (
        lake_distance(rows, cols) <= 0
    )
    classes[water] = WATER
    forest &= ~water
    building_h[water] = 0.0

    road_kind = make_roads(rows, cols)
    road_kind[streets & (road_kind == 0)] = 2
    classes[road_kind > 0] = ROAD
    building_h[road_kind > 0] = 0.0
    bridge = water & (road_kind > 0)

    trees = tree_height(rng, forest & (classes == FOREST))
    return Scene(
        classes=classes,
        terrain=terrain,
        object_height=building_h + trees,
        parcel=parcel,
        road_kind=road_kind,
        roof_tiles=tiles & (classes == BUILDING),
        bridge=bridge,
    )


# --------------------------------------------------------------------------- renderers


def lookup(classes: np.ndarray, table: dict[int, tuple[float, ...]]) -> np.ndarray:
    """Per-pixel table value, shape (bands, rows, cols)."""
    nbands = len(next(iter(table.values())))
    lut = np.zeros((int(classes.max()) + 1, nbands))
    for cls, vals in table.items():
        lut[cls] = vals
    return np.moveaxis(lut[classes], -1, 0)


def render_dsm(scene: Scene) -> np.ndarray:
    """Surface height: terrain + objects, bridges 6 m above water, with a data gap."""
    dsm = scene.terrain + scene.object_height
    dsm = np.where(scene.bridge, scene.terrain + 6.0, dsm)
    dsm = np.round(dsm, 2).astype(np.float32)
    dsm[NODATA_PATCH] = NODATA_FLOAT
    return dsm


def building_shadow(scene: Scene) -> np.ndarray:
    """Pixels shaded by buildings with the sun in the south-east at 45 deg elevation."""
    height = np.where(scene.classes == BUILDING, scene.object_height, 0.0)
    shadow = np.zeros(height.shape, dtype=bool)
    for k in (1, 2):
        shifted = np.zeros_like(height)
        shifted[:-k, :-k] = height[k:, k:]  # building k px to the south-east
        shadow |= shifted > k * PIXEL * np.sqrt(2.0)
    return shadow & (scene.classes != BUILDING)


def render_optical(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Reflectance x 10000 (B, G, R, NIR) with per-parcel variation, texture, shading and noise."""
    refl = lookup(scene.classes, OPTICAL)
    refl[:, scene.roof_tiles] = np.array(ROOF_TILES, dtype=np.float64)[:, None]
    fields = np.isin(scene.classes, CROPS)
    parcel_gain = 1.0 + 0.08 * rng.standard_normal(scene.parcel.max() + 1)
    gain = np.where(fields, parcel_gain[scene.parcel], 1.0)
    texture = 1.0 + 0.06 * (smooth_noise(rng, 1.2) - 0.5) * 2.0
    forest = scene.classes == FOREST
    texture = np.where(forest, 1.0 + 0.25 * (smooth_noise(rng, 0.8) - 0.5), texture)
    illum = 0.35 + 0.65 * hillshade(scene.terrain) / np.sin(np.radians(45.0))
    illum = np.where(scene.classes == WATER, 1.0, illum)
    illum = np.where(building_shadow(scene), illum * 0.45, illum)
    refl = refl * gain * texture * illum
    refl = refl * (1.0 + 0.02 * rng.standard_normal(refl.shape)) + 15.0 * rng.standard_normal(
        refl.shape
    )
    return np.clip(np.round(refl), 1, 10000).astype(np.uint16)


def radar_brightness(terrain: np.ndarray, incidence_deg: float = 35.0) -> np.ndarray:
    """Linear terrain modulation: slopes facing the (east-looking-west) sensor are brighter."""
    east, _ = slope_components(terrain)
    theta0 = np.radians(incidence_deg)
    local = np.clip(theta0 - np.arctan(east), np.radians(8.0), np.radians(85.0))
    return np.clip(np.sin(theta0) / np.sin(local), 0.3, 4.0)


def render_sar(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """VV / VH backscatter (dB): class means + variation, terrain, 4-look gamma speckle."""
    table = lookup(scene.classes, SAR)
    fields = np.isin(scene.classes, CROPS)
    parcel_db = rng.normal(0.0, 1.0, scene.parcel.max() + 1)
    var_db = np.where(fields, parcel_db[scene.parcel], 1.2 * (smooth_noise(rng, 3) - 0.5))
    buildings = scene.classes == BUILDING
    var_db = np.where(buildings, np.clip(scene.object_height / 10.0, 0.5, 2.5) - 1.0, var_db)
    vv_db = table[0] + var_db
    vh_db = vv_db + table[1]
    terrain = radar_brightness(scene.terrain)
    out = []
    for band_db in (vv_db, vh_db):
        power = 10.0 ** (band_db / 10.0) * terrain
        power *= rng.gamma(shape=4.0, scale=0.25, size=power.shape)
        out.append(np.round(10.0 * np.log10(np.maximum(power, 1e-6)), 2))
    return np.stack(out).astype(np.float32)


def render_map(scene: Scene) -> np.ndarray:
    """Flat web-map colours; roads get a dark casing, buildings an outline."""
    rgb = lookup(scene.classes, MAP_RGB)
    rgb[:, scene.road_kind == 1] = np.array(MAIN_ROAD_RGB, dtype=np.float64)[:, None]
    road = scene.road_kind > 0
    casing = dilate(road) & ~road & (scene.classes != BUILDING)
    rgb[:, casing] = np.array(ROAD_CASING_RGB, dtype=np.float64)[:, None]
    buildings = scene.classes == BUILDING
    outline = buildings & ~erode(buildings)
    rgb[:, outline] = np.array(BUILDING_OUTLINE_RGB, dtype=np.float64)[:, None]
    return rgb.astype(np.uint8)


def dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary dilation by one pixel."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion by one pixel."""
    return ~dilate(~mask)


# --------------------------------------------------------------------------- writing


def base_profile(count: int, dtype: str, nodata: float | None) -> dict:
    """Fixed GTiff creation profile: tiled 256, deflate with the right predictor."""
    return {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_string(CRS_MAIN),
        "transform": main_transform(),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "zlevel": 9,
        "predictor": 3 if dtype.startswith("float") else 2,
        "interleave": "pixel",
    }


def write_raster(
    path: Path,
    data: np.ndarray,
    profile: dict,
    descriptions: list[str],
    colorinterp: list[ColorInterp] | None = None,
) -> None:
    """Write one GeoTIFF with band descriptions (and colour interpretation where meaningful)."""
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, desc in enumerate(descriptions, start=1):
            dst.set_band_description(i, desc)
        if colorinterp is not None:
            dst.colorinterp = colorinterp


def subarea_bounds() -> tuple[float, float, float, float]:
    """Central ~60 % of the scene (in EPSG:32633), covered by the second optical raster."""
    extent = SIZE * PIXEL
    margin = round(extent * (1.0 - SUBAREA_FRACTION) / 2.0 / PIXEL) * PIXEL
    left, top = ORIGIN
    return left + margin, top - extent + margin, left + extent - margin, top - margin


def warp_optical(optical: np.ndarray) -> tuple[np.ndarray, Affine, int, int]:
    """Reproject the sub-area of the optical image to UTM 32N at 15 m (bilinear, nodata 0)."""
    left, bottom, right, top = subarea_bounds()
    col0, row0 = int((left - ORIGIN[0]) / PIXEL), int((ORIGIN[1] - top) / PIXEL)
    ncols, nrows = int((right - left) / PIXEL), int((top - bottom) / PIXEL)
    src = optical[:, row0 : row0 + nrows, col0 : col0 + ncols]
    src_transform = Affine(PIXEL, 0.0, left, 0.0, -PIXEL, top)
    with warnings.catch_warnings():
        # rasterio <= 1.4 composes Affines with `*`, which affine >= 3 flags; not ours to fix.
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        dst_transform, width, height = calculate_default_transform(
            CRS_MAIN, CRS_OTHER, ncols, nrows, left, bottom, right, top, resolution=PIXEL_OTHER
        )
    dst = np.zeros((optical.shape[0], height, width), dtype=np.uint16)
    reproject(
        source=src,
        destination=dst,
        src_transform=src_transform,
        src_crs=CRS_MAIN,
        src_nodata=0,
        dst_transform=dst_transform,
        dst_crs=CRS_OTHER,
        dst_nodata=0,
        resampling=Resampling.bilinear,
        num_threads=1,
    )
    return dst, dst_transform, width, height


OPTICAL_BANDS = ["blue", "green", "red", "nir"]
OPTICAL_CI = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]


def write_all(out: Path, seed: int = SEED) -> list[Path]:
    """Render every modality from one scene and write the GeoTIFFs; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    scene = build_scene(seed)
    rng = np.random.default_rng(seed + 1)
    optical = render_optical(scene, rng)
    sar = render_sar(scene, rng)

    paths = [out / n for n in ("dsm.tif", "optical.tif", "sar.tif", "map.tif")]
    write_raster(
        paths[0],
        render_dsm(scene)[None],
        base_profile(1, "float32", NODATA_FLOAT),
        ["DSM (m)"],
        [ColorInterp.gray],
    )
    write_raster(paths[1], optical, base_profile(4, "uint16", 0), OPTICAL_BANDS, OPTICAL_CI)
    write_raster(
        paths[2],
        sar,
        base_profile(2, "float32", NODATA_FLOAT),
        ["VV", "VH"],
        [ColorInterp.gray, ColorInterp.undefined],
    )
    map_profile = base_profile(3, "uint8", None) | {"photometric": "RGB"}
    write_raster(
        paths[3],
        render_map(scene),
        map_profile,
        ["red", "green", "blue"],
        [ColorInterp.red, ColorInterp.green, ColorInterp.blue],
    )

    warped, transform, width, height = warp_optical(optical)
    other = base_profile(4, "uint16", 0) | {
        "crs": CRS.from_string(CRS_OTHER),
        "transform": transform,
        "width": width,
        "height": height,
    }
    paths.append(out / "optical_utm32_15m.tif")
    write_raster(paths[4], warped, other, OPTICAL_BANDS, OPTICAL_CI)
    paths.append(write_readme(out, paths))
    return paths


# --------------------------------------------------------------------------- README

FILE_NOTES = {
    "dsm.tif": "Digital surface model: terrain + building and tree heights; 40 x 60 px data gap",
    "optical.tif": "Surface reflectance x 10000 with terrain shading, building shadows, noise",
    "sar.tif": "Backscatter (dB), 4-look gamma speckle, brighter on slopes facing the sensor",
    "map.tif": "Web-map style rendering: flat class colours, cased roads, outlined buildings",
    "optical_utm32_15m.tif": "Central ~60 % of optical.tif warped (bilinear) to another CRS "
    "and pixel size; nodata outside the footprint",
}


def describe(path: Path) -> str:
    """One README table row from the file itself, so the table cannot drift from the data."""
    with rasterio.open(path) as src:
        names = ", ".join(d or "?" for d in src.descriptions)
        res = f"{src.res[0]:g} m"
        nodata = "none" if src.nodata is None else f"{src.nodata:g}"
        size_kb = path.stat().st_size / 1024
        return (
            f"| `{path.name}` | {size_kb:,.0f} KiB | {src.width} x {src.height} | {src.count} "
            f"({names}) | {src.dtypes[0]} | {src.crs.to_string()} | {res} | {nodata} "
            f"| {FILE_NOTES[path.name]} |"
        )


def write_readme(out: Path, rasters: list[Path]) -> Path:
    """Write sample_data/README.md describing the files and the land-cover classes."""
    left, top = ORIGIN
    bounds = (left, top - SIZE * PIXEL, left + SIZE * PIXEL, top)
    lines = [
        "# Sample data",
        "",
        "**Synthetic** scene (no real place): a fixed-seed, numpy-only rendering of one "
        f"{SIZE} x {SIZE} px landscape at {PIXEL:g} m in {CRS_MAIN} (UTM 33N), bounds "
        f"{bounds[0]:.0f}, {bounds[1]:.0f}, {bounds[2]:.0f}, {bounds[3]:.0f} (left, bottom, right, "
        "top). Every modality is derived from the same land-cover class map, so the files are "
        "co-registered and consistent with each other (`optical_utm32_15m.tif` deliberately is "
        "not: it is on another CRS and grid, so that paired export has to warp it).",
        "",
        "Regenerate (byte-identical for the same numpy / GDAL builds) with:",
        "",
        "```",
        "python tools/make_sample_data.py  # [--out sample_data]",
        "```",
        "",
        "| File | Size | Pixels | Bands | Dtype | CRS | Pixel size | Nodata | Content |",
        "|---|---|---|---|---|---|---|---|---|",
        *[describe(p) for p in rasters],
        "",
        "All files are tiled (256 x 256) GeoTIFFs, deflate-compressed with a predictor "
        "(2 for integers, 3 for floats). SAR is rounded to 0.01 dB and the DSM to 0.01 m.",
        "",
        "## Land-cover classes",
        "",
        "| Id | Class | Optical B/G/R/NIR (x 10000) | SAR VV (dB) | SAR VH - VV (dB) |",
        "|---|---|---|---|---|",
        *[
            f"| {c} | {name} | {'/'.join(str(v) for v in OPTICAL[c])} | {SAR[c][0]:g} "
            f"| {SAR[c][1]:g} |"
            for c, name in CLASS_NAMES.items()
        ],
        "",
        "Terrain is about 210-600 m: multi-scale smoothed noise plus three hills, with a river "
        "valley (west to east) and a lake basin carved in. Fields are elongated Voronoi parcels "
        "with a random crop each and grass margins; forest grows on the higher ground; the town "
        "is a rotated street grid with 5-25 m buildings; roads are fixed polylines (bridges over "
        "the river).",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: <repo>/sample_data)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: generate the sample data into --out."""
    args = parse_args(argv)
    for path in write_all(args.out):
        print(f"{path}  {path.stat().st_size / 1024:,.0f} KiB")


if __name__ == "__main__":
    main()
