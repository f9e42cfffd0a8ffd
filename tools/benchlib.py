"""What the benchmark scripts share: a test raster, child-process runs and peak memory.

Each measurement runs in a fresh child process so its memory figure is its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np


def write_test_raster(path: Path, size: int, bands: int = 4) -> None:
    """A size x size uint16 GeoTIFF (nodata 0, never 0 inside), tiled 256 and deflate-compressed.

    Smooth fields plus a little noise: textured like imagery, still compressible, and written
    strip by strip so generating a 16384² raster (2 GiB decoded) needs little memory.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5300000, 10, 10), "nodata": 0,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 2, "zlevel": 1, "bigtiff": "IF_SAFER",
    }
    rng = np.random.default_rng(0)
    cols = np.arange(size)
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 256):
            rows = np.arange(row, min(row + 256, size))[:, None]
            field = np.sin(cols[None, :] / 97.0) * np.cos(rows / 61.0)
            strip = np.stack([2000 + 1500 * field * (b + 1) / bands for b in range(bands)])
            strip += rng.integers(0, 8, strip.shape)
            dst.write(strip.astype("uint16"), window=Window(0, row, size, len(rows)))


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    Linux's ``ru_maxrss`` keeps the parent's resident size at fork across ``exec``, so a child
    of a big parent would report the parent's size; ``VmHWM`` is this process's own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, *args: object) -> dict:
    """Run ``script --child ARGS`` in a fresh Python; its last stdout line is a JSON result."""
    out = subprocess.run(
        [sys.executable, script, "--child", *map(str, args)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
