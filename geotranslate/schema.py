"""Check the files the tool reads back (meta.json, config.json, model.json, checkpoints).

A schema is built from a few small node types (:class:`Int`, :class:`Num`, :class:`Str`,
:class:`Obj`, ...). :func:`validate` walks a value against one and raises a one-line
:class:`~geotranslate.errors.GeotranslateError` naming the file and the field
(``meta.json: field domains.a.band_count: expected an integer >= 1, got "abc"``).
Objects allow keys they do not list, so files written by newer versions (extra optional
fields) still load; listed keys are required unless marked optional.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from geotranslate.errors import InputError, StorageError


class Invalid(Exception):
    """A value that does not fit its schema: where (dotted field path) and what was expected."""

    def __init__(self, where: str, expected: str, got: object):
        super().__init__(where)
        self.where, self.expected, self.got = where, expected, got


def describe(value: object) -> str:
    """A short rendering of a JSON value for messages (long values are cut)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value) if isinstance(value, (str, int, float)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


class Node:
    expected = "a value"

    def check(self, value: object, where: str) -> None:
        if not self.accepts(value):
            raise Invalid(where, self.expected, value)

    def accepts(self, value: object) -> bool:
        return True



class Int(Node):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max
        bounds = [f">= {min}"] * (min is not None) + [f"<= {max}"] * (max is not None)
        self.expected = "an integer" + (" " + " and ".join(bounds) if bounds else "")

    def accepts(self, value):
        return (isinstance(value, int) and not isinstance(value, bool)
                and (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max))


class Num(Node):
    """A number (an int is fine); finite unless ``finite=False``."""

    def __init__(self, finite: bool = True, min: float | None = None):
        self.finite, self.min = finite, min
        self.expected = ("a finite number" if finite else "a number") + (
            f" >= {min}" if min is not None else "")

    def accepts(self, value):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (not self.finite or math.isfinite(value))
                and (self.min is None or value >= self.min))


class Str(Node):
    def __init__(self, choices: tuple[str, ...] | None = None):
        self.choices = choices
        self.expected = "a string" if choices is None else "one of " + ", ".join(choices)

    def accepts(self, value):
        return isinstance(value, str) and (self.choices is None or value in self.choices)


class Bool(Node):
    expected = "true or false"

    def accepts(self, value):
        return isinstance(value, bool)


class Type(Node):
    """An instance of a Python class (checkpoints hold tensors)."""

    def __init__(self, cls: type, name: str):
        self.cls, self.expected = cls, name

    def accepts(self, value):
        return isinstance(value, self.cls)


class Opt(Node):
    """``null`` or ``inner``."""

    def __init__(self, inner: Node):
        self.inner = inner
        self.expected = f"null or {inner.expected}"

    def check(self, value, where):
        if value is not None:
            self.inner.check(value, where)


class List(Node):
    def __init__(self, item: Node = Node(), min_len: int = 0):
        self.item, self.min_len = item, min_len
        self.expected = "a list" + (f" of at least {min_len}" if min_len else "")

    def check(self, value, where):
        if not isinstance(value, list) or len(value) < self.min_len:
            raise Invalid(where, self.expected, value)
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")


class Obj(Node):
    """An object with these keys (``optional`` ones may be absent); other keys are allowed."""

    expected = "an object"

    def __init__(self, fields: dict[str, Node] | None = None,
                 optional: dict[str, Node] | None = None):
        self.fields, self.optional = fields or {}, optional or {}

    def check(self, value, where):
        if not isinstance(value, dict):
            raise Invalid(where, self.expected, value)
        for key, node in self.fields.items():
            if key not in value:
                raise Invalid(_join(where, key), "a value (the field is missing)", _MISSING)
            node.check(value[key], _join(where, key))
        for key, node in self.optional.items():
            if key in value:
                node.check(value[key], _join(where, key))


class Map(Node):
    """An object whose keys are free (or among ``keys``) and whose values all fit ``value``."""

    def __init__(self, value: Node, keys: tuple[str, ...] | None = None, min_len: int = 0):
        self.value, self.keys, self.min_len = value, keys, min_len
        self.expected = "an object" + (f" with keys among {', '.join(keys)}" if keys else "") + (
            f" of at least {min_len} entries" if min_len else "")

    def check(self, value, where):
        if not isinstance(value, dict) or len(value) < self.min_len or (
                self.keys is not None and not set(value) <= set(self.keys)):
            raise Invalid(where, self.expected, value)
        for key, v in value.items():
            self.value.check(v, _join(where, str(key)))


_MISSING = object()


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def validate(value: object, schema: Node, path: str | os.PathLike) -> None:
    """Raise a one-line GeotranslateError naming ``path`` and the field when ``value`` misfits."""
    try:
        schema.check(value, "")
    except Invalid as e:
        raise invalid(path, e.where, e.expected, e.got) from None


def invalid(path: str | os.PathLike, where: str, expected: str,
            got: object = _MISSING) -> InputError:
    """The one-line error for a field of a read-back file that is not what it must be."""
    field = f"field {where}" if where else "the whole file"
    if got is _MISSING:
        return InputError(f"{path}: {field}: {expected}")
    return InputError(f"{path}: {field}: expected {expected}, got {describe(got)}")


def load_json(path: str | os.PathLike, problem: str = "corrupt") -> object:
    """Parse a JSON file, with one line for an unreadable, non-UTF-8, broken or too deep one.

    ``problem`` starts the reason (``"corrupt model file"``); NaN and infinity are accepted
    as JSON allows them in Python, and schemas refuse them where they do not belong.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: {problem} (not UTF-8 text)") from None
    except OSError as e:
        raise StorageError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: {problem} ({e})") from None
    except RecursionError:
        raise InputError(f"{p}: {problem} (JSON nested too deeply)") from None


# ---- shared pieces -------------------------------------------------------------------------

#: dtypes a raster (and so a model's domain) can have; complex and 64-bit ints are refused.
RASTER_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

DTYPE = Str(RASTER_DTYPES)
BAND_STATS = Obj({"min": Num(), "max": Num(), "mean": Num(), "std": Num(min=0),
                  "p2": Num(), "p98": Num(), "count": Int(min=0)})


def check_nodata(path, where: str, nodata: float | None, dtype: str) -> None:
    """Refuse a nodata value the dtype cannot hold (70000 for uint16)."""
    if nodata is None or not np.issubdtype(np.dtype(dtype), np.integer):
        return
    info = np.iinfo(np.dtype(dtype))
    if math.isnan(nodata) or not float(nodata).is_integer() or not (
            info.min <= nodata <= info.max):
        raise invalid(path, where, f"a value a {dtype} pixel can hold "
                      f"({info.min}..{info.max}), got {describe(nodata)}")
