"""The streaming pipeline: reader thread -> batched generator -> blending -> writer thread.

The reader reads the strip of rows of each tile row once (not tile by tile), mirrors it at the
raster edges and normalizes it; the calling thread only runs batches through the generator; a
blending thread adds the outputs into the accumulator; the writer de-normalizes, casts and
writes finished rows. Bounded queues between them keep memory bounded and let reading and
writing overlap the compute. The reader and the writer each open their own rasterio dataset
(datasets are not thread-safe); GDAL's block cache is capped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geotranslate.errors import first_line
from geotranslate.files import write_failed
from geotranslate.log import show_progress
from geotranslate.modelfile import DomainSpec
from geotranslate.predict.blend import Blender, blend_weights
from geotranslate.predict.grid import OUT_BLOCK, Strip
from geotranslate.predict.output import apply_nodata, update_options
from geotranslate.predict.queues import Stop, get, put
from geotranslate.predict.resume import Checkpoint
from geotranslate.raster.io import (
    GDAL_CACHE_BYTES,
    colour_interpretation,
    open_raster,
    read_window,
)
from geotranslate.raster.sources import RasterSource
from geotranslate.raster.windows import reflect_pad

#: strips read ahead / row windows waiting to be written.
READ_AHEAD = 3
WRITE_BEHIND = 4
#: niceness of the reader, blending and writer threads (the compute thread keeps 0).
IO_NICENESS = 5
#: the pipeline's stages, whose CPU seconds a run reports (logged at INFO, in the summary)
STAGES = ("read", "normalize", "forward", "blend", "cast", "write")

log = logging.getLogger(__name__)


class StageClock:
    """CPU seconds of each stage, each measured on its own thread (``time.thread_time``)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.thread_time()
        try:
            yield
        finally:
            self.seconds[stage] += time.thread_time() - start


@dataclass(frozen=True)
class PipelineInput:
    """What the reader reads: the input raster's bands in a region of the tile grid."""

    path: RasterSource  # the parsed source (raster/sources.py), never the user's string
    bands: list[int]
    source: DomainSpec  # the input domain (its normalizer)
    region: tuple[int, int, int, int]  # the grid's (row, col, height, width) in the raster
    plan: list[Strip]
    tile: int
    #: ``read(ds, window)`` through the model's input transforms (inputs.py); None: plain
    read: Callable | None = None


@dataclass(frozen=True)
class PipelineCompute:
    """How the calling thread runs the generator."""

    generator: torch.nn.Module
    device: torch.device
    autocast: Callable
    channels_last: bool
    batch_size: int


@dataclass(frozen=True)
class PipelineOutput:
    """What the blender and the writer produce, and where."""

    path: Path  # the temporary file written
    shown_as: Path  # the final name, for messages
    profile: dict
    target: DomainSpec  # the output domain (its normalizer, band count, descriptions)
    nodata: float
    tags: dict
    overlap: int
    blend: str
    out_row0: int  # the grid row where the output file starts
    checkpoint: Checkpoint | None = None  # resumable output (predict/resume.py)


