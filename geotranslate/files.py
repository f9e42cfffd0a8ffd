"""Files that are written safely and never over an input: the kit every command uses.

- :func:`atomic_path`: a temporary name beside the result, renamed onto it only when the
  block succeeds; the temporary files of a killed run are removed by the next run into the
  same folder (:func:`remove_stale_temps`);
- :func:`write_failed`: the one-line error of a failed write, saying when the disk is full;
- :func:`check_not_input`, :func:`check_file_output`, :func:`check_output_dir`,
  :func:`make_output_dir`: an output must not replace an input, nor be a directory (or lie
  under a file);
- :func:`display_path`, :func:`resolved_path`: paths as text any terminal can show, and as
  compared.

Nothing here knows about rasters: a raster source's files are listed by
:func:`geotranslate.raster.sources.input_files`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from geotranslate.errors import StorageError
from geotranslate.log import logger


def temp_path(final: str | os.PathLike, suffix: str = ".part") -> Path:
    """A new empty temporary file beside ``final``: ``.NAME.PID.XXXXXXXX<suffix>``.

    The PID tells a later run whether the file's maker is gone (:func:`remove_stale_temps`).
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    # a name that is not UTF-8 gets an escaped temporary name that GDAL can write; the
    # final rename gives the result its own name
    fd, name = tempfile.mkstemp(prefix=f".{display_path(final.name)}.{os.getpid()}.",
                                suffix=suffix, dir=parent)
    os.close(fd)
    return Path(name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or an odd number): leave its files alone
    return True


#: temporary names made by :func:`temp_path`, and files writers derive from them (GDAL's
#: ``.part.ovr.tmp``): ``.NAME.PID.XXXXXXXX[.gtiff].part[...]``
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.(?:gtiff\.)?part(?:\..+)?$")
_swept: set[str] = set()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` of runs that were killed (their PID is gone).

    Done once per folder and process (an export writes thousands of chips into one folder);
    one line on stderr says what was removed.
    """
    folder = Path(folder) if str(folder) else Path(".")
    key = os.fsdecode(folder.resolve())
    if key in _swept:
        return []
    _swept.add(key)
    removed: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
            removed.append((Path(entry.path), size))
    if removed:
        total = sum(size for _, size in removed) / 2**20
        logger.info(f"removed {len(removed)} temporary file(s) left in "
                    f"{display_path(folder)} by interrupted runs ({total:.1f} MiB)")
    return [path for path, _ in removed]


def not_utf8(path: str | os.PathLike) -> StorageError:
    """GDAL takes UTF-8 file names only: the error for one that is not."""
    return StorageError(
        f"{display_path(path)}: this path is not valid UTF-8, which GDAL cannot use; "
        "rename the file (or folder)"
    )


def display_path(path: str | os.PathLike) -> str:
    """A path as text that any terminal or log can take: undecodable bytes are escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_not_input(out: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                    what: str = "output", *, folders: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse an output path that is one of the command's input files (same path or same file,
    through symbolic or hard links), or lies in one of the input ``folders``.

    A raster source (``stack:``, a STAC item, a ``/vsizip/`` name) reads several files: list
    them with :func:`geotranslate.raster.sources.input_files` first."""
    out_path = Path(out)
    resolved = resolved_path(out_path)
    for path in map(Path, inputs):
        same = resolved == resolved_path(path)
        if not same and out_path.exists() and path.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out_path, path)
        if same:
            raise StorageError(
                f"{display_path(out_path)}: {what} would overwrite the input "
                f"{display_path(path)}; choose another name"
            )
    for folder in folders:
        folder = resolved_path(Path(folder))
        if resolved == folder or folder in resolved.parents:
            raise StorageError(
                f"{display_path(out_path)}: {what} would be written into the input folder "
                f"{display_path(folder)}; choose another name"
            )


def resolved_path(path: Path) -> Path:
    """The absolute path with symbolic links resolved; as given (made absolute) when a link
    loops."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> None:
    """Refuse an output directory that is a file or lies under one (it may not exist yet)."""
    folder = Path(path)
    for p in [folder, *folder.parents]:
        if p.exists() and not p.is_dir():
            where = "is a file" if p == folder else f"lies under the file {display_path(p)}"
            raise StorageError(f"{display_path(folder)}: {what} {where}, not a directory")


def make_output_dir(path: str | os.PathLike, what: str = "output directory") -> bool:
    """Create an output directory (and its parents); True if it was created. A file in the way
    (the path itself or a parent) is one line, not a traceback."""
    folder = Path(path)
    if folder.is_dir():
        return False
    check_output_dir(folder, what)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False  # made meanwhile by a concurrent run
    except OSError as e:
        raise StorageError(
            f"{display_path(folder)}: cannot create the {what} ({e.strerror or e})") from None
    return True


def check_file_output(path: str | os.PathLike) -> None:
    """Refuse an output file named like a directory: ``newdir/`` or an existing directory.

    ``Path("newdir/")`` drops the slash, so the check runs on the name as given.
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        raise StorageError(
            f"{text}: ends with '/' (a directory) but names an output file; give the file's "
            f"name, e.g. {text}NAME"
        )
    if Path(text).is_dir():
        raise StorageError(f"{text}: is a directory; give the output file's name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A run that dies (error, Ctrl-C, full disk) leaves no half-written file posing as a result;
    the temporary files of a killed run are removed by the next run into the same place.
    With ``overwrite=False`` the promise holds against a concurrent run too: the result is
    linked to its name, which fails if the name appeared meanwhile.
    """
    check_file_output(path)
    final = Path(path)
    if final.exists() and not overwrite:
        raise StorageError(f"{final}: already exists (pass --overwrite to replace it)")
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.exists():
        raise StorageError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise StorageError(f"{parent}: output directory is not writable")
    remove_stale_temps(parent)
    tmp = temp_path(final)
    try:
        yield tmp
        # mkstemp (and some writers, e.g. safetensors) make 0600 files: give the result the
        # user's usual mode, as a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, final)
        else:
            _link_new(tmp, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in OUTPUT_ERRNOS:
            raise write_failed(final, e.strerror) from None
        raise


def _link_new(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final`` only if nothing has it (atomic where links exist)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise StorageError(
            f"{final}: already exists (written by another run meanwhile; pass --overwrite to "
            "replace it)"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                           errno.EMLINK, errno.ENOSYS):
            raise
        # no hard links on this file system: the check and the rename are not one step
        if final.exists():
            raise StorageError(
                f"{final}: already exists (pass --overwrite to replace it)") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


#: write errors that say the output cannot be stored (rather than a bug or a bad input)
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: free space under which a failed write is put down to a full disk.
NEARLY_FULL_BYTES = 64 * 2**20


def write_failed(path: str | os.PathLike, reason: str) -> StorageError:
    """The one-line error for a write that failed, saying so when the disk is (nearly) full.

    Libraries report a full disk in their own words (SQLite: "Failed to commit transaction",
    torch: "unexpected pos"), so the free space is asked for directly.
    """
    folder = Path(path).parent
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder if folder.exists() else ".").free
        if free < NEARLY_FULL_BYTES:
            reason += f"; the disk is full ({free / 2**20:.1f} MiB free)"
    return StorageError(f"{path}: write failed ({reason})")
