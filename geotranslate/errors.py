"""The exceptions for problems the user can fix, and the one-line form of any error.

The CLI prints a :class:`GeotranslateError` as a single line and exits 1; anything else is a
bug and keeps its traceback. Three kinds say what went wrong, and each can also be caught as
the built-in exception it is a case of (as rasterio's ``RasterioIOError`` is an ``OSError``):

- :class:`InputError` (a ``ValueError``): a file or its contents are unusable: a raster with no
  CRS, a corrupt meta.json, chips of the wrong size, a model file of another format;
- :class:`OptionError` (a ``ValueError``): a setting is impossible: an unknown choice, a number
  out of range, options that contradict each other;
- :class:`StorageError` (an ``OSError``): reading or writing failed: a full disk, a missing
  directory, no permission, an output that would replace an input.

A plain :class:`GeotranslateError` remains for the rest: an environment problem (no CUDA or
MPS device, fewer GPUs than asked, too little memory, no network, a package missing) or a run
that fails on its own (training that diverges, a generator ONNX cannot express, a mosaic with
no outputs left to join).
"""

from __future__ import annotations


class GeotranslateError(Exception):
    """A bad input, setting or environment that the user can fix; the message names the file."""


class InputError(GeotranslateError, ValueError):
    """A file, or what it holds, cannot be used; the message names the file and the problem."""


class OptionError(GeotranslateError, ValueError):
    """A setting is impossible or contradicts another; the message names the option."""


class StorageError(GeotranslateError, OSError):
    """Reading or writing failed, or would replace something it must not; names the path."""

    def __str__(self) -> str:  # OSError's str() would show (errno, strerror) for 2 arguments
        return " ".join(str(a) for a in self.args)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type's name), for one-line errors.

    GDAL, torch and safetensors messages run over several lines; the user gets the first.
    Where rasterio only points at "the previous exception", that one's message is given.
    """
    cause = getattr(error, "__cause__", None) or getattr(error, "__context__", None)
    if cause is not None and "See previous exception" in str(error):
        # rasterio's "Read failed. See previous exception for details.": the cause is GDAL's
        return first_line(cause, limit)
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
