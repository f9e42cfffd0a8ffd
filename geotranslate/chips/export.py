"""Cut georeferenced rasters into GeoTIFF chips for training: ``geotranslate export-tiles``.

One pass over each source, window by window (memory is bounded by a few chips whatever the
raster size): every window is read once, fed to the per-domain statistics, and written as a
chip when it passes the filters (AOI, exclude, invalid fraction, validation buffer). Paired
B chips are read through a WarpedVRT onto A's grid, so a pair shares name, size, CRS and
transform. Each chip is written atomically; meta.json and index.gpkg are rewritten at the end
from everything in the output directory, so a re-run adds to it. With ``workers`` > 1 the
windows are read in threads and consumed in window order, so the output does not depend on
the number of workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from geotranslate.chips.checks import (
    bounded_workers,
    check_not_inputs,
    check_out_dir,
    check_window_memory,
)
from geotranslate.chips.grid import Job, make_jobs, stats_only_jobs
from geotranslate.chips.index import INDEX_NAME, index_layers, write_index
from geotranslate.chips.meta import (
    META_NAME,
    SPLITS,
    check_against_existing,
    count_chips,
    merge_meta,
    read_existing_meta,
)
from geotranslate.chips.reader import READ_AHEAD, WindowReader, default_workers
from geotranslate.chips.sources import (
    check_numbers,
    check_stems,
    domain_bands,
    domain_entry,
    fuse_extras,
    input_transforms,
    resolve_mode,
)
from geotranslate.chips.split import assign_validation
from geotranslate.chips.stats import (
    add_scene_accumulators,
    add_window,
    record_stats,
    stats_buffers,
)
from geotranslate.chips.summary import ExportSummary, count_if_constant, zero_chips_message
from geotranslate.chips.writer import write_chip_atomic
from geotranslate.dirlock import DirectoryLock
from geotranslate.errors import GeotranslateError
from geotranslate.files import atomic_path, make_output_dir
from geotranslate.inputs import RelativeElevation
from geotranslate.log import logger, show_progress
from geotranslate.raster.io import GDAL_CACHE_BYTES, open_raster, source_of
from geotranslate.raster.vector import VectorFilter, window_footprint
from geotranslate.raster.windows import own_extents, tile_offsets, tile_windows

#: chips written in parallel threads (GDAL compresses and writes without the GIL), and how
#: many may wait: bounds memory to a few chips.
WRITER_THREADS = 2
WRITER_QUEUE = 8


def _windows_in_flight(workers: int, writers: int) -> int:
    """Windows held at once: up to WRITER_QUEUE + ``writers`` waiting for or in the chip
    writers, READ_AHEAD per worker read ahead, and about three more (reading, the statistics'
    copy, the chip's encoding)."""
    return WRITER_QUEUE + writers + 3 + (READ_AHEAD * workers if workers > 1 else 0)





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
    progress: bool | None = None,
    workers: int | None = None,
    relative_elevation: str | RelativeElevation | None = None,
    extra_a: Sequence[Sequence[str | Path]] | None = None,
) -> ExportSummary:
    """Cut ``a_paths`` (and ``b_paths``) into chips under ``out_dir``; see docs/formats.md.

    With ``b_paths`` the default mode is "paired" (B warped onto each A's grid); "unpaired"
    tiles A and B independently. Without ``b_paths`` one domain is exported (``domain``,
    default "a"). ``workers`` threads read windows in parallel (default: the usable cores); the
    chips, meta.json and index.gpkg are the same for any number. Raises GeotranslateError for
    bad input, leaving no chip of this run behind. ``relative_elevation`` (``RADIUS_PX`` or
    ``RADIUS_PX:BANDS``, see :class:`geotranslate.inputs.RelativeElevation`) writes domain A's
    chosen bands as height relative to their surroundings (float32 chips). ``extra_a``:
    lists of rasters of other sensors, each A raster fused (``fuse:``) with the raster of each
    list that covers it most.
    """
    started = time.perf_counter()
    b_paths = list(b_paths or [])
    a_paths = list(a_paths)
    if extra_a:
        a_paths = fuse_extras([str(p) for p in a_paths],
                              [[str(p) for p in extra] for extra in extra_a], allow_no_crs)
    mode, run_domains = resolve_mode(a_paths, b_paths, mode, domain)
    stride = tile_size if stride is None else stride
    check_numbers(tile_size, stride, max_nodata, val_fraction)
    workers = bounded_workers(workers, default_workers())
    out = Path(out_dir)
    check_out_dir(out)
    pairing = "paired" if mode == "paired" else "unpaired"
    summary = ExportSummary(str(out), pairing, tile_size, stride)
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
        bands = {d: domain_bands(datasets[d], specs[d]) for d in run_domains}
        domain_meta = {d: domain_entry(datasets[d], bands[d]) for d in run_domains}
        transforms = input_transforms(relative_elevation, domain_meta)
        writers = max(WRITER_THREADS, workers)
        check_window_memory(tile_size, domain_meta, workers, _windows_in_flight(workers, writers))
        check_stems(datasets)
        check_not_inputs(out, [source_of(ds) for dss in datasets.values() for ds in dss],
                         [p for p in (aoi, exclude) if p])
        lock_state = _lock_out_dir(out, stack)  # one run at a time; marks an unfinished run
        meta_old = read_existing_meta(out)
        check_against_existing(out, meta_old, pairing, tile_size, domain_meta)

        filters = {
            "aoi": VectorFilter(aoi, "--aoi") if aoi else None,
            "exclude": VectorFilter(exclude, "--exclude") if exclude else None,
        }
        pairs_new: list[dict] = []
        jobs = make_jobs(mode, datasets, bands, tile_size, resampling, pairs_new, stack,
                          transforms)
        jobs += stats_only_jobs(
            meta_old, mode, run_domains, datasets, tile_size, resampling, stack, allow_no_crs,
            transforms,
        )
        for job in jobs:
            add_scene_accumulators(job, domain_meta)
            job.windows = list(tile_windows(job.grid.height, job.grid.width, tile_size, stride))
            job.splits = ["train"] * len(job.windows)
            if job.padded and not job.stats_only:
                summary.padded_sources.append(job.stem)

        stats = stats_buffers(jobs, domain_meta, seed)
        run = _ExportRun(out, summary, max_nodata, filters, domain_meta, writers)
        lock_state["run"] = run
        reader = WindowReader(workers)
        stack.callback(reader.close)
        try:
            if val_fraction > 0:
                # validation blocks are drawn over the chips that pass the filters, so the
                # filters run first (reading every window once, with the statistics), then
                # only the surviving windows are read again and written
                _process(jobs, stats, run, tile_size, progress, reader, survey=True)
                summary.val_note = assign_validation(jobs, val_fraction, seed, tile_size)
                _process(jobs, None, run, tile_size, progress, reader)
            else:
                _process(jobs, stats, run, tile_size, progress, reader)
            run.finish()
            _finish_run(out, run, stats, run_domains, domain_meta, meta_old, pairing,
                        tile_size, stride, pairs_new, a_paths + b_paths, jobs)
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


