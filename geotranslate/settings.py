"""How a setting is declared once: its name, type, default, help, allowed values and bounds.

A :class:`Setting` sits beside its owner: the training settings every method shares are the
fields of :class:`~geotranslate.train.config.TrainConfig` (declared with :func:`setting`), and
a method's own settings are its ``OPTIONS`` (geotranslate/methods/). The command line's options
(geotranslate/cli/options.py), the help's defaults, config.json's schema and the checks of
:func:`check` are all derived from these declarations. This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geotranslate.errors import OptionError


@dataclass(frozen=True)
class Setting:
    """One setting. ``default=None`` means "chosen from the method, the chips or the device";
    ``default_text`` then says how, for the help."""

    name: str  # the Python name: lambda_feat (the option is --lambda-feat)
    type: type  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    default_text: str | None = None  # shown as [default: ...] when the default is None
    negatable: bool = True  # bool: --name/--no-name (False: a plain --name flag)
    metavar: str | None = None
    cli: bool = True  # False: a setting of the Python API and config.json only

    @property
    def option(self) -> str:
        """The command-line spelling: ``--lambda-feat``."""
        return "--" + self.name.replace("_", "-")

    def with_default(self, default: Any, **changes: Any) -> Setting:
        """The same setting with another default (a method's own choice)."""
        return dataclasses.replace(self, default=default, **changes)


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field declared as a :class:`Setting`; its type is the field's annotation.

    ``kwargs`` are :class:`Setting`'s (choices, minimum, above, below, default_text, ...).
    """
    return dataclasses.field(default=default, metadata={"setting": (help, kwargs)})


def field_settings(cls: type) -> list[Setting]:
    """The :class:`Setting` of each field of dataclass ``cls`` declared with :func:`setting`."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "setting" not in f.metadata:
            continue
        if isinstance(f.metadata["setting"], Setting):
            out.append(f.metadata["setting"])
            continue
        help_text, kwargs = f.metadata["setting"]
        default = None if f.default is dataclasses.MISSING else f.default
        out.append(Setting(f.name, scalar_type(hints[f.name]), default, help_text, **kwargs))
    return out


def scalar_type(hint: Any) -> type:
    """``int | None`` -> int; the one scalar type of an annotation."""
    import types
    import typing

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a in (int, float, str, bool)]
    if len(kinds) != 1:
        raise TypeError(f"a setting needs one of int, float, str, bool, not {hint}")
    return kinds[0]


def check(s: Setting, value: Any) -> None:
    """Refuse ``value`` for setting ``s`` with one line naming the option and what it allows.

    ``None`` always passes: it means the default is chosen later.
    """
    if value is None:
        return
    if not isinstance(value, _TYPES[s.type]) or (s.type is not bool and isinstance(value, bool)):
        raise OptionError(f"{s.option} {value!r}: expected {_TYPE_WORDS[s.type]}")
    if s.choices is not None:
        if value not in s.choices:
            raise OptionError(f"{s.option} {value!r}: choose from {', '.join(s.choices)}")
        return
    if s.type in (int, float) and not isinstance(value, bool):
        number = float(value)
        bounds = [f"{op} {_num(bound)}" for op, bound in
                  ((">=", s.minimum), (">", s.above), ("<", s.below)) if bound is not None]
        within = (math.isfinite(number)
                  and (s.minimum is None or number >= s.minimum)
                  and (s.above is None or number > s.above)
                  and (s.below is None or number < s.below))
        if not within:
            what = "a finite number" if s.type is float else ""
            rule = " and ".join(bounds)
            raise OptionError(f"{s.option} must be {what}{' ' if what and rule else ''}{rule}"
                              f", got {value}")


#: the Python values each setting type accepts (a bool is refused where a number is asked)
_TYPES = {bool: bool, int: numbers.Integral, float: numbers.Real, str: str}
_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number",
               str: "a string"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def split_list(text: str, kind: type = int, what: str = "list") -> tuple:
    """``"3, 2,1"`` -> ``(3, 2, 1)``: the one parser of comma-separated numbers.

    Empty items are skipped; anything that is not a ``kind`` raises ``ValueError`` naming
    ``what`` (the CLI turns it into click's ``BadParameter``).
    """
    try:
        return tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        example = "1,2,3" if kind is int else "0.5,1.5"
        raise ValueError(f"{what} {text!r}: expected comma-separated "
                         f"{'integers' if kind is int else 'numbers'}, e.g. {example}") from None


def as_list(value: str | Sequence, kind: type = int, what: str = "list") -> tuple:
    """A comma-separated string or a sequence -> a tuple of ``kind``."""
    if isinstance(value, str):
        return split_list(value, kind, what)
    return tuple(kind(v) for v in value)
