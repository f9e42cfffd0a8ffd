"""The one exception type for problems with the user's input.

The CLI prints a :class:`GeotranslateError` as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GeotranslateError(Exception):
    """A bad input, setting or environment that the user can fix; the message names the file."""
