"""Resumable prediction: the partial GeoTIFF, its progress file and what is left to do.

While a raster is translated, the output is written under a fixed hidden name beside the final
one (``.OUT.resume.tif``), never under the final name. The writer writes whole rows of output
blocks, each block once and in grid order; at rows fixed by the grid (:func:`checkpoint_rows`
and each chunk's end) it closes the file (so its directory on disk lists every block written
so far), syncs it and records in ``.OUT.resume.json`` how far it got (column chunk and output
row) and the file's size and the SHA-256 of its end. Blocks before that point are never
written again, so after an interruption, even a SIGKILL, the file holds them intact;
``--resume`` cuts it back to the recorded size, dropping what came after.

``--resume`` checks the progress file (format, the same input, model weights and options) and
the partial file, and that the input is unchanged (:func:`input_identity`: size, modification
time and content digest of each local file; ETag or Last-Modified and size of each remote
one), then computes only the tiles that touch the rows not yet recorded, on the same tile
grid and in the same order: the blended result equals that of an uninterrupted run.
A successful run removes both files; Ctrl-C keeps them for ``--resume``; any other error
removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import rasterio

from geotranslate import schema as sc
from geotranslate.errors import InputError, OptionError, StorageError, first_line
from geotranslate.files import display_path, temp_path
from geotranslate.log import logger
from geotranslate.predict.grid import OUT_BLOCK, Strip
from geotranslate.raster.opening import HTTP_SCHEMES
from geotranslate.raster.sources import RasterSource

PROGRESS_FORMAT = "geotranslate-predict-progress"
#: output pixels written between two checkpoints (closing, syncing and recording the
#: partial file) at least; checkpoints fall on whole block rows and at every chunk's end.
CHECKPOINT_PIXELS = 16 * 2**20
#: bytes at the end of the partial file whose SHA-256 the progress file records
TAIL_BYTES = 64 * 2**10

#: local input files up to this size get a SHA-256 of their whole content in the resume
#: identity; larger ones a SHA-256 of IDENTITY_SAMPLES evenly spaced chunks (first and last
#: included) and their size and modification time, which a rewrite changes too
FULL_DIGEST_BYTES = 256 * 2**20
IDENTITY_SAMPLES = 64
IDENTITY_CHUNK = 2**20

_PROGRESS_SCHEMA = sc.Obj({
    "format": sc.Str((PROGRESS_FORMAT,)),
    "key": sc.Obj(),
    "pid": sc.Int(min=0),
    "done": sc.Opt(sc.Obj({"chunk_col": sc.Int(min=0), "row": sc.Int(min=0),
                           "size": sc.Int(min=0), "data_start": sc.Int(min=0),
                           "tail_sha256": sc.Str()})),
})


def input_identity(source: RasterSource) -> list[dict]:
    """What identifies the content of every file or remote dataset ``source`` reads (see
    :data:`FULL_DIGEST_BYTES`), for ``--resume`` to refuse an input changed meanwhile."""
    identity = []
    for name in source.files:
        try:
            st = os.stat(name)
            identity.append({"file": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "sha256": _file_digest(Path(name), st.st_size)})
        except OSError as e:
            raise StorageError(f"{name}: cannot read ({e.strerror or e})") from None
    for gdal_name in source.remote:
        identity.append({"remote": gdal_name, **_remote_identity(gdal_name)})
    return identity


def _file_digest(path: Path, size: int) -> str:
    """SHA-256 of the whole file, or ``sampled:`` SHA-256 of evenly spaced chunks of a large
    one (:data:`FULL_DIGEST_BYTES`)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= FULL_DIGEST_BYTES:
            while chunk := f.read(8 * 2**20):
                digest.update(chunk)
            return digest.hexdigest()
        last = size - IDENTITY_CHUNK
        for i in range(IDENTITY_SAMPLES):
            f.seek(last * i // (IDENTITY_SAMPLES - 1))
            digest.update(f.read(IDENTITY_CHUNK))
    return "sampled:" + digest.hexdigest()


def _remote_identity(gdal_name: str) -> dict:
    """ETag, Last-Modified and size of an http(s) dataset, from one request for its first byte
    (as GDAL itself asks); for other remote names (/vsis3/, whose requests need signing) a
    SHA-256 of three decoded windows and the dataset's shape."""
    import urllib.request

    url = gdal_name.split("/vsicurl/", 1)[1] if gdal_name.startswith("/vsicurl/") else None
    if url and url.startswith(HTTP_SCHEMES):
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                headers = response.headers
        except OSError:  # refused or unreachable: the reads will say what is wrong
            return {"unchecked": True}
        size = (headers.get("Content-Range") or "").rpartition("/")[2]
        return {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
                "size": size or headers.get("Content-Length")}
    return {"pixels_sha256": _pixels_digest(gdal_name)}


def _pixels_digest(gdal_name: str) -> str:
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    from geotranslate.raster.opening import open_dataset
    from geotranslate.raster.sources import single_source

    digest = hashlib.sha256()
    with open_dataset(single_source(gdal_name)) as ds:
        digest.update(repr((ds.width, ds.height, ds.count, ds.dtypes)).encode())
        h, w = min(256, ds.height), min(256, ds.width)
        try:
            for row, col in [(0, 0), ((ds.height - h) // 2, (ds.width - w) // 2),
                             (ds.height - h, ds.width - w)]:
                digest.update(ds.read(window=Window(col, row, w, h)).tobytes())
        except RasterioError as e:
            raise StorageError(
                f"{gdal_name}: read failed ({first_line(e.__cause__ or e)})") from None
    return digest.hexdigest()


def partial_paths(out: Path) -> tuple[Path, Path]:
    """The partial GeoTIFF and its progress file for the final output ``out``."""
    name = display_path(out.name)
    return out.with_name(f".{name}.resume.tif"), out.with_name(f".{name}.resume.json")


#: progress files that runs in this process are writing now
_WRITING: set[Path] = set()


def _writer_alive(pid: int, progress: Path) -> bool:
    if pid == os.getpid():
        return progress.resolve() in _WRITING  # a run inside another, in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def checkpoint_rows(chunk_width: int) -> int:
    """Output rows between two checkpoints in a chunk ``chunk_width`` wide: whole block rows
    holding at least :data:`CHECKPOINT_PIXELS`."""
    blocks = math.ceil(CHECKPOINT_PIXELS / (max(1, chunk_width) * OUT_BLOCK))
    return OUT_BLOCK * max(1, blocks)


def _tail_sha256(path: Path, size: int, data_start: int) -> str:
    """SHA-256 of the last :data:`TAIL_BYTES` of the file's first ``size`` bytes, not reaching
    before ``data_start`` (the first block's data: the directory before it is rewritten in
    place at every close)."""
    start = min(size, max(data_start, size - TAIL_BYTES))
    with path.open("rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(size - start)).hexdigest()


def _data_start(tiff: Path) -> int:
    """Where the first block's data starts (the first block written, so the lowest)."""
    with rasterio.open(tiff) as ds:
        return int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) or 0)


@dataclass
class Checkpoint:
    """The writer's side: where to checkpoint and how to record it.

    Checkpoints fall at rows that depend on the grid alone (:func:`checkpoint_rows`, and each
    chunk's end), never on the clock, so an uninterrupted run and one resumed from any of its
    checkpoints close and reopen the file at the same points and write the same bytes.
    """

    progress: Path
    key: dict
    start: tuple[int, int] | None = None  # (chunk's first column, output row) already done
    data_start: int | None = None  # the first block's offset in the partial file

    def due(self, row: int, height: int, chunk_width: int) -> bool:
        """Whether to checkpoint once the rows of a chunk above ``row`` are written."""
        return row == height or row % checkpoint_rows(chunk_width) == 0

    def record(self, tiff: Path, chunk_col: int, row: int) -> None:
        """Sync the (closed) partial file, then record that it is complete up to ``row``, with
        its size and the SHA-256 of its last :data:`TAIL_BYTES` (what ``--resume`` checks)."""
        fd = os.open(tiff, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if self.data_start is None:
            self.data_start = _data_start(tiff)
        self._write({"chunk_col": chunk_col, "row": row, "size": size,
                     "data_start": self.data_start,
                     "tail_sha256": _tail_sha256(tiff, size, self.data_start)})

    def _write(self, done: dict | None) -> None:
        body = {"format": PROGRESS_FORMAT, "key": self.key, "pid": os.getpid(), "done": done}
        tmp = self.progress.with_name(self.progress.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.progress)


def open_partial(out: Path, key: dict, profile: dict, *, resume: bool,
                 overwrite: bool) -> tuple[Path, Checkpoint | None]:
    """The partial file to write and its checkpoint state (``start`` set when resuming).

    Refuses a progress file that does not match ``key`` or is corrupt, and (without
    ``resume`` or ``overwrite``) a partial that an interrupted run left. While another live
    run writes the partial, this one writes a temporary file of its own, not resumable
    (checkpoint None): the first to finish gets the name.
    """
    tiff, progress = partial_paths(out)
    checkpoint = Checkpoint(progress, key)
    if progress.exists():
        meta = sc.load_json(progress)
        sc.validate(meta, _PROGRESS_SCHEMA, progress)
        if _writer_alive(meta["pid"], progress):
            if resume:
                raise StorageError(
                    f"{out}: another run (process {meta['pid']}) is writing it; nothing to "
                    "resume while it runs")
            return temp_path(out, ".gtiff.part"), None
        if resume:
            checkpoint.start = _check_resumable(out, tiff, progress, meta, key, profile)
            if checkpoint.start is not None:
                checkpoint.data_start = meta["done"]["data_start"]
        elif not overwrite:
            raise StorageError(
                f"{out}: an interrupted run left a partial result ({progress.name}); pass "
                "--resume to continue it or --overwrite to start again")
    elif resume:
        logger.warning(f"{out}: nothing to resume; starting from the beginning")
    if checkpoint.start is None:
        with contextlib.suppress(FileNotFoundError):
            tiff.unlink()
    checkpoint._write(meta["done"] if checkpoint.start is not None else None)
    _WRITING.add(progress.resolve())
    return tiff, checkpoint


def _check_resumable(out, tiff, progress, meta, key, profile) -> tuple[int, int] | None:
    if key.get("input_identity") != meta["key"].get("input_identity"):
        raise InputError(
            f"{key.get('input')}: changed since the interrupted run of {out} (size, time or "
            "content); rerun with --overwrite to start again")
    differs = sorted(k for k in set(key) | set(meta["key"]) if key.get(k) != meta["key"].get(k))
    if differs:
        raise OptionError(
            f"{progress}: the interrupted run of {out} used another {', '.join(differs)}; "
            "rerun with the same model and options, or with --overwrite to start again")
    if meta["done"] is None:
        return None
    _restore_checkpoint(tiff, meta["done"])
    try:
        with rasterio.open(tiff) as ds:
            shape = (ds.width, ds.height, ds.count, ds.dtypes[0])
    except (rasterio.errors.RasterioError, OSError) as e:
        raise InputError(f"{tiff}: partial result unreadable ({e}); rerun with "
                         "--overwrite to start again") from None
    want = (profile["width"], profile["height"], profile["count"], profile["dtype"])
    if shape != want:
        raise InputError(f"{tiff}: partial result is {shape}, expected {want}; rerun "
                         "with --overwrite to start again")
    return meta["done"]["chunk_col"], meta["done"]["row"]


def _restore_checkpoint(tiff: Path, done: dict) -> None:
    """Cut the partial file back to its size at the recorded checkpoint, after checking it.

    A run killed after that checkpoint may have appended blocks (it never rewrites the data
    before them); they are dropped, so the resumed run goes on from the data an uninterrupted
    run had there. The directory at the head of the file (which a run interrupted during or
    after a later close has rewritten in place) lists those blocks at the very offsets and
    sizes the resumed run gives them again, since it writes the same blocks in the same order;
    its close rewrites the directory whole.
    """
    size = done["size"]
    try:
        actual = tiff.stat().st_size
        if actual < size:
            raise InputError(
                f"{tiff}: partial result is {actual} bytes, shorter than the {size} recorded "
                "at its last checkpoint; rerun with --overwrite to start again")
        if _tail_sha256(tiff, size, done["data_start"]) != done["tail_sha256"]:
            raise InputError(
                f"{tiff}: partial result differs from the one recorded at its last checkpoint; "
                "rerun with --overwrite to start again")
        if actual > size:
            with tiff.open("r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise StorageError(f"{tiff}: partial result unreadable ({e.strerror or e}); "
                           "rerun with --overwrite to start again") from None


def remove_partial(out: Path, tiff: Path, checkpoint: Checkpoint | None) -> None:
    """Remove what this run wrote: its partial and progress file, or its temporary file."""
    keep_partial(tiff, checkpoint)
    for p in partial_paths(out) if checkpoint is not None else (tiff,):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def keep_partial(tiff: Path, checkpoint: Checkpoint | None) -> None:
    """This run stops writing: its partial stays for --resume (a temporary file is removed)."""
    if checkpoint is None:
        with contextlib.suppress(FileNotFoundError):
            tiff.unlink()
    else:
        _WRITING.discard(checkpoint.progress.resolve())


def remaining_strips(plan: list[Strip], start: tuple[int, int] | None, tile: int,
                     out_row0: int, out_stop: int) -> list[Strip]:
    """The strips still to compute after ``start`` (chunk column, output row) was written.

    Chunks before the recorded one are done; in it, only tile rows reaching below the recorded
    row are computed (they alone add to rows not yet written), and only those rows are written.
    """
    if start is None:
        return plan
    chunk_col, row = start
    chunks = {s.chunk_cols[0]: s.chunk for s in plan}
    if chunk_col not in chunks:
        raise InputError(f"progress: column {chunk_col} is no chunk of this plan")
    current, done_row = chunks[chunk_col], row + out_row0  # grid rows
    left = []
    for s in plan:
        if s.chunk < current:
            continue
        if s.chunk == current:
            if done_row >= out_stop or s.row + tile <= done_row:
                continue
            s = replace(s, finish=(max(s.finish[0], done_row), s.finish[1]))
        left.append(s)
    return left