def _finish_run(out, run, stats, run_domains, domain_meta, meta_old, pairing, tile_size,
                stride, pairs_new, paths, jobs=()) -> None:
    """Band statistics into the domains' meta, then index.gpkg and meta.json (last)."""
    summary = run.summary
    if summary.chips_written + summary.already_present == 0:
        raise GeotranslateError(zero_chips_message(paths, summary, run.max_nodata))
    for d in run_domains:
        record_stats(domain_meta[d], d, stats[d], jobs, meta_old)
        summary.stats_methods[d] = domain_meta[d]["stats"]["method"]
    meta = merge_meta(meta_old, pairing, tile_size, stride, domain_meta, pairs_new)
    meta["chips"] = count_chips(out)
    summary.totals = meta["chips"]
    layers = index_layers(out, run.index_rows)
    # both files are written before either is renamed: a failure leaves both as they were
    with atomic_path(out / META_NAME) as meta_tmp:
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        if layers:
            with atomic_path(out / INDEX_NAME) as index_tmp:
                write_index(layers, index_tmp, out / INDEX_NAME)


def _lock_out_dir(out: Path, stack: contextlib.ExitStack) -> dict:
    """Create ``out`` if needed and take its lock until ``stack`` closes (see dirlock.py).

    The lock file is removed when the directory is left consistent: the run finished, or it
    failed and rolled back (unless an earlier run was unfinished), or it was interrupted
    before writing a chip. Otherwise it stays and marks the directory unfinished. Returns the
    state the caller completes with ``"run"`` (the _ExportRun, once chips may be written).
    """
    created = make_output_dir(out, "--out")
    lock = DirectoryLock(out)
    previous = lock.acquire()
    if previous is not None:
        logger.warning(f"{out}: an earlier export-tiles run ({previous}) did not finish; this "
                       "run takes over its lock and completes the directory")
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



