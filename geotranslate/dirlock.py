"""The lock of a chip directory: one export-tiles run at a time, and a mark of unfinished runs.

``DIR/export.lock`` holds the writer's PID, host and start time (JSON). The exclusion itself is
an ``flock`` on that file: the kernel drops it when the holder exits in any way (even
SIGKILL), so a lock whose holder is gone is recognised without guessing from PIDs (which are
reused, and cannot be checked on another host) and two processes cannot both take over a
stale one. The file is removed when the run leaves the directory consistent (finished, or
rolled back); after a kill or Ctrl-C it stays, which marks the directory as holding an
unfinished run: ``train`` refuses it, and the next export-tiles run takes the lock over (with a
note) and completes the directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from geotranslate.errors import StorageError
from geotranslate.files import write_failed
from geotranslate.log import logger

LOCK_NAME = "export.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a directory's lock."""

    pid: int | None
    host: str | None
    started: str | None

    def __str__(self) -> str:
        pid = "an unknown PID" if self.pid is None else f"PID {self.pid}"
        host = f" on {self.host}" if self.host else ""
        since = f", started {self.started}" if self.started else ""
        return f"{pid}{host}{since}"


def _read_holder(fd: int) -> Holder | None:
    """The holder written in the lock file, None when it is empty; never raises."""
    try:
        raw = os.pread(fd, 4096, 0)
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        doc = json.loads(raw.decode("utf-8", "replace"))
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:
        return Holder(None, None, None)
    pid = doc.get("pid")
    return Holder(
        pid if isinstance(pid, int) else None,
        str(doc["host"]) if doc.get("host") else None,
        str(doc["started"]) if doc.get("started") else None,
    )


def _locking_unsupported(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class DirectoryLock:
    """``with``-less lock of one directory: :meth:`acquire`, then :meth:`release`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> Holder | None:
        """Take the lock; returns the earlier holder whose run did not finish, if any.

        Raises a one-line error naming the holder when another process has it.
        """
        for _ in range(100):  # retried only when the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                if holder is None:  # created a moment ago, not written yet
                    time.sleep(0.2)
                    holder = _read_holder(fd)
                os.close(fd)
                raise StorageError(
                    f"{self.folder}: another export-tiles run ({holder or 'an unknown PID'}) is "
                    "writing into this directory; wait for it to finish or choose another --out"
                ) from None
            except OSError as e:
                if not _locking_unsupported(e):
                    os.close(fd)
                    raise
                # some network file systems have no locks: the file still marks an
                # unfinished run, but a concurrent run cannot be detected
                logger.warning(f"{self.path}: the file system does not support locks "
                               f"({e.strerror}); a concurrent export-tiles run into "
                               f"{self.folder} would not be detected")
            # the holder we waited for may have removed the file between our open and flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_holder(fd)
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            except OSError as e:  # a full disk: leave no empty lock behind
                if previous is None:
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                os.close(fd)
                raise write_failed(self.path, e.strerror or str(e)) from None
            self._fd = fd
            return previous
        raise StorageError(f"{self.path}: could not be locked (replaced repeatedly)")

    def release(self, *, remove: bool) -> None:
        """Drop the lock; ``remove`` deletes the file (the directory is consistent)."""
        if self._fd is None:
            return
        try:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # still holding the lock: nobody can take it in between
        finally:
            os.close(self._fd)
            self._fd = None


def lock_state(folder: str | os.PathLike) -> tuple[str, Holder | None]:
    """("free" | "held" | "unfinished", holder) of a directory's export lock.

    "held": an export-tiles run is writing into it now; "unfinished": one was killed or
    interrupted and left its lock file (the directory may hold chips meta.json lacks).
    """
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "free", None
    try:
        holder = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held", holder
        except OSError as e:
            if not _locking_unsupported(e):
                raise
            return "unfinished", holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "unfinished", holder
    finally:
        os.close(fd)
