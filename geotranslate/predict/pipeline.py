"""The streaming pipeline: reader thread -> batched generator -> blending -> writer thread.

The reader reads the strip of rows of each tile row once (not tile by tile), mirrors it at the
raster edges and normalizes it; the calling thread only runs batches through the generator; a
blending thread adds the outputs into the accumulator; the writer de-normalizes and casts
finished rows and hands them to the output (predict/output.py). Bounded queues between them
keep memory bounded and let reading and writing overlap the compute. The reader and the
writer each open their own rasterio dataset (datasets are not thread-safe); GDAL's block cache
is capped.
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
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geotranslate.errors import first_line
from geotranslate.files import write_failed
from geotranslate.log import show_progress
from geotranslate.predict.blend import Blender, blend_weights
from geotranslate.predict.grid import Strip
from geotranslate.predict.output import Output, apply_nodata
from geotranslate.predict.queues import Stop, get, put
from geotranslate.raster.io import (
    GDAL_CACHE_BYTES,
    open_raster,
    read_window,
)
from geotranslate.raster.windows import reflect_pad

if TYPE_CHECKING:
    from geotranslate.predict.plan import PredictPlan

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


class Reader(threading.Thread):
    """Reads, mirrors and normalizes the strip of each tile row of ``strips``, in order."""

    def __init__(self, plan: PredictPlan, strips: list[Strip], out_q: queue.Queue,
                 stop: threading.Event, clock: StageClock):
        super().__init__(daemon=True, name="geotranslate-reader")
        self.plan, self.strips, self.tile = plan, strips, plan.tile
        self.out_q, self.stop, self.clock = out_q, stop, clock

    def run(self) -> None:
        _lower_priority()
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
                open_raster(self.plan.source, allow_no_crs=True) as ds,
            ):
                for strip in self.strips:
                    put(self.out_q, (strip, *self._read(ds, strip)), self.stop)
            put(self.out_q, None, self.stop)
        except Stop:
            return
        except BaseException as e:  # handed to the main thread, which re-raises it
            with contextlib.suppress(Stop):
                put(self.out_q, e, self.stop)

    def _read(self, ds, strip: Strip) -> tuple[np.ndarray, np.ndarray, int]:
        """The strip's pixels (mirrored beyond the raster), normalized, and their validity."""
        row0, col0 = self.plan.grid.row_off, self.plan.grid.col_off
        c_lo, c_hi = strip.tile_cols[0], strip.tile_cols[-1] + self.tile
        rows = _span(strip.row + row0, strip.row + row0 + self.tile, ds.height)
        cols = _span(c_lo + col0, c_hi + col0, ds.width)
        (r_min, r_max, top, bottom), (c_min, c_max, left, right) = rows, cols
        window = Window(c_min, r_min, c_max - c_min, r_max - r_min)
        with self.clock("read"):
            if self.plan.read is not None:
                data, valid = self.plan.read(ds, window)
            else:
                data, valid = read_window(ds, window, list(self.plan.bands))
        with self.clock("normalize"):
            if top or bottom or left or right:
                data, valid = reflect_pad(data, valid, ((top, bottom), (left, right)))
            r0 = strip.row + row0 - (r_min - top)
            c0 = c_lo + col0 - (c_min - left)
            data = data[:, r0 : r0 + self.tile, c0 : c0 + c_hi - c_lo]
            valid = valid[r0 : r0 + self.tile, c0 : c0 + c_hi - c_lo]
            x = self.plan.domain_in.normalizer.to_model(data, valid)
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
    """Finishes accumulated rows (weighted mean, de-normalize, cast, nodata) and hands them to
    the output."""

    def __init__(self, plan: PredictPlan, output: Output, in_q: queue.Queue,
                 stop: threading.Event, clock: StageClock):
        super().__init__(daemon=True, name="geotranslate-writer")
        self.plan, self.output = plan, output
        self.in_q, self.stop, self.clock = in_q, stop, clock
        self.error: BaseException | None = None

    def run(self) -> None:
        _lower_priority()
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), warnings.catch_warnings():
                # GCP/RPC-referenced outputs have no transform, which is intended
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rows = self.output.open_rows()
                try:
                    while (item := get(self.in_q, self.stop)) is not None:
                        window, acc, weight, valid = item
                        with self.clock("cast"):
                            values = self._finish(acc, weight, valid)
                        with self.clock("write"):
                            rows.write(values, window)
                finally:
                    with self.clock("write"):
                        rows.close()
        except Stop:
            return
        except (RasterioError, OSError) as e:  # OSError: syncing a checkpoint
            self.error = write_failed(self.output.name, first_line(e))
        except BaseException as e:
            self.error = e
        if self.error is not None:
            self.stop.set()

    def _finish(self, acc: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> np.ndarray:
        y = np.divide(acc, np.maximum(weight, 1e-12), out=acc)  # acc is this writer's copy
        values = self.plan.domain_out.normalizer.to_data(y, self.plan.profile["dtype"])
        return apply_nodata(values, valid, self.plan.nodata)


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
    plan: PredictPlan, strips: list[Strip], output: Output, progress: bool | None,
    stage_seconds: dict[str, float] | None = None,
) -> tuple[int, int, float, float]:
    """Reader thread -> batched generator (this thread) -> blending thread -> writer thread:
    ``strips`` of ``plan`` computed and written into ``output``.

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
    weights = blend_weights(plan.tile, plan.overlap, plan.blend)
    blender = Blender(plan.out_rows[0], plan.tile, plan.domain_out.band_count, weights,
                      writer_q, stop)
    clock = StageClock()
    threads = [
        Reader(plan, strips, reader_q, stop, clock),
        BlendThread(blender, blend_q, writer_q, stop, clock),
        Writer(plan, output, writer_q, stop, clock),
    ]
    # by default no bar when stderr is not a terminal (logs, CI): geotranslate/log.py
    bar = tqdm(total=sum(len(s.tile_cols) for s in strips), unit="tile", file=sys.stderr,
               disable=not show_progress(progress), leave=False, dynamic_ncols=True)
    for thread in threads:
        thread.start()
    # near-constant areas drive instance-normalized activations into denormal floats, which
    # are many times slower on CPUs; flushing them to zero changes nothing visible
    flush_denormal = plan.compute.device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        counts = _compute(plan, reader_q, blend_q, stop, clock, bar)
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
    return counts


def _compute(plan: PredictPlan, reader_q: queue.Queue, blend_q: queue.Queue,
             stop: threading.Event, clock: StageClock, bar) -> tuple[int, int, float, float]:
    """The calling thread's part: batches of the reader's tiles through the generator, handed
    to the blending thread with the strip starts in order. Returns what run_pipeline does."""
    batch_size = plan.compute.batch_size
    computed = skipped = 0
    input_wait, output_wait = [0.0], 0.0
    batch: list[np.ndarray] = []
    pending: list[tuple] = []  # strip starts and tiles, in order, for the blender
    for strip, c, x, has_valid, strip_valid, c_lo in _tiles(reader_q, stop, plan.tile,
                                                           input_wait):
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
                outputs = _forward(plan, batch)
            started = time.perf_counter()
            put(blend_q, (pending, outputs), stop)
            output_wait += time.perf_counter() - started
            computed += len(batch)
            bar.update(len(batch))
            batch, pending = [], []
    with clock("forward"):
        outputs = _forward(plan, batch) if batch else None
    put(blend_q, (pending, outputs), stop)
    put(blend_q, None, stop)
    computed += len(batch)
    bar.update(len(batch))
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


def _forward(plan: PredictPlan, batch: list[np.ndarray]) -> np.ndarray:
    # every forward pass has the same batch size (the last one padded with copies): kernels
    # may pick other algorithms for other shapes, and a resumed run, whose batches hold other
    # tiles, must get the same bits
    compute = plan.compute
    n = len(batch)
    batch = batch + batch[-1:] * (compute.batch_size - n)
    x = torch.from_numpy(np.stack(batch)).to(compute.device, non_blocking=True)
    if compute.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), compute.autocast():
        y = plan.generator(x)
    return y[:n].float().cpu().numpy()
