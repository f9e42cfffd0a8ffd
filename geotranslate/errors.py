"""The one exception type for problems with the user's input.

The CLI prints a :class:`GeotranslateError` as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GeotranslateError(Exception):
    """A bad input, setting or environment that the user can fix; the message names the file."""


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