# ---- the pass --------------------------------------------------------------------------------


class _ExportRun:
    """Chip writing of one run, with what it wrote (for rollback) and the index rows."""

    def __init__(
        self, out: Path, summary: ExportSummary, max_nodata: float, filters: dict,
        domain_meta: dict, writers: int = WRITER_THREADS,
    ):
        self.out = out
        self.summary = summary
        self.max_nodata = max_nodata
        self.filters = filters
        self.domain_meta = domain_meta
        self.written: list[Path] = []
        self.created_dirs: list[Path] = []
        self.index_rows: list[dict] = []
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="chip-writer")
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


def _process(jobs: list[Job], stats: dict | None, run: _ExportRun, tile: int, progress: bool | None,
             reader: WindowReader, survey: bool = False) -> None:
    """Read every window: statistics (``stats``), then filters and chip writing.

    ``survey``: only record which windows pass the filters (``job.survives``), writing
    nothing. A later pass with ``stats`` None then reads and writes only the survivors.
    Reads come back in window order, whatever the number of workers.
    """
    if not survey and stats is None:
        jobs = [job for job in jobs if not job.stats_only]
    todo = [
        (job, wi)
        for job in jobs
        for wi in range(len(job.windows))
        if survey or job.survives is None or job.survives[wi]
    ]
    if survey:
        for job in jobs:
            job.survives = [False] * len(job.windows)
    desc = "export-tiles (filters)" if survey else "export-tiles"
    extents: dict[int, tuple[dict, dict]] = {}
    with tqdm(total=len(todo), unit="window", disable=not show_progress(progress), desc=desc,
              leave=False) as bar:
        for (job, wi), reads in reader.read(todo):
            if id(job) not in extents:
                extents[id(job)] = (
                    own_extents(
                        tile_offsets(job.grid.height, tile, run.summary.stride), job.height, tile
                    ),
                    own_extents(
                        tile_offsets(job.grid.width, tile, run.summary.stride), job.width, tile
                    ),
                )
            row_ends, col_ends = extents[id(job)]
            window, split = job.windows[wi], job.splits[wi]
            row, col = int(window.row_off), int(window.col_off)
            own_h, own_w = row_ends[row] - row, col_ends[col] - col
            if stats is not None:
                add_window(stats, job, reads, row, col, own_h, own_w)
            if survey:
                if not job.stats_only:
                    job.survives[wi] = _passes_filters(job, window, reads, run)
            elif not job.stats_only:
                _handle_window(job, window, split, reads, run)
            bar.update(1)


def _passes_filters(job: Job, window: Window, reads: dict, run: _ExportRun) -> bool:
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


def _handle_window(job: Job, window: Window, split: str, reads: dict, run: _ExportRun) -> None:
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
            count_if_constant(summary, d, name, data, valid)
            run.ensure_dir(targets[d].parent)
            meta = run.domain_meta[d]
            run.written.append(targets[d])
            run.submit(
                write_chip_atomic,
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
