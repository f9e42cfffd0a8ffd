"""The ``geotranslate`` group: its commands (commands.py), and one-line errors for all."""

from __future__ import annotations

import errno
import warnings

import click

from geotranslate import __version__
from geotranslate.cli.commands import COMMANDS
from geotranslate.cli.options import CONTEXT
from geotranslate.errors import GeotranslateError
from geotranslate.files import OUTPUT_ERRNOS, not_utf8
from geotranslate.log import logger, set_verbosity, verbosity_options


class VerbosityGroup(click.Group):
    """A group whose every command takes --quiet and --verbose (geotranslate/log.py)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(verbosity_options())
        super().add_command(cmd, name)


@click.group(cls=VerbosityGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="geotranslate")
def cli() -> None:
    """Translate georeferenced rasters between imaging domains with GANs.

    \b
    Typical pipeline:
      geotranslate export-tiles sar.tif --b optical.tif --out chips
      geotranslate train chips --dataset-type Pix2Pix
      geotranslate predict-raster sar.tif --model runs/latest
    """


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    with warnings.catch_warnings():
        _one_line_warnings()
        return _main(argv)


def _one_line_warnings() -> None:
    """Library warnings as one line each, not two lines of their source; harmless ones off."""
    from rasterio.errors import NotGeoreferencedWarning

    # rasters without georeference are refused or announced by geotranslate itself
    warnings.simplefilter("ignore", NotGeoreferencedWarning)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        logger.warning(f"{_printable(str(message))} ({category.__name__})")

    warnings.showwarning = show


def _main(argv: list[str] | None) -> int:
    set_verbosity(0)  # each command line starts at the default (tests run many in one process)
    try:
        status = cli.main(args=argv, prog_name="geotranslate", standalone_mode=False)
        if isinstance(status, int) and status:
            return status  # a command's click.exceptions.Exit(status)
    except GeotranslateError as e:
        click.echo(f"geotranslate: error: {_printable(str(e))}", err=True)
        return 1
    except OSError as e:
        # a full disk, or a permission change mid-run, outside an atomic write: no traceback
        # either; any other OSError is a bug and keeps its traceback
        if e.errno not in OUTPUT_ERRNOS | {errno.EACCES, errno.EPERM}:
            raise
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"geotranslate: error: {where}{e.strerror or e}", err=True)
        return 1
    except UnicodeEncodeError as e:
        # a file name with bytes that are not UTF-8 (surrogate-escaped by Python) reached a
        # library that encodes names as UTF-8 (GDAL, OGR)
        if not isinstance(e.object, str) or "surrogates" not in e.reason:
            raise
        click.echo(f"geotranslate: error: {not_utf8(e.object)}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("geotranslate: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("geotranslate: interrupted", err=True)
        return 130
    except click.UsageError as e:  # a bad option: one line too, with click's status (2)
        where = f"; see {e.ctx.command_path} --help" if e.ctx is not None else ""
        message = e.format_message().rstrip(".")
        click.echo(f"geotranslate: error: {_printable(message)}{where}", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


def _printable(message: str) -> str:
    """File names that are not UTF-8 show their odd bytes as \\xNN (Python keeps them as
    surrogates, which a terminal cannot show)."""
    try:
        return message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:
        return message.encode("utf-8", "backslashreplace").decode("utf-8")



