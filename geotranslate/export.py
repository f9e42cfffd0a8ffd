"""Cut georeferenced rasters into GeoTIFF chips for training: ``geotranslate export-tiles``.

One pass over each source, window by window (memory is bounded by a few chips whatever the
raster size): every window is read once, fed to the per-domain statistics, and written as a
chip when it passes the filters (AOI, exclude, invalid fraction, validation buffer). Paired
B chips are read through a WarpedVRT onto A's grid, so a pair shares name, size, CRS and
transform. Each chip is written atomically; meta.json and index.gpkg are rewritten at the end
from everything in the output directory, so a re-run adds to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from geotranslate.data import check_meta
from geotranslate.dirlock import DirectoryLock
from geotranslate.errors import GeotranslateError, first_line
from geotranslate.memory import check_memory
from geotranslate.raster.io import (
    GDAL_CACHE_BYTES,
    atomic_path,
    open_raster,
    parse_bands,
    raster_info,
    read_window,
    source_of,
    write_failed,
)
from geotranslate.raster.sources import parse_source
from geotranslate.raster.vector import VectorFilter, window_footprint
from geotranslate.raster.warp import Grid, GridReader, pair_sources
from geotranslate.raster.windows import own_extents, tile_offsets, tile_windows
from geotranslate.schema import load_json
from geotranslate.stats import StatsAccumulator

META_NAME = "meta.json"
INDEX_NAME = "index.gpkg"
FORMAT = "geotranslate-chips"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
DOMAINS = ("a", "b")

#: valid pixels buffered before they are handed to the statistics (bounds memory, amortises).
STATS_BUFFER_PIXELS = 1 << 20
#: above this many pixels per domain, statistics use a regular lattice of every k-th row and
#: column (k chosen to stay under it): the pass stays cheap next to reading and writing.
STATS_PIXEL_BUDGET = 1_000_000
#: chips written in parallel threads (GDAL compresses and writes without the GIL), and how
#: many may wait: bounds memory to a few chips.
WRITER_THREADS = 2
WRITER_QUEUE = 8

Reader = Callable[[Window], tuple[np.ndarray, np.ndarray]]


@dataclass
class ExportSummary:
    """What one export run did; ``str()`` is the paragraph the CLI prints."""

    out_dir: str
    dataset_type: str
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
            f"({self.dataset_type}, {self.tile_size} px tiles, stride {self.stride}) — "
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


@dataclass
class _Job:
    """One tiling: a grid (an A raster, or a B raster in unpaired mode) and its readers."""

    stem: str
    grid: Grid
    height: int  # the source's real size (the grid may be padded up to the tile)
    width: int
    readers: dict[str, Reader]
    sources: dict[str, str]  # domain -> source path(s) for the index
    stats_only: bool = False
    windows: list[Window] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # "train" | "val" | "buffer"
    survives: list[bool] | None = None  # passes the filters (known after a survey pass)

    @property
    def padded(self) -> bool:
        """Whether the source is smaller than a tile, so its one chip is padded."""
        return (self.grid.height, self.grid.width) != (self.height, self.width)


class _StatsBuffer:
    """Collects valid pixels and feeds them to a StatsAccumulator in bounded batches.

    With ``step`` > 1 only pixels whose source row and column are multiples of ``step`` are
    used (a regular lattice, the same whatever the tiling).
    """

    def __init__(self, band_count: int, seed: int, step: int = 1):
        self.accumulator = StatsAccumulator(band_count, seed=seed)
        self.step = step
        self._parts: list[np.ndarray] = []
        self._size = 0

    def add(self, data: np.ndarray, valid: np.ndarray, row0: int = 0, col0: int = 0) -> None:
        if self.step > 1:
            r, c = (-row0) % self.step, (-col0) % self.step
            data, valid = (
                data[:, r :: self.step, c :: self.step],
                valid[r :: self.step, c :: self.step],
            )
        values = data[:, valid]
        if values.shape[1] == 0:
            return
        self._parts.append(values)
        self._size += values.shape[1]
        if self._size >= STATS_BUFFER_PIXELS:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        values = np.concatenate(self._parts, axis=1)
        self._parts, self._size = [], 0
        self.accumulator.add(values[:, None, :], np.ones((1, values.shape[1]), dtype=bool))


# ---------------------------------------------------------------------------------------------


def export_tiles(
    a_paths: Sequence[str | Path],
    b_paths: Sequence[str | Path] | None = None,
    out_dir: str | Path = "chips",
    *,
    tile_size: int = 256,
    stride: int | None = None,
    mode: str | None = None,
    domain: str | None = None,
    bands_a: str | Sequence[int] | None = None,
    bands_b: str | Sequence[int] | None = None,
    resampling: str = "bilinear",
    max_nodata: float = 0.1,
    aoi: str | Path | None = None,
    exclude: str | Path | None = None,
    val_fraction: float = 0.0,
    allow_no_crs: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> ExportSummary:
    """Cut ``a_paths`` (and ``b_paths``) into chips under ``out_dir``; see docs/formats.md.

    With ``b_paths`` the default mode is "paired" (B warped onto each A's grid); "unpaired"
    tiles A and B independently. Without ``b_paths`` one domain is exported (``domain``,
    default "a"). Raises GeotranslateError for bad input, leaving no chip of this run behind.
    """
    started = time.perf_counter()
    b_paths = list(b_paths or [])
    a_paths = list(a_paths)
    mode, run_domains = _resolve_mode(a_paths, b_paths, mode, domain)
    stride = tile_size if stride is None else stride
    _check_numbers(tile_size, stride, max_nodata, val_fraction)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GeotranslateError(f"{out}: exists and is not a directory")
    dataset_type = "paired" if mode == "paired" else "unpaired"
    summary = ExportSummary(str(out), dataset_type, tile_size, stride)
    summary.written = {split: {d: 0 for d in run_domains} for split in SPLITS}

    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # one list of sources per domain; "a" holds the single list when --domain b is given
        lists = {"a": a_paths, "b": b_paths} if b_paths else {run_domains[0]: a_paths}
        datasets = {
            d: [stack.enter_context(open_raster(p, allow_no_crs=allow_no_crs)) for p in paths]
            for d, paths in lists.items()
        }
        if b_paths:
            specs = {"a": bands_a, "b": bands_b}
        else:  # one list: --bands selects its bands, whichever domain it is exported as
            specs = {run_domains[0]: bands_a if bands_a is not None else bands_b}
        bands = {d: _domain_bands(datasets[d], specs[d]) for d in run_domains}
        domain_meta = {d: _domain_meta(datasets[d], bands[d]) for d in run_domains}
        check_memory(_window_bytes(tile_size, domain_meta) * (WRITER_QUEUE + WRITER_THREADS + 3),
                     f"--tile-size {tile_size}", "use a smaller --tile-size")
        _check_stems(datasets)
        lock_state = _lock_out_dir(out, stack)  # one run at a time; marks an unfinished run
        meta_old = _read_meta(out)
        _check_against_existing(out, meta_old, dataset_type, tile_size, domain_meta)

        filters = {
            "aoi": VectorFilter(aoi, "--aoi") if aoi else None,
            "exclude": VectorFilter(exclude, "--exclude") if exclude else None,
        }
        pairs_new: list[dict] = []
        jobs = _make_jobs(mode, datasets, bands, tile_size, resampling, pairs_new, stack)
        jobs += _stats_only_jobs(
            meta_old, mode, run_domains, datasets, tile_size, resampling, stack, allow_no_crs
        )
        for job in jobs:
            job.windows = list(tile_windows(job.grid.height, job.grid.width, tile_size, stride))
            job.splits = ["train"] * len(job.windows)
            if job.padded and not job.stats_only:
                summary.padded_sources.append(job.stem)

        stats = {
            d: _StatsBuffer(domain_meta[d]["band_count"], seed, _stats_step(jobs, d))
            for d in run_domains
        }
        run = _Run(out, summary, max_nodata, filters, domain_meta)
        lock_state["run"] = run
        try:
            if val_fraction > 0:
                # validation blocks are drawn over the chips that pass the filters, so the
                # filters run first (reading every window once, with the statistics), then
                # only the surviving windows are read again and written
                _process(jobs, stats, run, tile_size, progress, survey=True)
                summary.val_note = _assign_validation(jobs, val_fraction, seed, tile_size)
                _process(jobs, None, run, tile_size, progress)
            else:
                _process(jobs, stats, run, tile_size, progress)
            run.finish()
            _finish_run(out, run, stats, run_domains, domain_meta, meta_old, dataset_type,
                        tile_size, stride, pairs_new, a_paths + b_paths)
        except KeyboardInterrupt:
            run.finish(cancel=True)  # complete chips stay: a re-run resumes
            raise
        except BaseException:
            # a bad input, no valid pixel, a full disk: no chip of this run is left behind,
            # and meta.json and the index stay as they were
            run.rollback()
            raise
    summary.seconds = time.perf_counter() - started
    return summary


def _finish_run(out, run, stats, run_domains, domain_meta, meta_old, dataset_type, tile_size,
                stride, pairs_new, paths) -> None:
    """Band statistics into the domains' meta, then index.gpkg and meta.json (last)."""
    summary = run.summary
    if summary.chips_written + summary.already_present == 0:
        raise GeotranslateError(_zero_chips_message(paths, summary, run.max_nodata))
    for d in run_domains:
        stats[d].flush()
        if stats[d].accumulator.count == 0:
            raise GeotranslateError(
                f"{', '.join(domain_meta[d]['sources'])}: no valid pixel in domain {d}'s "
                "sources (all nodata, NaN or alpha = 0)"
            )
        domain_meta[d]["stats"] = stats[d].accumulator.to_dict()
        domain_meta[d]["stats"]["pixel_step"] = stats[d].step
        if stats[d].step > 1:
            domain_meta[d]["stats"]["method"] = "sample"
        summary.stats_methods[d] = domain_meta[d]["stats"]["method"]
    meta = _merge_meta(meta_old, dataset_type, tile_size, stride, domain_meta, pairs_new)
    meta["chips"] = _count_chips(out)
    summary.totals = meta["chips"]
    layers = _index_layers(out, run.index_rows)
    # both files are written before either is renamed: a failure leaves both as they were
    with atomic_path(out / META_NAME) as meta_tmp:
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        if layers:
            with atomic_path(out / INDEX_NAME) as index_tmp:
                _write_index(layers, index_tmp, out / INDEX_NAME)


def _window_bytes(tile_size: int, domain_meta: dict) -> int:
    """Memory of one window read in every domain (data and validity). Up to WRITER_QUEUE +
    WRITER_THREADS of them wait for the chip writers; reading, the statistics' copy and the
    chip's encoding take about three more."""
    per_pixel = sum(
        m["band_count"] * np.dtype(m["dtype"]).itemsize + 1 for m in domain_meta.values()
    )
    return tile_size * tile_size * per_pixel


def _lock_out_dir(out: Path, stack: contextlib.ExitStack) -> dict:
    """Create ``out`` if needed and take its lock until ``stack`` closes (see dirlock.py).

    The lock file is removed when the directory is left consistent: the run finished, or it
    failed and rolled back (unless an earlier run was unfinished), or it was interrupted
    before writing a chip. Otherwise it stays and marks the directory unfinished. Returns the
    state the caller completes with ``"run"`` (the _Run, once chips may be written).
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out)
    previous = lock.acquire()
    if previous is not None:
        print(
            f"geotranslate: note: {out}: an earlier export-tiles run ({previous}) did not "
            "finish; this run takes over its lock and completes the directory",
            file=sys.stderr,
        )
    state: dict = {"run": None}

    def release(exc_type, exc, tb) -> bool:
        run = state["run"]
        wrote = run is not None and bool(run.written)
        if exc_type is None:
            consistent = True
        elif issubclass(exc_type, KeyboardInterrupt):
            consistent = previous is None and not wrote  # complete chips of this run stay
        else:
            consistent = previous is None  # rolled back to the state before this run
        lock.release(remove=consistent)
        if consistent and created and exc_type is not None:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if the failed run left it empty
        return False

    stack.push(release)
    return state


# ---- options and sources ---------------------------------------------------------------------


def _resolve_mode(a_paths, b_paths, mode, domain) -> tuple[str, list[str]]:
    if not a_paths:
        raise GeotranslateError("no input raster given")
    if mode not in (None, "paired", "unpaired"):
        raise GeotranslateError(f"mode {mode!r}: choose paired or unpaired")
    if domain not in (None, "a", "b"):
        raise GeotranslateError(f"domain {domain!r}: choose a or b")
    if b_paths:
        if domain is not None:
            raise GeotranslateError(
                "--domain exports a single raster list; do not combine with --b"
            )
        return mode or "paired", ["a", "b"]
    if mode == "paired":
        raise GeotranslateError("--mode paired needs B rasters (--b B.tif)")
    return "single", [domain or "a"]


def _check_numbers(tile_size: int, stride: int, max_nodata: float, val_fraction: float) -> None:
    if tile_size < 8:
        raise GeotranslateError(f"tile size {tile_size}: must be at least 8 pixels")
    if stride < 1:
        raise GeotranslateError(f"stride {stride}: must be a positive number of pixels")
    if not 0.0 <= max_nodata <= 1.0:
        raise GeotranslateError(f"max-nodata {max_nodata}: must be between 0 and 1")
    if not 0.0 <= val_fraction < 1.0:
        raise GeotranslateError(f"val-fraction {val_fraction}: must be in [0, 1)")


def _domain_bands(datasets, spec) -> list[int]:
    """Selected bands, identical for every source of a domain (band count and dtype agree)."""
    bands = [parse_bands(spec, ds) for ds in datasets]
    first = datasets[0]
    for ds, b in zip(datasets[1:], bands[1:], strict=True):
        if len(b) != len(bands[0]) or ds.dtypes[b[0] - 1] != first.dtypes[bands[0][0] - 1]:
            raise GeotranslateError(
                f"{ds.name}: {len(b)} bands of {ds.dtypes[b[0] - 1]}, but {first.name} has "
                f"{len(bands[0])} bands of {first.dtypes[bands[0][0] - 1]}; a domain's rasters "
                "must agree"
            )
        if ds.nodata != first.nodata and not (
            ds.nodata is not None
            and first.nodata is not None
            and math.isnan(ds.nodata)
            and math.isnan(first.nodata)
        ):
            raise GeotranslateError(
                f"{ds.name}: nodata {ds.nodata} differs from {first.name} ({first.nodata}); "
                "a domain's rasters must agree (gdal_edit.py -a_nodata)"
            )
    return bands[0]


def _domain_meta(datasets, bands: list[int]) -> dict:
    info = raster_info(datasets[0], bands)
    crss = []
    for ds in datasets:
        crs = ds.crs.to_string() if ds.crs else None
        if crs not in crss:
            crss.append(crs)
    return {
        "sources": [source_of(ds).record() for ds in datasets],
        "bands": list(bands),
        "band_count": len(bands),
        "dtype": info.dtype,
        "band_descriptions": list(info.band_descriptions),
        "nodata": info.nodata,
        "crs": info.crs,
        "crs_all": crss,
        "pixel_size": list(info.pixel_size),
    }


def _check_stems(datasets: dict[str, list]) -> None:
    for dss in datasets.values():
        seen: dict[str, str] = {}
        for ds in dss:
            stem = source_of(ds).stem
            if stem in seen and seen[stem] != ds.name:
                raise GeotranslateError(
                    f"{ds.name}: same file name stem as {seen[stem]}; chip names would collide "
                    "(rename one)"
                )
            seen[stem] = ds.name


# ---- existing output directory ---------------------------------------------------------------


def _read_meta(out: Path) -> dict | None:
    path = out / META_NAME
    if not path.exists():
        return None
    meta = load_json(path, "unreadable (remove it or choose another --out)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GeotranslateError(f"{path}: not a geotranslate chip dataset")
    return check_meta(meta, path, domains=())


def _check_against_existing(out, meta_old, dataset_type, tile_size, domain_meta) -> None:
    """Refuse to add chips that would not fit the dataset already in ``out``."""
    if meta_old is None:
        _check_stray_chips(out, tile_size, domain_meta)
        return
    where = out / META_NAME
    if meta_old.get("tile_size") != tile_size:
        raise GeotranslateError(
            f"{where}: holds {meta_old.get('tile_size')} px chips, this run makes {tile_size} px"
        )
    if meta_old.get("dataset_type") != dataset_type:
        raise GeotranslateError(
            f"{where}: holds a {meta_old.get('dataset_type')} dataset, this run is {dataset_type}"
        )
    for d, new in domain_meta.items():
        old = meta_old.get("domains", {}).get(d)
        if old is None:
            continue
        for key in ("band_count", "dtype"):
            if old[key] != new[key]:
                raise GeotranslateError(
                    f"{where}: domain {d} has {key} {old[key]}, this run would write "
                    f"{new[key]} (use another --out)"
                )


def _check_stray_chips(out: Path, tile_size: int, domain_meta: dict) -> None:
    """A directory with chips but no meta.json (an interrupted run): check one chip per domain."""
    for d, new in domain_meta.items():
        for split in SPLITS:
            chip = next((p for p in sorted((out / f"{split}_{d}").glob("*.tif"))), None)
            if chip is None:
                continue
            try:
                ds = rasterio.open(chip)
            except rasterio.errors.RasterioError as e:
                raise GeotranslateError(f"{chip}: unreadable chip in the output ({e})") from None
            with ds:
                if (
                    (ds.width, ds.height) != (tile_size, tile_size)
                    or ds.count != new["band_count"]
                    or ds.dtypes[0] != new["dtype"]
                ):
                    raise GeotranslateError(
                        f"{out}: holds chips of {ds.width} px with {ds.count} {ds.dtypes[0]} "
                        f"bands ({chip.name}); this run makes {tile_size} px with "
                        f"{new['band_count']} {new['dtype']} bands"
                    )


# ---- jobs ------------------------------------------------------------------------------------


def _grid_of(ds, tile_size: int) -> Grid:
    """The raster's grid, padded to at least one tile (a smaller raster gives one padded chip)."""
    return Grid(ds.crs, ds.transform, max(ds.width, tile_size), max(ds.height, tile_size))


def _job(ds, grid: Grid, readers: dict[str, Reader], sources: dict[str, str],
         stats_only: bool = False) -> _Job:
    """A tiling of ``ds`` on ``grid`` (its own, or padded up to one tile)."""
    return _Job(source_of(ds).stem, grid, ds.height, ds.width, readers, sources, stats_only)


def _direct_reader(ds, bands: list[int], grid: Grid) -> Reader:
    padded = (grid.height, grid.width) != (ds.height, ds.width)

    def read(window: Window) -> tuple[np.ndarray, np.ndarray]:
        return read_window(ds, window, bands, boundless=padded)

    return read


def _make_jobs(mode, datasets, bands, tile_size, resampling, pairs_new, stack) -> list[_Job]:
    jobs = []
    if mode == "paired":
        pairing = pair_sources(datasets["a"], datasets["b"])
        for a_ds, b_indexes in zip(datasets["a"], pairing, strict=True):
            grid = _grid_of(a_ds, tile_size)
            b_dss = [datasets["b"][j] for j in b_indexes]
            b_reader = GridReader(b_dss, bands["b"], grid, resampling)
            stack.callback(b_reader.close)
            readers = {"a": _direct_reader(a_ds, bands["a"], grid), "b": b_reader.read}
            sources = {"a": str(a_ds.name), "b": ";".join(str(ds.name) for ds in b_dss)}
            jobs.append(_job(a_ds, grid, readers, sources))
            pairs_new.append(
                {
                    "a": source_of(a_ds).record(),
                    "b": [source_of(ds).record() for ds in b_dss],
                }
            )
        return jobs
    for d, dss in datasets.items():
        for ds in dss:
            grid = _grid_of(ds, tile_size)
            jobs.append(_job(ds, grid, {d: _direct_reader(ds, bands[d], grid)}, {d: str(ds.name)}))
    return jobs


def _stats_only_jobs(
    meta_old, mode, run_domains, datasets, tile_size, resampling, stack, allow_no_crs
) -> list[_Job]:
    """Passes over sources of earlier runs, so a domain's statistics cover all its sources."""
    if meta_old is None:
        return []
    jobs = []
    for d in run_domains:
        old = meta_old.get("domains", {}).get(d)
        if old is None:
            continue
        if mode == "paired" and d == "b":
            current_pairs = {source_of(ds).record() for ds in datasets.get("a", [])}
            todo = [p for p in meta_old.get("pairs", []) if p["a"] not in current_pairs]
            for pair in todo:
                a_ds = stack.enter_context(_open_old(pair["a"], allow_no_crs))
                b_dss = [stack.enter_context(_open_old(p, allow_no_crs)) for p in pair["b"]]
                grid = _grid_of(a_ds, tile_size)
                reader = GridReader(b_dss, old["bands"], grid, resampling)
                stack.callback(reader.close)
                jobs.append(_job(a_ds, grid, {"b": reader.read}, {}, stats_only=True))
            continue
        current = {source_of(ds).record() for ds in datasets[d]}
        for path in old["sources"]:
            if path in current:
                continue
            ds = stack.enter_context(_open_old(path, allow_no_crs))
            grid = _grid_of(ds, tile_size)
            readers = {d: _direct_reader(ds, old["bands"], grid)}
            jobs.append(_job(ds, grid, readers, {}, stats_only=True))
    return jobs


def _open_old(path: str, allow_no_crs: bool):
    if parse_source(path).local and not Path(path).exists():
        raise GeotranslateError(
            f"{path}: listed in meta.json as a source but missing; its statistics cannot be "
            "recomputed (restore it or use another --out)"
        )
    return open_raster(path, allow_no_crs=allow_no_crs)


# ---- spatial validation split ----------------------------------------------------------------


#: how far the realized validation fraction may miss the requested one before smaller blocks
#: are tried (and, at the smallest, a warning says it could not be met).
VAL_TOLERANCE = 0.05


def _assign_validation(jobs: list[_Job], val_fraction: float, seed: int, tile: int) -> str:
    """Mark whole blocks of surviving windows "val", then train windows touching them "buffer".

    Only windows that pass the filters (``job.survives``, from the survey pass) count, so an
    AOI or nodata does not change the fraction. Blocks are squares of k x k windows, k chosen
    so that a source has about 2 / val_fraction blocks. The blocks of a group (paired jobs,
    or each domain in unpaired mode) are taken in a seeded random order, and the prefix of
    that order whose realized fraction val / (val + train), after the buffer, is closest to
    ``val_fraction`` is kept. When that misses by more than VAL_TOLERANCE, smaller blocks are
    tried, down to single windows. Returns a warning when the fraction still cannot be met.
    """
    if val_fraction <= 0:
        return ""
    groups: dict[tuple[str, ...], list[_Job]] = {}
    for job in jobs:
        if not job.stats_only:
            groups.setdefault(tuple(sorted(job.readers)), []).append(job)
    notes = []
    for key, group in groups.items():
        survivors = [[wi for wi, ok in enumerate(job.survives or []) if ok] for job in group]
        total = sum(len(s) for s in survivors)
        if total == 0:
            continue
        neighbours = [_neighbours(job, s, tile) for job, s in zip(group, survivors, strict=True)]
        k0 = [max(1, int(round(math.sqrt(len(s) * val_fraction / 2.0)))) for s in survivors]
        best: tuple[float, list, float, int] | None = None
        for level in range(max(k0)):
            ks = [max(1, k - level) for k in k0]
            blocks = _blocks(group, survivors, ks)
            order = np.random.default_rng([seed, level]).permutation(len(blocks))
            chosen, fraction = _closest_prefix(blocks, order, neighbours, total, val_fraction)
            error = abs(fraction - val_fraction)
            if best is None or error < best[0] - 1e-12:
                best = (error, chosen, fraction, len(blocks))
            if error <= VAL_TOLERANCE or all(k == 1 for k in ks):
                break
        assert best is not None
        error, chosen, fraction, n_blocks = best
        for ji, wi in chosen:
            group[ji].splits[wi] = "val"
        for job in group:
            _mark_buffer(job, tile)
        if error > VAL_TOLERANCE:
            what = "/".join(key)
            notes.append(
                f"--val-fraction {val_fraction:g} cannot be met for domain {what}: "
                f"{len(chosen)} of the {total} chips that pass the filters went to validation "
                f"({fraction:.0%}; {n_blocks} blocks, and the buffer dropped around them); "
                "export a larger area, or use a smaller --tile-size or a stride equal to it"
            )
    return "; ".join(notes)


def _neighbours(job: _Job, survivors: list[int], tile: int) -> dict[int, list[int]]:
    """For each surviving window, the other surviving windows sharing a pixel with it."""
    at = {(int(job.windows[wi].row_off), int(job.windows[wi].col_off)): wi for wi in survivors}
    rows = sorted({r for r, _ in at})
    cols = sorted({c for _, c in at})
    row_nbrs = {r: [q for q in rows if abs(q - r) < tile] for r in rows}
    col_nbrs = {c: [q for q in cols if abs(q - c) < tile] for c in cols}
    return {
        wi: [at[q, p] for q in row_nbrs[r] for p in col_nbrs[c]
             if (q, p) in at and (q, p) != (r, c)]
        for (r, c), wi in at.items()
    }


def _blocks(group: list[_Job], survivors: list[list[int]], ks: list[int]) -> list[list]:
    """Blocks of k x k grid positions of each job's surviving windows, as [(job, window)]."""
    blocks = []
    for ji, (job, indexes, k) in enumerate(zip(group, survivors, ks, strict=True)):
        rows = sorted({int(w.row_off) for w in job.windows})
        cols = sorted({int(w.col_off) for w in job.windows})
        row_pos = {r: i for i, r in enumerate(rows)}
        col_pos = {c: i for i, c in enumerate(cols)}
        by_block: dict[tuple[int, int], list] = {}
        for wi in indexes:
            w = job.windows[wi]
            key = (row_pos[int(w.row_off)] // k, col_pos[int(w.col_off)] // k)
            by_block.setdefault(key, []).append((ji, wi))
        blocks += [members for _, members in sorted(by_block.items())]
    return blocks


def _closest_prefix(blocks, order, neighbours, total: int, target: float) -> tuple[list, float]:
    """The prefix of ``order`` whose val / (val + train after the buffer) is closest to
    ``target``: (its windows, that fraction)."""
    val: set = set()
    buffered: set = set()
    best_len, best_fraction = 0, 0.0
    taken: list = []
    for bi in order:
        for member in blocks[bi]:
            val.add(member)
            buffered.discard(member)
            ji, wi = member
            for n in neighbours[ji][wi]:
                if (ji, n) not in val:
                    buffered.add((ji, n))
        taken += blocks[bi]
        fraction = len(val) / max(1, total - len(buffered))
        if abs(fraction - target) < abs(best_fraction - target):
            best_len, best_fraction = len(taken), fraction
        if fraction >= target:
            break
    return taken[:best_len], best_fraction


def _mark_buffer(job: _Job, tile: int) -> None:
    """Train windows sharing a pixel with a val window of the same source become "buffer"."""
    rows = sorted({int(w.row_off) for w in job.windows})
    cols = sorted({int(w.col_off) for w in job.windows})
    row_nbrs = {r: [q for q in rows if abs(q - r) < tile] for r in rows}
    col_nbrs = {c: [q for q in cols if abs(q - c) < tile] for c in cols}
    val = {
        (int(w.row_off), int(w.col_off))
        for w, s in zip(job.windows, job.splits, strict=True)
        if s == "val"
    }
    if not val:
        return
    for wi, w in enumerate(job.windows):
        if job.splits[wi] != "train":
            continue
        r, c = int(w.row_off), int(w.col_off)
        if any((q, p) in val for q in row_nbrs[r] for p in col_nbrs[c]):
            job.splits[wi] = "buffer"


# ---- the pass --------------------------------------------------------------------------------


class _Run:
    """Chip writing of one run, with what it wrote (for rollback) and the index rows."""

    def __init__(
        self, out: Path, summary: ExportSummary, max_nodata: float, filters: dict, domain_meta: dict
    ):
        self.out = out
        self.summary = summary
        self.max_nodata = max_nodata
        self.filters = filters
        self.domain_meta = domain_meta
        self.written: list[Path] = []
        self.created_dirs: list[Path] = []
        self.index_rows: list[dict] = []
        self._pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="chip-writer")
        self._pending: deque[Future] = deque()
        self._present: dict[str, set[str]] = {}

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

    def rollback(self) -> None:
        self.finish(cancel=True)
        for chip in self.written:
            with contextlib.suppress(FileNotFoundError):
                chip.unlink()
        for d in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        self.written = []


def _stats_step(jobs: list[_Job], domain: str) -> int:
    """Lattice step k so that the statistics of a domain see at most STATS_PIXEL_BUDGET pixels."""
    total = sum(job.height * job.width for job in jobs if domain in job.readers)
    return max(1, math.ceil(math.sqrt(total / STATS_PIXEL_BUDGET)))


def _process(jobs: list[_Job], stats: dict | None, run: _Run, tile: int, progress: bool,
             survey: bool = False) -> None:
    """Read every window: statistics (``stats``), then filters and chip writing.

    ``survey``: only record which windows pass the filters (``job.survives``), writing
    nothing. A later pass with ``stats`` None then reads and writes only the survivors.
    """
    if not survey and stats is None:
        jobs = [job for job in jobs if not job.stats_only]
    total = sum(
        len(job.windows) if job.survives is None or survey else sum(job.survives) for job in jobs
    )
    desc = "export-tiles (filters)" if survey else "export-tiles"
    with tqdm(total=total, unit="window", disable=not progress, desc=desc, leave=False) as bar:
        for job in jobs:
            if survey:
                job.survives = [False] * len(job.windows)
            row_ends = own_extents(
                tile_offsets(job.grid.height, tile, run.summary.stride), job.height, tile
            )
            col_ends = own_extents(
                tile_offsets(job.grid.width, tile, run.summary.stride), job.width, tile
            )
            for wi, (window, split) in enumerate(zip(job.windows, job.splits, strict=True)):
                if not survey and job.survives is not None and not job.survives[wi]:
                    continue
                reads = {d: reader(window) for d, reader in job.readers.items()}
                row, col = int(window.row_off), int(window.col_off)
                own_h, own_w = row_ends[row] - row, col_ends[col] - col
                for d, (data, valid) in reads.items():
                    if stats is not None and d in stats:
                        stats[d].add(data[:, :own_h, :own_w], valid[:own_h, :own_w], row, col)
                if survey:
                    if not job.stats_only:
                        job.survives[wi] = _passes_filters(job, window, reads, run)
                elif not job.stats_only:
                    _handle_window(job, window, split, reads, run)
                bar.update(1)


def _passes_filters(job: _Job, window: Window, reads: dict, run: _Run) -> bool:
    """AOI, exclude and invalid-fraction filters; a window that fails is counted as skipped."""
    summary = run.summary
    footprint = window_footprint(job.grid.transform, window)
    if run.filters["aoi"] and not run.filters["aoi"].intersects(footprint, job.grid.crs):
        summary.skipped_aoi += 1
        return False
    if run.filters["exclude"] and run.filters["exclude"].intersects(footprint, job.grid.crs):
        summary.skipped_exclude += 1
        return False
    invalid = [1.0 - np.count_nonzero(valid) / valid.size for _, valid in reads.values()]
    if max(invalid) > run.max_nodata:
        summary.skipped_nodata += 1
        return False
    return True


def _handle_window(job: _Job, window: Window, split: str, reads: dict, run: _Run) -> None:
    summary = run.summary
    footprint = window_footprint(job.grid.transform, window)
    if job.survives is None and not _passes_filters(job, window, reads, run):
        return
    invalid = {d: 1.0 - np.count_nonzero(valid) / valid.size for d, (_, valid) in reads.items()}
    if split == "buffer":
        summary.dropped_buffer += 1
        return
    name = f"{job.stem}_{int(window.row_off)}_{int(window.col_off)}.tif"
    targets = {d: run.out / f"{split}_{d}" / name for d in reads}
    present = all(run.present(d, name) for d in reads)
    if present:
        summary.already_present += 1
    else:
        transform = window_transform(window, job.grid.transform)
        for d, (data, valid) in reads.items():
            _count_if_constant(summary, d, name, data, valid)
            run.ensure_dir(targets[d].parent)
            meta = run.domain_meta[d]
            run.written.append(targets[d])
            run.submit(
                _write_chip_atomic,
                targets[d],
                data,
                valid,
                crs=job.grid.crs,
                transform=transform,
                nodata=meta["nodata"],
                descriptions=meta["band_descriptions"],
            )
            summary.written[split][d] += 1
    crs = job.grid.crs
    for d in reads:
        run.index_rows.append(
            {
                "name": name,
                "domain": d,
                "split": split,
                "source": job.sources[d],
                "invalid_fraction": round(invalid[d], 6),
                "row": int(window.row_off),
                "col": int(window.col_off),
                "crs": crs.to_wkt() if crs else None,
                "geometry": footprint,
            }
        )


def _count_if_constant(summary: ExportSummary, domain: str, name: str, data: np.ndarray,
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


def _write_chip_atomic(target: Path, *args, **kwargs) -> None:
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
    """One chip GeoTIFF; invalid pixels become nodata, or an internal mask when there is none."""
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
    all_valid = bool(valid.all())
    if nodata is not None and not all_valid:
        data = data.copy()
        data[:, ~valid] = nodata
    # GDAL writes into memory and Python writes the file: a failed write (a full disk) then
    # raises, where GDAL's own flush at close only prints to stderr and leaves a truncated chip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
            for i, desc in enumerate(descriptions):
                if desc:
                    dst.set_band_description(i + 1, desc)
            if nodata is None and not all_valid:
                dst.write_mask(valid.astype(np.uint8) * 255)
        encoded = memfile.read()
    with open(path, "wb") as f:
        f.write(encoded)


def _zero_chips_message(paths, summary: ExportSummary, max_nodata: float) -> str:
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


# ---- meta.json and index.gpkg ----------------------------------------------------------------


def _merge_meta(meta_old, dataset_type, tile_size, stride, domain_meta, pairs_new) -> dict:
    meta = meta_old or {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset_type": dataset_type,
        "tile_size": tile_size,
        "domains": {},
    }
    meta["stride"] = stride
    for d, new in domain_meta.items():
        old = meta["domains"].get(d)
        if old is not None:
            new["sources"] = old["sources"] + [s for s in new["sources"] if s not in old["sources"]]
            new["crs_all"] = old.get("crs_all", [old.get("crs")]) + [
                c for c in new["crs_all"] if c not in old.get("crs_all", [old.get("crs")])
            ]
            new["crs"] = old.get("crs")
        meta["domains"][d] = new
    if dataset_type == "paired":
        pairs = {p["a"]: p for p in meta.get("pairs", [])}
        pairs.update({p["a"]: p for p in pairs_new})
        meta["pairs"] = list(pairs.values())
    return meta


def _count_chips(out: Path) -> dict[str, dict[str, int]]:
    return {
        split: {
            d: sum(1 for p in (out / f"{split}_{d}").glob("*.tif") if not p.name.startswith("."))
            for d in DOMAINS
        }
        for split in SPLITS
    }


def _layer_name(crs_wkt: str | None) -> str:
    if crs_wkt is None:
        return "chips_pixel"
    crs = rasterio.crs.CRS.from_wkt(crs_wkt)
    authority = crs.to_authority()
    if authority:
        return f"chips_{authority[0]}_{authority[1]}"
    return "chips_custom_" + hashlib.sha1(crs_wkt.encode()).hexdigest()[:8]


def _index_layers(out: Path, rows: list[dict]) -> dict:
    """index.gpkg's layers after this run: earlier rows plus this run's, one layer per CRS."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    path = out / INDEX_NAME
    layers: dict[str, gpd.GeoDataFrame] = {}
    if path.exists():
        try:
            for name, _ in pyogrio.list_layers(path):
                layers[name] = gpd.read_file(path, layer=name, engine="pyogrio")
        except Exception as e:
            raise GeotranslateError(f"{path}: unreadable ({e}); remove it and re-run") from None
    by_layer: dict[str, list[dict]] = {}
    crs_of: dict[str, str | None] = {}
    for row in rows:
        name = _layer_name(row["crs"])
        crs_of[name] = row["crs"]
        by_layer.setdefault(name, []).append({k: v for k, v in row.items() if k != "crs"})
    for name, layer_rows in by_layer.items():
        new = gpd.GeoDataFrame(layer_rows, geometry="geometry", crs=crs_of[name])
        if name in layers:
            new = pd.concat(
                [layers[name], new.set_crs(layers[name].crs, allow_override=True)],
                ignore_index=True,
            )
            new = gpd.GeoDataFrame(new, geometry="geometry", crs=layers[name].crs)
        layers[name] = new.drop_duplicates(["name", "domain", "split"], keep="last")
    # a chip listed in the index but gone from disk (deleted by the user) is dropped
    for name, frame in layers.items():
        exists = [
            (out / f"{s}_{d}" / n).exists()
            for n, d, s in zip(frame["name"], frame["domain"], frame["split"], strict=True)
        ]
        layers[name] = frame[exists]
    return layers


def _write_index(layers: dict, tmp: Path, path: Path) -> None:
    """Write the index layers into ``tmp`` (renamed onto ``path`` by the caller)."""
    import pyogrio

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*extension should be 'gpkg'")
        warnings.filterwarnings("ignore", message=".*non conformant file extension")
        warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixel-space chips
        tmp.unlink()  # the GPKG driver creates its file itself
        try:
            for name, frame in layers.items():
                frame.to_file(tmp, layer=name, driver="GPKG", engine="pyogrio")
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as e:
            # SQLite's message comes after the whole failed SQL script: keep its end
            reason = str(e).rsplit(" failed: ", 1)[-1]
            raise write_failed(path, first_line(reason, limit=120)) from None
