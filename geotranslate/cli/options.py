"""Option handlers shared by the commands, as rasterio's ``rio/options.py``.

- :class:`ListOption`: an option that takes every value up to the next option;
- :func:`setting_option` and :class:`SettingsCommand`: click options derived from declared
  settings (geotranslate/settings.py), so a setting's type, default, help and allowed values
  are written once, beside its owner;
- :func:`number_list`: comma-separated numbers, refused with click's ``BadParameter``.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from geotranslate.errors import OptionError
from geotranslate.settings import Setting, split_list

#: every command's context: -h too, defaults shown, help up to 100 columns
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


class ListOption(click.Option):
    """An option that takes every value that follows it, up to the next option.

    ``export-tiles s1_*.tif --b s2_*.tif`` gives all the shell's B files to ``--b``, wherever
    the option stands (last too); repeating it adds to the list and ``--`` ends it. The option
    without any value is an error, not an empty list.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, multiple=True, **kwargs)
        # the parser then hands over a marker, not the next option, when no value follows
        self._flag_needs_value = True

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            option.process = _list_taker(option.process, name)


def _list_taker(process, name: str):
    """``process`` of a parser option, taking the values that follow the first one too."""

    def take(value, state) -> None:
        if not isinstance(value, str):  # the marker: nothing, or another option, follows
            raise OptionError(f"{name}: give at least one value after it")
        process(value, state)
        while state.rargs and not (state.rargs[0].startswith("-") and state.rargs[0] != "-"):
            process(state.rargs.pop(0), state)

    return take




def setting_option(s: Setting) -> click.Option:
    """The click option of setting ``s``: its type or choices, default and help."""
    kwargs: dict = {"help": s.help, "metavar": s.metavar}
    decls = [s.option]
    if s.type is bool and s.negatable:
        decls = [f"{s.option}/--no-{s.option[2:]}"]
    elif s.type is bool:
        kwargs["is_flag"] = True
    elif s.choices is not None:
        kwargs["type"] = click.Choice(list(s.choices))
    elif s.type is not str:
        kwargs["type"] = s.type
    if s.default is None:
        kwargs["default"] = None
        kwargs["show_default"] = False
        if s.default_text:
            kwargs["help"] = f"{s.help}  [default: {s.default_text}]"
    else:
        kwargs["default"] = s.default
        kwargs["show_default"] = True
    return click.Option(decls, **kwargs)


class SettingsCommand(click.Command):
    """A command whose options include those of declared settings, made when first needed
    (``settings`` imports the method registry, and with it torch: not for ``--version``)."""

    def __init__(self, *args, settings: Callable[[], list[Setting]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._settings = settings
        self._made = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._made:
            self._made = True
            arguments = [p for p in self.params if isinstance(p, click.Argument)]
            others = [p for p in self.params if not isinstance(p, click.Argument)]
            made = [setting_option(s) for s in self._settings() if s.cli]
            self.params[:] = arguments + made + others
        return super().get_params(ctx)


def number_list(text: str | None, name: str, kind: type = int) -> tuple | None:
    """``text`` of option ``name`` as comma-separated numbers, or ``BadParameter``."""
    if text is None:
        return None
    try:
        return split_list(text, kind, name)
    except ValueError as e:
        raise click.BadParameter(str(e).split(" ", 1)[-1], param_hint=name) from None
