"""The windows of an export's pass, read in worker threads and handed back in order."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future

from geotranslate.chips.grid import Job
from geotranslate.errors import GeotranslateError
from geotranslate.raster.io import source_of
from geotranslate.raster.opening import open_dataset

#: windows read ahead per worker (``workers`` > 1): bounds memory to a few windows per worker
READ_AHEAD = 2


class WindowReader:
    """Reads the windows of a pass, in ``workers`` threads when more than one (GDAL reads and
    warps without the GIL), and hands the reads back in the order asked, so statistics, chips
    and the index do not depend on the scheduling. Each thread reads through its own dataset
    handles (a rasterio dataset is not thread-safe), opened and closed in that thread; at most
    READ_AHEAD reads per worker wait.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def read(self, todo: list[tuple[Job, int]]):
        """Yield ((job, window index), {domain: (data, valid)}) for each of ``todo``, in order."""
        if self.workers == 1:
            for job, wi in todo:
                yield (job, wi), {d: read(job.windows[wi]) for d, read in job.readers.items()}
            return
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name="window-reader", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:  # "can't start new thread": a process or memory limit
                raise GeotranslateError(
                    f"--workers {self.workers}: cannot start that many threads here ({e}); "
                    "use fewer") from None
            self._threads.append(thread)
        pending: deque = deque()
        try:
            for item in todo:
                future: Future = Future()
                self._tasks.put((future, *item))
                pending.append((item, future))
                if len(pending) >= READ_AHEAD * self.workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()  # not started: dropped

    def _work(self) -> None:
        """One worker thread: its own handles on the datasets, closed when it stops."""
        with contextlib.ExitStack() as stack:
            handles: dict[int, object] = {}
            readers: dict[int, dict] = {}

            def handle(ds):
                if id(ds) not in handles:
                    handles[id(ds)] = stack.enter_context(open_dataset(source_of(ds)))
                return handles[id(ds)]

            while (task := self._tasks.get()) is not None:
                future, job, wi = task
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if id(job) not in readers:
                        readers[id(job)] = job.make_readers(stack, handle)
                    future.set_result(
                        {d: read(job.windows[wi]) for d, read in readers[id(job)].items()}
                    )
                except BaseException as e:  # handed to the main thread, which raises it
                    future.set_exception(e)

    def close(self) -> None:
        """Stop the threads once their current reads end; they close their handles."""
        with contextlib.suppress(queue.Empty):
            while True:  # reads not started are dropped
                task = self._tasks.get_nowait()
                if task is not None:
                    task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
