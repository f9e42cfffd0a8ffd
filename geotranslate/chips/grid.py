"""Jobs of an export: a tiling grid per source with its readers (B warped onto A's grid
when paired), and the statistics-only passes over sources of earlier runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geotranslate.chips.meta import ChipMeta
from geotranslate.errors import StorageError
from geotranslate.inputs import transformed_read
from geotranslate.raster.io import open_raster, read_window, source_of
from geotranslate.raster.sources import parse_source
from geotranslate.raster.warp import GridReader, pair_sources
from geotranslate.raster.windows import Grid

Reader = Callable[[Window], tuple[np.ndarray, np.ndarray]]
#: builds a job's readers (closed with the ExitStack); the callable maps each of the job's
#: datasets to the handle read: the dataset itself, or another handle on it for a worker thread
#: (a rasterio dataset is not thread-safe)
ReaderFactory = Callable[[contextlib.ExitStack, Callable[[Any], Any]], dict[str, Reader]]


@dataclass
class Job:
    """One tiling: a grid (an A raster, or a B raster in unpaired mode) and its readers."""

    stem: str
    grid: Grid
    height: int  # the source's real size (the grid may be padded up to the tile)
    width: int
    readers: dict[str, Reader]
    sources: dict[str, str]  # domain -> source path(s) for the index
    make_readers: ReaderFactory | None = None  # more readers, e.g. one set per worker thread
    stats_only: bool = False
    windows: list[Window] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # "train" | "val" | "buffer"
    survives: list[bool] | None = None  # passes the filters (known after a survey pass)
    scene_stats: dict = field(default_factory=dict)  # domain -> (StatsAccumulator, step)

    @property
    def padded(self) -> bool:
        """Whether the source is smaller than a tile, so its one chip is padded."""
        return (self.grid.height, self.grid.width) != (self.height, self.width)


def _grid_of(ds, tile_size: int) -> Grid:
    """The raster's grid, padded to at least one tile (a smaller raster gives one padded chip)."""
    return Grid(ds.crs, ds.transform, max(ds.width, tile_size), max(ds.height, tile_size))


def _job(ds, grid: Grid, make_readers: ReaderFactory, stack: contextlib.ExitStack,
         sources: dict[str, str], stats_only: bool = False) -> Job:
    """A tiling of ``ds`` on ``grid`` (its own, or padded up to one tile)."""
    readers = make_readers(stack, lambda dataset: dataset)
    return Job(source_of(ds).stem, grid, ds.height, ds.width, readers, sources, make_readers,
                stats_only)


def _readers(grid: Grid, resampling: str, direct: dict | None = None,
             warped: dict | None = None, transforms: dict | None = None) -> ReaderFactory:
    """A job's readers: ``direct`` {domain: (dataset, bands)} read on its own pixel grid,
    ``warped`` {domain: (datasets, bands)} mosaicked and warped onto ``grid``; a domain in
    ``transforms`` {domain: input transforms (inputs.py)} reads through them."""

    def make(stack: contextlib.ExitStack, handle: Callable[[Any], Any]) -> dict[str, Reader]:
        readers = {}
        for d, (ds, bands) in (direct or {}).items():
            readers[d] = _direct_reader(handle(ds), bands, grid)
            if (transforms or {}).get(d):
                readers[d] = transformed_read(readers[d], transforms[d], ds.height, ds.width)
        for d, (dss, bands) in (warped or {}).items():
            reader = GridReader([handle(ds) for ds in dss], bands, grid, resampling)
            stack.callback(reader.close)
            readers[d] = reader.read
            if (transforms or {}).get(d):
                readers[d] = transformed_read(readers[d], transforms[d], grid.height,
                                              grid.width)
        return readers

    return make


def _direct_reader(ds, bands: list[int], grid: Grid) -> Reader:
    padded = (grid.height, grid.width) != (ds.height, ds.width)

    def read(window: Window) -> tuple[np.ndarray, np.ndarray]:
        return read_window(ds, window, bands, boundless=padded)

    return read


def make_jobs(mode, datasets, bands, tile_size, resampling, pairs_new, stack,
              transforms=None) -> list[Job]:
    jobs = []
    if mode == "paired":
        pairing = pair_sources(datasets["a"], datasets["b"])
        for a_ds, b_indexes in zip(datasets["a"], pairing, strict=True):
            grid = _grid_of(a_ds, tile_size)
            b_dss = [datasets["b"][j] for j in b_indexes]
            readers = _readers(grid, resampling, direct={"a": (a_ds, bands["a"])},
                               warped={"b": (b_dss, bands["b"])}, transforms=transforms)
            sources = {"a": str(a_ds.name), "b": ";".join(str(ds.name) for ds in b_dss)}
            jobs.append(_job(a_ds, grid, readers, stack, sources))
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
            readers = _readers(grid, resampling, direct={d: (ds, bands[d])},
                               transforms=transforms)
            jobs.append(_job(ds, grid, readers, stack, {d: str(ds.name)}))
    return jobs


def stats_only_jobs(
    meta_old: ChipMeta | None, mode, run_domains, datasets, tile_size, resampling, stack,
    allow_no_crs, transforms=None,
) -> list[Job]:
    """Passes over sources of earlier runs, so a domain's statistics cover all its sources."""
    if meta_old is None:
        return []
    jobs = []
    for d in run_domains:
        old = meta_old.domains.get(d)
        if old is None:
            continue
        if mode == "paired" and d == "b":
            current_pairs = {source_of(ds).record() for ds in datasets.get("a", [])}
            todo = [p for p in meta_old.pairs if p["a"] not in current_pairs]
            for pair in todo:
                a_ds = stack.enter_context(_open_old(pair["a"], allow_no_crs))
                b_dss = [stack.enter_context(_open_old(p, allow_no_crs)) for p in pair["b"]]
                grid = _grid_of(a_ds, tile_size)
                readers = _readers(grid, resampling, warped={"b": (b_dss, list(old.bands))})
                jobs.append(_job(a_ds, grid, readers, stack, {}, stats_only=True))
            continue
        current = {source_of(ds).record() for ds in datasets[d]}
        for path in old.sources:
            if path in current:
                continue
            ds = stack.enter_context(_open_old(path, allow_no_crs))
            grid = _grid_of(ds, tile_size)
            readers = _readers(grid, resampling, direct={d: (ds, list(old.bands))},
                               transforms=transforms)
            jobs.append(_job(ds, grid, readers, stack, {}, stats_only=True))
    return jobs


def _open_old(path: str, allow_no_crs: bool):
    if parse_source(path).local and not Path(path).exists():
        raise StorageError(
            f"{path}: listed in meta.json as a source but missing; its statistics cannot be "
            "recomputed (restore it or use another --out)"
        )
    return open_raster(path, allow_no_crs=allow_no_crs)