class Reader(threading.Thread):
    """Reads, mirrors and normalizes the strip of each tile row, in plan order."""

    def __init__(self, inp: PipelineInput, out_q: queue.Queue, stop: threading.Event,
                 clock: StageClock):
        super().__init__(daemon=True, name="geotranslate-reader")
        self.inp, self.tile = inp, inp.tile
        self.out_q, self.stop, self.clock = out_q, stop, clock

    def run(self) -> None:
        _lower_priority()
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
                open_raster(self.inp.path, allow_no_crs=True) as ds,
            ):
                for strip in self.inp.plan:
                    put(self.out_q, (strip, *self._read(ds, strip)), self.stop)
            put(self.out_q, None, self.stop)
        except Stop:
            return
        except BaseException as e:  # handed to the main thread, which re-raises it
            with contextlib.suppress(Stop):
                put(self.out_q, e, self.stop)

    def _read(self, ds, strip: Strip) -> tuple[np.ndarray, np.ndarray, int]:
        """The strip's pixels (mirrored beyond the raster), normalized, and their validity."""
        row0, col0, _, _ = self.inp.region
        c_lo, c_hi = strip.tile_cols[0], strip.tile_cols[-1] + self.tile
        rows = _span(strip.row + row0, strip.row + row0 + self.tile, ds.height)
        cols = _span(c_lo + col0, c_hi + col0, ds.width)
        (r_min, r_max, top, bottom), (c_min, c_max, left, right) = rows, cols
        window = Window(c_min, r_min, c_max - c_min, r_max - r_min)
        with self.clock("read"):
            if self.inp.read is not None:
                data, valid = self.inp.read(ds, window)
            else:
                data, valid = read_window(ds, window, self.inp.bands)
        with self.clock("normalize"):
            if top or bottom or left or right:
                data, valid = reflect_pad(data, valid, ((top, bottom), (left, right)))
            r0 = strip.row + row0 - (r_min - top)
            c0 = c_lo + col0 - (c_min - left)
            data = data[:, r0 : r0 + self.tile, c0 : c0 + c_hi - c_lo]
            valid = valid[r0 : r0 + self.tile, c0 : c0 + c_hi - c_lo]
            x = self.inp.source.normalizer.to_model(data, valid)
            return x, np.ascontiguousarray(valid), c_lo


def _span(start: int, stop: int, length: int) -> tuple[int, int, int, int]:
    """For pixels ``[start, stop)`` along an axis of ``length``: the real pixels to read
    ``[lo, hi)`` and the reflect padding (before, after) that produces the rest.

    Mirroring about the first (last) pixel needs the read to start (end) at the edge and to
    reach as far inside as the padding mirrors.
    """
    before, after = max(0, -start), max(0, stop - length)
    lo, hi = max(start, 0), min(stop, length)
    if before:
        hi = max(hi, min(length, before + 1))
    if after:
        lo = min(lo, max(0, length - 1 - after))
    return lo, hi, before, after


