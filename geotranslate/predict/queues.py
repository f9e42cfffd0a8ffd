"""Bounded hand-over between the reader, compute and writer threads that can be abandoned.

Every wait polls a shared stop event, so an error or Ctrl-C in any thread stops them all
promptly instead of leaving one blocked on a full or empty queue.
"""

from __future__ import annotations

import queue
import threading


class Stop(Exception):
    """Raised inside a worker when the run is being abandoned."""


def put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def get(q: queue.Queue, stop: threading.Event) -> object:
    while True:
        if stop.is_set():
            raise Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
