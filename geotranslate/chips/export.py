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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm import tqdm

from geotranslate.chips.band_stats import (
    add_scene_accumulators,
    add_window,
    record_stats,
    stats_buffers,
)
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
    ChipMeta,
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
from geotranslate.chips.summary import ExportSummary, count_if_constant, zero_chips_message
from geotranslate.chips.writer import WRITER_QUEUE, WRITER_THREADS, ChipWriter
from geotranslate.dirlock import DirectoryLock
from geotranslate.errors import InputError
from geotranslate.files import atomic_path, make_output_dir
from geotranslate.inputs import RelativeElevation
from geotranslate.log import logger, show_progress
from geotranslate.raster.io import GDAL_CACHE_BYTES, open_raster, source_of
from geotranslate.raster.vector import VectorFilter, window_footprint
from geotranslate.raster.windows import own_extents, tile_offsets, tile_windows


@dataclass(frozen=True)
class _Options:
    """export_tiles' options, checked: what its steps share."""

    mode: str  # "paired", "unpaired" or "single"
    sources: dict[str, list]  # {domain: its rasters}, in the order of the run's domains
    bands: dict  # {domain: its --bands}
    tile_size: int
    stride: int
    workers: int
    resampling: str
    max_nodata: float
    aoi: str | Path | None
    exclude: str | Path | None
    val_fraction: float
    allow_no_crs: bool
    seed: int
    progress: bool | None
    relative_elevation: str | RelativeElevation | None

    @property
    def pairing(self) -> str:
        return "paired" if self.mode == "paired" else "unpaired"


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
    options = _Options(mode, *_per_domain(run_domains, a_paths, b_paths, bands_a, bands_b),
                       tile_size, stride, workers, resampling, max_nodata, aoi, exclude,
                       val_fraction, allow_no_crs, seed, progress, relative_elevation)
    summary = ExportSummary(str(out), options.pairing, tile_size, stride)
    summary.written = {split: {d: 0 for d in run_domains} for split in SPLITS}
    with contextlib.ExitStack() as stack:
        _export(stack, options, out, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _per_domain(run_domains, a_paths, b_paths, bands_a, bands_b) -> tuple[dict, dict]:
    """{domain: its rasters} and {domain: its --bands}. With one raster list (``a_paths``,
    whichever domain it is exported as) --bands selects its bands."""
    if b_paths:
        return {"a": a_paths, "b": b_paths}, {"a": bands_a, "b": bands_b}
    return {run_domains[0]: a_paths}, {run_domains[0]: bands_a if bands_a is not None else bands_b}


def _export(stack: contextlib.ExitStack, o: _Options, out: Path, summary: ExportSummary) -> None:
    """The run, its files and threads held by ``stack``: open and check the sources, lock
    ``out``, tile the sources, then read and write every window and finish meta.json and
    index.gpkg; on failure no chip of this run stays (on Ctrl-C the complete ones do)."""
    _quiet_gdal(stack)
    datasets, bands, domain_meta, transforms = _open_domains(stack, o)
    writers = max(WRITER_THREADS, o.workers)
    check_window_memory(o.tile_size, domain_meta, o.workers,
                        _windows_in_flight(o.workers, writers))
    check_stems(datasets)
    check_not_inputs(out, [source_of(ds) for dss in datasets.values() for ds in dss],
                     [p for p in (o.aoi, o.exclude) if p])
    lock_state = _lock_out_dir(out, stack)  # one run at a time; marks an unfinished run
    meta_old = read_existing_meta(out)
    check_against_existing(out, meta_old, o.pairing, o.tile_size, domain_meta)
    filters = _vector_filters(o.aoi, o.exclude)
    pairs_new: list[dict] = []
    jobs = _tiled_jobs(stack, o, datasets, bands, transforms, meta_old, pairs_new, domain_meta)
    summary.padded_sources += [job.stem for job in jobs if job.padded and not job.stats_only]
    stats = stats_buffers(jobs, domain_meta, o.seed)
    run = _ExportRun(out, summary, o.max_nodata, filters, domain_meta, ChipWriter(out, writers))
    lock_state["chips"] = run.chips
    reader = WindowReader(o.workers)
    stack.callback(reader.close)
    with run.chips.kept_or_rolled_back():
        _read_and_write(jobs, stats, run, reader, o)
        run.chips.finish()
        _finish_run(run, stats, o, meta_old, pairs_new, jobs)


def _quiet_gdal(stack: contextlib.ExitStack) -> None:
    """GDAL's block cache for the run; no warning for rasters without georeferencing (their
    use is refused or allowed by --allow-no-crs)."""
    stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", NotGeoreferencedWarning)


def _open_domains(stack: contextlib.ExitStack, o: _Options) -> tuple[dict, dict, dict, dict]:
    """Each domain's open datasets, selected bands, meta.json entry and input transforms."""
    datasets = {d: [stack.enter_context(open_raster(p, allow_no_crs=o.allow_no_crs))
                    for p in paths] for d, paths in o.sources.items()}
    bands = {d: domain_bands(datasets[d], o.bands[d]) for d in datasets}
    domain_meta = {d: domain_entry(datasets[d], bands[d]) for d in datasets}
    return datasets, bands, domain_meta, input_transforms(o.relative_elevation, domain_meta)


def _windows_in_flight(workers: int, writers: int) -> int:
    """Windows held at once: up to WRITER_QUEUE + ``writers`` waiting for or in the chip
    writers, READ_AHEAD per worker read ahead, and about three more (reading, the statistics'
    copy, the chip's encoding)."""
    return WRITER_QUEUE + writers + 3 + (READ_AHEAD * workers if workers > 1 else 0)


def _vector_filters(aoi, exclude) -> dict:
    return {
        "aoi": VectorFilter(aoi, "--aoi") if aoi else None,
        "exclude": VectorFilter(exclude, "--exclude") if exclude else None,
    }


def _tiled_jobs(stack, o: _Options, datasets, bands, transforms, meta_old, pairs_new,
                domain_meta) -> list[Job]:
    """The run's jobs (and the statistics-only ones of earlier runs' sources), each with its
    windows (all "train" until the validation split) and its scene statistics."""
    jobs = make_jobs(o.mode, datasets, bands, o.tile_size, o.resampling, pairs_new, stack,
                     transforms)
    jobs += stats_only_jobs(meta_old, o.mode, list(domain_meta), datasets, o.tile_size,
                            o.resampling, stack, o.allow_no_crs, transforms)
    for job in jobs:
        add_scene_accumulators(job, domain_meta)
        job.windows = list(tile_windows(job.grid.height, job.grid.width, o.tile_size, o.stride))
        job.splits = ["train"] * len(job.windows)
    return jobs


def _read_and_write(jobs: list[Job], stats: dict, run: _ExportRun, reader: WindowReader,
                    o: _Options) -> None:
    """Every window read once (statistics, filters, chips), or with a validation split twice:
    validation blocks are drawn over the chips that pass the filters, so the filters run first
    (reading every window once, with the statistics), then only the surviving windows are read
    again and written."""
    if o.val_fraction > 0:
        _process(jobs, stats, run, o.tile_size, o.progress, reader, survey=True)
        run.summary.val_note = assign_validation(jobs, o.val_fraction, o.seed, o.tile_size)
        _process(jobs, None, run, o.tile_size, o.progress, reader)
    else:
        _process(jobs, stats, run, o.tile_size, o.progress, reader)


def _finish_run(run: _ExportRun, stats: dict, o: _Options, meta_old: ChipMeta | None,
                pairs_new: list[dict], jobs: list[Job]) -> None:
    """Band statistics into the domains' meta, then index.gpkg and meta.json (last)."""
    out, summary, domain_meta = run.out, run.summary, run.domain_meta
    if summary.chips_written + summary.already_present == 0:
        rasters = [p for paths in o.sources.values() for p in paths]
        raise InputError(zero_chips_message(rasters, summary, run.max_nodata))
    for d, entry in domain_meta.items():
        record_stats(entry, d, stats[d], jobs, meta_old)
        summary.stats_methods[d] = entry["stats"]["method"]
    meta = merge_meta(meta_old, o.pairing, o.tile_size, o.stride, domain_meta, pairs_new)
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
    state the caller completes with ``"chips"`` (the ChipWriter, once chips may be written).
    """
    created = make_output_dir(out, "--out")
    lock = DirectoryLock(out)
    previous = lock.acquire()
    if previous is not None:
        logger.warning(f"{out}: an earlier export-tiles run ({previous}) did not finish; this "
                       "run takes over its lock and completes the directory")
    state: dict = {"chips": None}

    def release(exc_type, exc, tb) -> bool:
        chips = state["chips"]
        wrote = chips is not None and bool(chips.written)
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


@dataclass
class _ExportRun:
    """What the pass over the windows works with: the chip writer, the filters and their
    limits, the summary it counts into, and the index rows it adds."""

    out: Path
    summary: ExportSummary
    max_nodata: float
    filters: dict
    domain_meta: dict
    chips: ChipWriter
    index_rows: list[dict] = field(default_factory=list)


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
    present = all(run.chips.present(d, name) for d in reads)
    if present:
        summary.already_present += 1
    else:
        transform = window_transform(window, job.grid.transform)
        for d, (data, valid) in reads.items():
            count_if_constant(summary, d, name, data, valid)
            meta = run.domain_meta[d]
            run.chips.write(targets[d], data, valid, crs=job.grid.crs, transform=transform,
                            nodata=meta["nodata"], descriptions=meta["band_descriptions"])
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