class Writer(threading.Thread):
    """Finishes accumulated rows (weighted mean, de-normalize, cast, nodata) and writes them."""

    def __init__(self, out: PipelineOutput, in_q: queue.Queue, stop: threading.Event,
                 clock: StageClock):
        super().__init__(daemon=True, name="geotranslate-writer")
        self.out = out
        self.in_q, self.stop, self.clock = in_q, stop, clock
        self.error: BaseException | None = None
        self._pending: list | None = None  # (chunk column, block row, its rows, rows filled)

    def run(self) -> None:
        _lower_priority()
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), warnings.catch_warnings():
                # GCP/RPC-referenced outputs have no transform, which is intended
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                checkpoint = self.out.checkpoint
                resuming = checkpoint is not None and checkpoint.start is not None
                dst = self._open("r+" if resuming else "w")
                try:
                    while (item := get(self.in_q, self.stop)) is not None:
                        window, acc, weight, valid = item
                        with self.clock("cast"):
                            values = self._finish(acc, weight, valid)
                        with self.clock("write"):
                            if checkpoint is None:
                                dst.write(values, window=window)
                            else:
                                dst = self._write_checkpointed(dst, values, window, checkpoint)
                finally:
                    with self.clock("write"):
                        dst.close()
        except Stop:
            return
        except (RasterioError, OSError) as e:  # OSError: syncing a checkpoint
            self.error = write_failed(self.out.shown_as, first_line(e))
        except BaseException as e:
            self.error = e
        if self.error is not None:
            self.stop.set()

    def _open(self, mode: str):
        if mode == "r+":  # GDAL keeps the codec and predictor, not the codec's level
            return rasterio.open(self.out.path, "r+", **update_options(self.out.profile))
        dst = rasterio.open(self.out.path, "w", **self.out.profile)
        for i, d in enumerate(self.out.target.band_descriptions):
            if d:
                dst.set_band_description(i + 1, d)
        dst.colorinterp = colour_interpretation(self.out.target.band_descriptions)
        dst.update_tags(**self.out.tags)
        return dst

    def _write_checkpointed(self, dst, values: np.ndarray, window: Window, checkpoint):
        """Gather ``values`` into whole block rows; write each one block at a time and, at the
        rows :meth:`Checkpoint.due` names (a function of the grid only), checkpoint.

        Every block is written once, complete and in one call, in the same order in every run,
        so GDAL appends the same bytes in the same order: the file's layout is a function of
        the grid, whatever the timing of the other threads (and of evictions from GDAL's
        shared block cache).
        """
        row0, stop, height = window.row_off, window.row_off + window.height, dst.height
        col0, width = window.col_off, window.width
        pending = self._pending
        if pending is None or pending[0] != col0:
            band = row0 // OUT_BLOCK * OUT_BLOCK
            rows = min(OUT_BLOCK, height - band)
            pending = self._pending = [col0, band, np.empty(
                (values.shape[0], rows, width), dtype=values.dtype), row0]
        start = row0
        while start < stop:
            _, band, buf, filled = pending
            if start != filled:
                raise RuntimeError(f"writer: rows {start}.. arrive before {filled}")
            cut = min(stop, band + buf.shape[1])
            buf[:, start - band : cut - band] = values[:, start - row0 : cut - row0]
            pending[3] = start = cut
            if cut == band + buf.shape[1]:  # a whole block row
                for c in range(0, width, OUT_BLOCK):
                    w = min(OUT_BLOCK, width - c)
                    dst.write(buf[:, :, c : c + w],
                              window=Window(col0 + c, band, w, buf.shape[1]))
                if checkpoint.due(cut, height, width):
                    dst.close()  # the file's directory now lists every block written
                    checkpoint.record(self.out.path, col0, cut)
                    dst = self._open("r+")
                if cut < height:
                    pending[1:] = [cut, np.empty((values.shape[0], min(OUT_BLOCK, height - cut),
                                                  width), dtype=values.dtype), cut]
                else:
                    self._pending = None  # the chunk is done
        return dst

    def _finish(self, acc: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> np.ndarray:
        y = np.divide(acc, np.maximum(weight, 1e-12), out=acc)  # acc is this writer's copy
        values = self.out.target.normalizer.to_data(y, self.out.profile["dtype"])
        return apply_nodata(values, valid, self.out.nodata)


def _tiles(
    reader_q: queue.Queue, stop: threading.Event, tile: int, waited: list[float]
) -> Iterator[tuple]:
    """(strip, column, input tile, tile has valid pixels, strip valid) in plan order.

    ``waited[0]`` accumulates the seconds spent waiting for the reader.
    """
    while True:
        started = time.perf_counter()
        item = get(reader_q, stop)
        waited[0] += time.perf_counter() - started
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        strip, x, valid, c_lo = item
        yield strip, None, None, None, valid, c_lo  # marks the start of a strip
        for c in strip.tile_cols:
            sl = slice(c - c_lo, c - c_lo + tile)
            yield strip, c, x[:, :, sl], bool(valid[:, sl].any()), None, None


class BlendThread(threading.Thread):
    """Adds each batch's outputs into the accumulator off the compute thread."""

    def __init__(self, blender: Blender, in_q: queue.Queue, writer_q: queue.Queue, stop,
                 clock: StageClock):
        super().__init__(daemon=True, name="geotranslate-blender")
        self.blender, self.in_q, self.writer_q, self.stop = blender, in_q, writer_q, stop
        self.clock = clock
        self.error: BaseException | None = None

    def run(self) -> None:
        _lower_priority()
        try:
            while (item := get(self.in_q, self.stop)) is not None:
                with self.clock("blend"):
                    self.blender.consume(*item)
            with self.clock("blend"):
                self.blender.close()
            put(self.writer_q, None, self.stop)
        except Stop:
            return
        except BaseException as e:
            self.error = e
            self.stop.set()


def run_pipeline(
    inp: PipelineInput, compute: PipelineCompute, out: PipelineOutput, progress: bool | None,
    stage_seconds: dict[str, float] | None = None,
) -> tuple[int, int, float, float]:
    """Reader thread -> batched generator (this thread) -> blending thread -> writer thread.

    Returns (tiles, tiles skipped because they hold no valid pixel, seconds the compute
    thread waited for input, seconds it waited to hand outputs on): the two waits say whether
    reading or writing held the generator back. ``stage_seconds`` (a dict) receives the CPU
    seconds of each of :data:`STAGES`, also logged at INFO.
    """
    from tqdm import tqdm

    stop = threading.Event()
    reader_q: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    blend_q: queue.Queue = queue.Queue(maxsize=2)
    writer_q: queue.Queue = queue.Queue(maxsize=WRITE_BEHIND)
    tile, batch_size = inp.tile, compute.batch_size
    weights = blend_weights(tile, out.overlap, out.blend)
    blender = Blender(out.out_row0, tile, out.target.band_count, weights, writer_q, stop)
    clock = StageClock()
    threads = [
        Reader(inp, reader_q, stop, clock),
        BlendThread(blender, blend_q, writer_q, stop, clock),
        Writer(out, writer_q, stop, clock),
    ]
    total = sum(len(s.tile_cols) for s in inp.plan)
    # by default no bar when stderr is not a terminal (logs, CI): geotranslate/log.py
    bar = tqdm(total=total, unit="tile", disable=not show_progress(progress), file=sys.stderr,
               leave=False, dynamic_ncols=True)
    computed = skipped = 0
    input_wait, output_wait = [0.0], 0.0
    for thread in threads:
        thread.start()
    # near-constant areas drive instance-normalized activations into denormal floats, which
    # are many times slower on CPUs; flushing them to zero changes nothing visible
    flush_denormal = compute.device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        batch: list[np.ndarray] = []
        pending: list[tuple] = []  # strip starts and tiles, in order, for the blender
        for strip, c, x, has_valid, strip_valid, c_lo in _tiles(reader_q, stop, tile, input_wait):
            if c is None:
                pending.append(("strip", strip, strip_valid, c_lo))
            elif not has_valid:
                skipped += 1  # every pixel it covers is nodata in the output anyway
                bar.update(1)
            else:
                pending.append(("tile", strip, c, len(batch)))
                batch.append(x)
            if len(batch) == batch_size:
                with clock("forward"):
                    outputs = _forward(compute, batch)
                started = time.perf_counter()
                put(blend_q, (pending, outputs), stop)
                output_wait += time.perf_counter() - started
                computed += len(batch)
                bar.update(len(batch))
                batch, pending = [], []
        with clock("forward"):
            outputs = _forward(compute, batch) if batch else None
        put(blend_q, (pending, outputs), stop)
        put(blend_q, None, stop)
        computed += len(batch)
        bar.update(len(batch))
        for thread in threads[1:]:
            while thread.is_alive():
                thread.join(timeout=0.1)
        _raise_thread_error(threads)
    except Stop:
        _raise_thread_error(threads)
        raise
    finally:
        if flush_denormal:
            torch.set_flush_denormal(False)
        stop.set()
        bar.close()
        for thread in threads:
            thread.join(timeout=30)
    if stage_seconds is not None:
        stage_seconds.update(clock.seconds)
    log.info("stage CPU seconds: %s", ", ".join(f"{k} {v:.2f}" for k, v in clock.seconds.items()))
    return computed + skipped, skipped, input_wait[0], output_wait


def _lower_priority() -> None:
    """Let the compute thread win the CPU over the I/O threads when cores are scarce (Linux)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IO_NICENESS)


def _raise_thread_error(threads: list[threading.Thread]) -> None:
    for thread in threads:
        error = getattr(thread, "error", None)
        if error is not None:
            raise error


def _forward(compute: PipelineCompute, batch: list[np.ndarray]) -> np.ndarray:
    # every forward pass has the same batch size (the last one padded with copies): kernels
    # may pick other algorithms for other shapes, and a resumed run, whose batches hold other
    # tiles, must get the same bits
    n = len(batch)
    batch = batch + batch[-1:] * (compute.batch_size - n)
    x = torch.from_numpy(np.stack(batch)).to(compute.device, non_blocking=True)
    if compute.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), compute.autocast():
        y = compute.generator(x)
    return y[:n].float().cpu().numpy()
