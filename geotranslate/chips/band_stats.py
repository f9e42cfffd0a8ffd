"""Statistics gathered in an export's pass: each domain's band statistics (on a lattice within a
pixel budget) and each scene's, recorded in meta.json as ``stats`` and ``scene_stats``."""

from __future__ import annotations

import math

import numpy as np

from geotranslate.chips.grid import Job
from geotranslate.chips.meta import ChipMeta
from geotranslate.errors import InputError
from geotranslate.inputs import lattice, scene_accumulator, scene_step
from geotranslate.stats import StatsAccumulator

#: valid pixels buffered before they are handed to the statistics (bounds memory, amortises).
STATS_BUFFER_PIXELS = 1 << 20
#: above this many pixels per domain, statistics use a regular lattice of every k-th row and
#: column (k chosen to stay under it): the pass stays cheap next to reading and writing.
STATS_PIXEL_BUDGET = 1_000_000


class StatsBuffer:
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
        data, valid = lattice(data, valid, self.step, row0, col0)
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


def stats_buffers(jobs: list[Job], domain_meta: dict, seed: int) -> dict[str, StatsBuffer]:
    """{domain: its band statistics}, each on a lattice within STATS_PIXEL_BUDGET."""
    return {d: StatsBuffer(meta["band_count"], seed, _stats_step(jobs, d))
            for d, meta in domain_meta.items()}


def _stats_step(jobs: list[Job], domain: str) -> int:
    """Lattice step k so that the statistics of a domain see at most STATS_PIXEL_BUDGET pixels."""
    total = sum(job.height * job.width for job in jobs if domain in job.readers)
    return max(1, math.ceil(math.sqrt(total / STATS_PIXEL_BUDGET)))


def add_scene_accumulators(job: Job, domain_meta: dict) -> None:
    """``job.scene_stats``: an accumulator and its lattice step for each domain the job reads."""
    job.scene_stats = {
        d: (scene_accumulator(domain_meta[d]["band_count"]), scene_step(job.height, job.width))
        for d in job.readers
    }


def add_window(stats: dict[str, StatsBuffer], job: Job, reads: dict, row: int, col: int,
               own_h: int, own_w: int) -> None:
    """The pixels a window at (``row``, ``col``) owns (its first ``own_h`` x ``own_w``, so that
    overlapping windows count each pixel once) into the domain's and the scene's statistics."""
    for d, (data, valid) in reads.items():
        if d in stats:
            stats[d].add(data[:, :own_h, :own_w], valid[:own_h, :own_w], row, col)
            scene, step = job.scene_stats[d]
            scene.add(*lattice(data[:, :own_h, :own_w], valid[:own_h, :own_w], step, row, col))


def record_stats(entry: dict, domain: str, stats: StatsBuffer, jobs: list[Job],
                 meta_old: ChipMeta | None) -> None:
    """The domain's band statistics and its scenes' (added to those of earlier runs) into its
    meta.json ``entry``; raises InputError when no pixel was valid."""
    stats.flush()
    if stats.accumulator.count == 0:
        raise InputError(
            f"{', '.join(entry['sources'])}: no valid pixel in domain {domain}'s "
            "sources (all nodata, NaN or alpha = 0)"
        )
    entry["stats"] = stats.accumulator.to_dict()
    entry["stats"]["pixel_step"] = stats.step
    if stats.step > 1:
        entry["stats"]["method"] = "sample"
    old = meta_old.domains.get(domain) if meta_old is not None else None
    scenes = dict(old.scene_stats or {}) if old is not None else {}
    scenes.update(_scene_stats(jobs, domain))
    entry["scene_stats"] = scenes


def _scene_stats(jobs: list[Job], domain: str) -> dict:
    """meta.json's ``scene_stats`` of a domain: {chip name stem: statistics of that scene}."""
    scenes = {}
    for job in jobs:
        if domain not in job.scene_stats:
            continue
        acc, step = job.scene_stats[domain]
        if acc.count:
            scenes[job.stem] = {**acc.to_dict(), "pixel_step": step}
            if job.sources.get(domain):
                scenes[job.stem]["source"] = job.sources[domain]
    return scenes
