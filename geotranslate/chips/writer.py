"""Chip GeoTIFFs, each written atomically, and the writer of a run's chips in threads."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from geotranslate.chips.meta import SPLITS
from geotranslate.files import atomic_path
from geotranslate.raster.io import colour_interpretation, valid_from_data

#: chips written in parallel threads (GDAL compresses and writes without the GIL), and how
#: many may wait: bounds memory to a few chips.
WRITER_THREADS = 2
WRITER_QUEUE = 8


def write_chip_atomic(target: Path, *args, **kwargs) -> None:
    with atomic_path(target) as tmp:
        _write_chip(tmp, *args, **kwargs)


def _write_chip(
    path: Path,
    data: np.ndarray,
    valid: np.ndarray,
    *,
    crs,
    transform,
    nodata: float | None,
    descriptions: Sequence[str | None],
) -> None:
    """One chip GeoTIFF holding the source's values unchanged (every band, every pixel),
    colour interpretation from the band descriptions (:func:`colour_interpretation`).

    Readers derive validity from the values (nodata in any band, NaN) as from the source; the
    invalid pixels the values do not show (alpha, masks, padding without nodata) are kept in
    an internal mask, which then holds the whole validity.
    """
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        # zstd level 1 writes ~40 % faster than deflate level 1 at about the same size;
        # chip writing is what export time is made of
        "compress": "zstd",
        "zstd_level": 1,
        "predictor": 2 if np.issubdtype(data.dtype, np.integer) else 3,
    }
    if min(height, width) >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    needs_mask = bool((valid_from_data(data, nodata) & ~valid).any())
    # GDAL writes into memory and Python writes the file: a failed write (a full disk) then
    # raises, where GDAL's own flush at close only prints to stderr and leaves a truncated chip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
            for i, desc in enumerate(descriptions):
                if desc:
                    dst.set_band_description(i + 1, desc)
            dst.colorinterp = colour_interpretation(list(descriptions) + [None] * count)[:count]
            if needs_mask:
                dst.write_mask(valid.astype(np.uint8) * 255)
        encoded = memfile.read()
    with open(path, "wb") as f:
        f.write(encoded)


class ChipWriter:
    """The chips of one run, written in ``threads`` (GDAL compresses and writes without the
    GIL), with what it wrote and the folders it made (for a rollback)."""

    def __init__(self, out: Path, threads: int = WRITER_THREADS):
        self.out = out
        self.written: list[Path] = []
        self.created_dirs: list[Path] = []
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chip-writer")
        self._pending: deque[Future] = deque()
        self._present: dict[str, set[str]] = {}

    def write(self, target: Path, data: np.ndarray, valid: np.ndarray, **profile) -> None:
        """Write a chip (:func:`write_chip_atomic`) in a thread, making its folder first."""
        self.ensure_dir(target.parent)
        self.written.append(target)
        self.submit(write_chip_atomic, target, data, valid, **profile)

    def present(self, domain: str, name: str) -> bool:
        """Whether a chip of this name already exists in any split of ``domain`` (resume).

        The folders are listed once per run instead of one ``stat`` per chip and split.
        """
        if domain not in self._present:
            names: set[str] = set()
            for split in SPLITS:
                folder = self.out / f"{split}_{domain}"
                if folder.is_dir():
                    names.update(os.listdir(folder))
            self._present[domain] = names
        return name in self._present[domain]

    def submit(self, fn, *args, **kwargs) -> None:
        """Write in a worker thread; wait for the oldest writes when too many are queued."""
        self._pending.append(self._pool.submit(fn, *args, **kwargs))
        while len(self._pending) > WRITER_QUEUE:
            self._pending.popleft().result()

    def finish(self, cancel: bool = False) -> None:
        """Wait for every queued write (re-raising the first failure) and stop the threads."""
        try:
            if not cancel:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pending.clear()

    def ensure_dir(self, path: Path) -> None:
        if path.is_dir():
            return
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        path.mkdir(parents=True)
        self.created_dirs += reversed(missing)

    @contextlib.contextmanager
    def kept_or_rolled_back(self):
        """On Ctrl-C the complete chips stay (a re-run resumes); on any other failure (a bad
        input, no valid pixel, a full disk) no chip of this run is left behind, and meta.json
        and the index stay as they were."""
        try:
            yield
        except KeyboardInterrupt:
            self.finish(cancel=True)
            raise
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        self.finish(cancel=True)
        for chip in self.written:
            with contextlib.suppress(FileNotFoundError):
                chip.unlink()
        for d in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        self.written = []
