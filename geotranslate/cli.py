"""The ``geotranslate`` command line: parses options and calls the library functions.

Each subcommand is a thin wrapper; the work happens in export.py, train/, predict.py,
evaluate.py and render.py, which are usable from Python too. A GeotranslateError (bad input)
is printed as one line, without a traceback, and exits with status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import sys

import click

from geotranslate import __version__
from geotranslate.errors import GeotranslateError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="geotranslate")
def cli() -> None:
    """Translate georeferenced rasters between imaging domains with GANs.

    \b
    Typical pipeline:
      geotranslate export-tiles sar.tif --b optical.tif --out chips
      geotranslate train chips --dataset-type Pix2Pix
      geotranslate predict-raster sar.tif --model runs/latest
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        cli.main(args=argv, prog_name="geotranslate", standalone_mode=False)
    except GeotranslateError as e:
        click.echo(f"geotranslate: error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("geotranslate: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("geotranslate: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


# ---- export-tiles (geotranslate/export.py) --------------------------------------------------

# ---- train (geotranslate/train/) --------------------------------------------------------------

# ---- predict-raster (geotranslate/predict.py) -------------------------------------------------

# ---- evaluate and preview (geotranslate/evaluate.py, geotranslate/render.py) -------------------


if __name__ == "__main__":
    sys.exit(main())
