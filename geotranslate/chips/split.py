"""Spatial validation split: whole blocks of surviving windows become "val", the train
windows touching them "buffer"."""

from __future__ import annotations

import math

import numpy as np

from geotranslate.chips.grid import Job

#: how far the realized validation fraction may miss the requested one before smaller blocks
#: are tried (and, at the smallest, a warning says it could not be met).
VAL_TOLERANCE = 0.05


def assign_validation(jobs: list[Job], val_fraction: float, seed: int, tile: int) -> str:
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
    groups: dict[tuple[str, ...], list[Job]] = {}
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


def _neighbours(job: Job, survivors: list[int], tile: int) -> dict[int, list[int]]:
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


def _blocks(group: list[Job], survivors: list[list[int]], ks: list[int]) -> list[list]:
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


def _mark_buffer(job: Job, tile: int) -> None:
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

