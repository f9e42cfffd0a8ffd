"""The ``geotranslate`` command line: parses options and calls the library functions.

Each subcommand is a thin wrapper; the work happens in chips/, train/, predict/,
evaluate.py and render.py, which are usable from Python too. A GeotranslateError (bad input)
is printed as one line, without a traceback, and exits with status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

import click

from geotranslate import __version__
from geotranslate.augment import AUGMENTS, DEFAULT_AUGMENT
from geotranslate.choices import (
    DEFAULT_D_NORM,
    DEFAULT_GAN_RAMP,
    DEFAULT_GAN_WARMUP,
    DEFAULT_NET_NORM,
    DEFAULT_UPSAMPLE,
    NORM_KINDS,
    UPSAMPLE_KINDS,
)
from geotranslate.errors import GeotranslateError
from geotranslate.files import OUTPUT_ERRNOS, check_file_output, check_not_input, not_utf8
from geotranslate.log import (
    is_main_process,
    logger,
    progress_option,
    set_verbosity,
    verbosity_options,
)
from geotranslate.raster.warp import RESAMPLING_NAMES
from geotranslate.report import DEFAULT_CHIPS

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
            raise GeotranslateError(f"{name}: give at least one value after it")
        process(value, state)
        while state.rargs and not (state.rargs[0].startswith("-") and state.rargs[0] != "-"):
            process(state.rargs.pop(0), state)

    return take


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


# ---- export-tiles (geotranslate/chips/) -----------------------------------------------------


@cli.command("export-tiles")
@click.argument("a_rasters", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--b", "b_rasters", cls=ListOption, type=click.Path(path_type=str),
              help="Domain-B rasters: every raster after --b up to the next option "
                   "(--b s2_*.tif), or --b repeated.")
@click.option("--a-extra", "a_extra", cls=ListOption, type=click.Path(path_type=str),
              help="Rasters of another sensor fused into A: each A raster gets the bands of "
                   "the one covering it most, warped onto its grid (--a s1_*.tif --a-extra "
                   "s2_*.tif: A = fuse:s1_X.tif+s2_X.tif).")
@click.option("--out", "out_dir", default="chips", type=click.Path(path_type=str),
              help="Output directory; a run into an existing one adds to it.")
@click.option("--tile-size", default=256, type=int, help="Chip width and height in pixels.")
@click.option("--stride", default=None, type=int,
              help="Step between chips in pixels [default: the tile size].")
@click.option("--mode", type=click.Choice(["paired", "unpaired"]), default=None,
              help="paired: B resampled onto A's grid, same names; unpaired: tiled "
                   "independently (CycleGAN) [default: paired when --b is given].")
@click.option("--domain", type=click.Choice(["a", "b"]), default=None,
              help="Export a single raster list as this domain (no --b) [default: a].")
@click.option("--bands", "bands_a", default=None,
              help="Bands of A (1-based, e.g. 1,2,3) [default: all except alpha].")
@click.option("--bands-b", "bands_b", default=None, help="Bands of B [default: all except alpha].")
@click.option("--resampling", default="bilinear",
              type=click.Choice(RESAMPLING_NAMES),
              help="Resampling of B onto A's grid (use nearest for classes).")
@click.option("--max-nodata", default=0.1, type=float,
              help="Skip chips with a larger fraction of invalid pixels (nodata, NaN, alpha = 0, "
                   "padding) in either domain.")
@click.option("--aoi", default=None, type=click.Path(path_type=str),
              help="Vector file: keep only chips intersecting its polygons (any CRS).")
@click.option("--exclude", default=None, type=click.Path(path_type=str),
              help="Vector file: drop chips intersecting its polygons (any CRS).")
@click.option("--val-fraction", default=0.0, type=float,
              help="About this fraction of chips goes to val_a/val_b, in spatial blocks; "
                   "train chips sharing pixels with them are dropped.")
@click.option("--allow-no-crs", is_flag=True,
              help="Accept rasters without a CRS (or with only GCPs/RPCs): pixel-space chips.")
@click.option("--seed", default=0, type=int, help="Seed of the validation block draw.")
@click.option("--workers", default=None, type=int,
              help="Threads reading windows in parallel (at most 4 per usable core); the "
                   "output is the same for any number [default: the usable cores].")
@click.option("--relative-elevation", default=None, metavar="RADIUS_PX[:BANDS]",
              help="A's bands (all, or BANDS of the selected ones, e.g. 32:1) as height minus "
                   "the mean height within RADIUS_PX pixels (a DEM/DSM's local relief); "
                   "recorded in the model, which applies it at prediction.")
@progress_option()
def export_tiles_command(a_rasters, b_rasters, a_extra, out_dir, tile_size, stride, mode,
                         domain, bands_a, bands_b, resampling, max_nodata, aoi, exclude,
                         val_fraction, allow_no_crs, seed, workers, relative_elevation,
                         progress) -> None:
    """Cut rasters into georeferenced GeoTIFF chips: DIR/train_a, train_b, meta.json, index.gpkg.

    \b
    Examples:
      geotranslate export-tiles sar.tif --b optical.tif --out chips
      geotranslate export-tiles s1_*.tif --b s2_*.tif --val-fraction 0.1
      geotranslate export-tiles dsm.tif --domain a --out chips   (then --domain b)

    A raster is a file, a URL (https://, s3://), a GDAL name (/vsizip/..., /vsicurl/...),
    band files (stack:B02.tif,B03.tif,B04.tif), a STAC item with asset keys
    (item.json:B04,B03,B02) or rasters of several sensors fused on the first one's grid
    (fuse:s1.tif+s2.tif); the same holds for predict-raster, evaluate and preview.

    A raster smaller than the tile gives one chip padded with nodata (its padding counts as
    invalid pixels for --max-nodata). Complex and 64-bit integer rasters are refused (convert
    them first). An interrupted run keeps its complete chips: re-run it to finish.
    """
    from geotranslate.chips.export import export_tiles

    summary = export_tiles(
        list(a_rasters), list(b_rasters) or None, out_dir, tile_size=tile_size, stride=stride,
        mode=mode, domain=domain, bands_a=bands_a, bands_b=bands_b, resampling=resampling,
        max_nodata=max_nodata, aoi=aoi, exclude=exclude, val_fraction=val_fraction,
        allow_no_crs=allow_no_crs, seed=seed, progress=progress, workers=workers,
        relative_elevation=relative_elevation, extra_a=[list(a_extra)] if a_extra else None,
    )
    click.echo(str(summary))

# ---- train (geotranslate/train/) --------------------------------------------------------------

@cli.command("train", context_settings=CONTEXT)
@click.argument("data_dir", default="chips", type=click.Path())
@click.option("--dataset-type",
              type=click.Choice(["Pix2Pix", "CycleGAN", "Pix2PixHD", "CUT", "FastCUT"]),
              help="Pix2Pix or Pix2PixHD (paired chips, same names in train_a/ and train_b/), "
              "CycleGAN, CUT or FastCUT (unpaired). Required unless --resume.")
@click.option("--out", type=click.Path(),
              help="Run directory  [default: runs/<dataset-type>-<YYYYmmdd-HHMMSS>, and "
              "runs/latest points at it]")
@click.option("--resume", type=click.Path(),
              help="Continue the run in this directory from checkpoints/last.pt (its settings "
              "are reused; options given here override them).")
@click.option("--generator", help="resnet | unet | smp-unet:<encoder> (e.g. smp-unet:resnet34)  "
              "[default: unet for Pix2Pix, resnet for CycleGAN]")
@click.option("--ngf", type=int, default=64, help="Generator filters in the first layer.")
@click.option("--n-blocks", type=int, help="ResNet generator blocks  [default: 9 at >= 256 px "
              "chips, else 6 (the papers' choices)]")
@click.option("--unet-depth", type=int, help="U-Net down-samplings  [default: the deepest whose "
              "receptive field fits in a chip (3*2^(depth+1)-5 px: 128 px -> 4, 256 -> 5), so "
              "that tiled prediction does not depend on the tile size]")
@click.option("--ndf", type=int, default=64, help="Discriminator filters in the first layer.")
@click.option("--n-layers-d", type=int, default=3, help="PatchGAN layers (3 = 70x70 patches).")
@click.option("--net-norm", type=click.Choice(list(NORM_KINDS)),
              help="Normalization layers in the generators (layer: each pixel's features "
              "over their channels, the same in training and in tiled prediction; instance: "
              "each chip's own statistics, a scene sample's at prediction)  "
              f"[default: {DEFAULT_NET_NORM}]")
@click.option("--d-norm", type=click.Choice(list(NORM_KINDS)),
              default=DEFAULT_D_NORM, show_default=True,
              help="Normalization layers in the discriminators.")
@click.option("--upsample", type=click.Choice(list(UPSAMPLE_KINDS)),
              default=DEFAULT_UPSAMPLE, show_default=True,
              help="How the resnet and unet decoders double the resolution: resize "
              "(nearest x2, then a 3x3 convolution: no checkerboard) or transpose (the "
              "papers' transposed convolutions).")
@click.option("--pretrained/--no-pretrained", default=False,
              help="ImageNet weights for the smp-unet encoder (downloaded once).")
@click.option("--gan-mode", type=click.Choice(["lsgan", "vanilla", "hinge"]),
              help="Adversarial loss  [default: vanilla for Pix2Pix, lsgan for CycleGAN]")
@click.option("--lambda-l1", type=float,
              help="L1 weight to B  [default: 100 for Pix2Pix, 0 for Pix2PixHD]")
@click.option("--lambda-a", type=float, default=10.0, help="CycleGAN cycle weight A->B->A.")
@click.option("--lambda-b", type=float, default=10.0, help="CycleGAN cycle weight B->A->B.")
@click.option("--lambda-identity", type=float, default=0.5,
              help="CycleGAN identity weight (x lambda-a/b); off automatically when the "
              "domains' band counts differ.")
@click.option("--lambda-tv", type=float, default=0.0, help="Total-variation weight on fakes.")
@click.option("--pool-size", type=int, default=50, help="CycleGAN image pool of past fakes.")
@click.option("--gan-warmup", type=int,
              help="Pix2Pix/Pix2PixHD: iterations with the adversarial term off "
              "(reconstruction first)  "
              f"[default: {DEFAULT_GAN_WARMUP}]")
@click.option("--gan-ramp", type=int,
              help="Pix2Pix/Pix2PixHD: iterations over which the adversarial weight then rises "
              f"linearly to 1  [default: {DEFAULT_GAN_RAMP}]")
@click.option("--num-d", type=int, help="Pix2PixHD discriminator scales (inputs halved by "
              "average pooling)  [default: 3, or as many as the chips allow]")
@click.option("--lambda-feat", type=float, default=10.0,
              help="Pix2PixHD discriminator feature-matching weight.")
@click.option("--lambda-vgg", type=float, default=0.0,
              help="Pix2PixHD VGG19 perceptual weight (needs --vgg-weights).")
@click.option("--vgg-weights", type=click.Path(path_type=str),
              help="A local VGG19 weights file (safetensors or a torch state_dict).")
@click.option("--lambda-gan", type=float, default=1.0, help="CUT/FastCUT adversarial weight.")
@click.option("--lambda-nce", type=float,
              help="CUT/FastCUT PatchNCE weight  [default: 1 for CUT, 10 for FastCUT]")
@click.option("--nce-idt/--no-nce-idt", default=None,
              help="CUT identity NCE on B images  [default: on for CUT, off for FastCUT; off "
              "when the band counts differ]")
@click.option("--nce-layers", help="Generator encoder layers for PatchNCE, e.g. 0,4,8,12,16  "
              "[default: the paper's]")
@click.option("--num-patches", type=int, default=256, help="CUT/FastCUT patches per layer.")
@click.option("--nce-temperature", type=float, default=0.07, help="PatchNCE temperature.")
@click.option("--batch-size", type=int, default=1, help="Chips per iteration (per process).")
@click.option("--lr", type=float, default=2e-4, help="Adam learning rate (betas 0.5, 0.999).")
@click.option("--epochs", type=int, default=100,
              help="Epochs at constant learning rate (100 as in the papers; sized for "
              "real data — use a few for a trial).")
@click.option("--epochs-decay", type=int, default=100,
              help="Further epochs with the learning rate decaying linearly to 0.")
@click.option("--max-steps", type=int, help="Stop after this many iterations in total.")
@click.option("--crop-size", type=int, help="Random crops of this size  [default: whole chips]")
@click.option("--norm-method", type=click.Choice(["robust", "percentile", "minmax", "meanstd"]),
              default="robust", help="Band scaling to [-1, 1] from meta.json statistics "
              "(robust: min-max, clipped only at far outliers beyond the 0.1/99.9th "
              "percentiles; percentile: 2nd-98th percentile range, clipped).")
@click.option("--norm-scope", type=click.Choice(["dataset", "scene"]), default="dataset",
              help="dataset: every chip scaled by the domain's statistics; scene: each scene "
              "(source raster) first matched to the domain's mean and std by its own "
              "statistics, recorded at export and computed from the input at prediction "
              "(for dates or sensors of different radiometry).")
@click.option("--augment", type=click.Choice(list(AUGMENTS)), default=DEFAULT_AUGMENT,
              help="Random flips/rotations, applied to A and B alike: " + "; ".join(
                  f"{name}: {what}" for name, what in AUGMENTS.items()) + ". Keep none when "
              "the mapping depends on directions (a hillshade on the sun's azimuth, shadows on "
              "the sun, SAR layover on the look direction): a rotated pair teaches the wrong "
              "light. d4 suits rotation-invariant mappings (land-cover style maps).")
@click.option("--no-augment", is_flag=True, hidden=True,
              help="Deprecated: the same as --augment none (now the default).")
@click.option("--cache/--no-cache", default=None,
              help="Keep normalized chips in memory  [default: when they fit in 2 GB]")
@click.option("--workers", type=int, help="DataLoader worker processes, at most the usable "
              "cores  [default: 0 when cached, else min(4, cores)]")
@click.option("--device", default="auto",
              help="Where to train: auto, cpu, cuda, cuda:N or mps (under torchrun, cuda "
                   "gives each process its own GPU).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              default="auto", help="Autocast precision (auto: bf16 on CUDA when supported and on "
              "CPUs with native bf16 (AVX512-BF16/AMX: 1.85x faster, same quality), else fp32; "
              "fp16 CUDA only, with a grad scaler).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format  [default: on for CUDA and for bf16 on CPU]")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks.")
@click.option("--seed", type=int, default=0, help="Seed for weights, data order, augmentation.")
@click.option("--deterministic", is_flag=True,
              help="Deterministic algorithms (slower; bitwise-reproducible resume on CPU).")
@click.option("--save-every", type=int, default=0,
              help="Also checkpoint every N iterations (0: at the end of each epoch only).")
@click.option("--keep", type=click.Choice(["last", "best"]), default="last",
              help="What model.safetensors holds: the last generator or the one with the best "
              "validation PSNR (both are written when there is a validation split).")
@click.option("--patience", type=int, help="Stop a paired run after this many epochs without "
              "a better validation PSNR.")
@click.option("--rgb-bands", help="Preview bands (1-based), e.g. 3,2,1 or 'a:1,2,3;b:3,2,1' "
              "[default: from band descriptions]")
@click.option("--preview/--no-preview", default=True,
              help="Write previews/epoch_XXX.png and, at the end, report.html.")
@progress_option()
@click.pass_context
def train_command(ctx: click.Context, compile_: bool, resume: str | None, **options) -> None:
    """Train a Pix2Pix, Pix2PixHD, CycleGAN, CUT or FastCUT translator on chips.

    Writes RUN_DIR/config.json, metrics.csv, previews/, checkpoints/last.pt and the final
    model.safetensors + model.json. Several GPUs or nodes:
    torchrun --nproc_per_node N -m geotranslate train ...
    """
    from geotranslate.train import TrainConfig, train

    options["compile"] = compile_
    no_augment = options.pop("no_augment")
    if no_augment:  # the former switch: geometry kept
        if options["augment"] != "none":
            raise GeotranslateError(f"--no-augment contradicts --augment {options['augment']}")
    if resume:
        # the run's own settings, overridden only by options typed on this command line
        typed = {
            name: value for name, value in options.items()
            if ctx.get_parameter_source("compile_" if name == "compile" else name).name
            not in ("DEFAULT", "DEFAULT_MAP")
        }
        if no_augment:
            typed["augment"] = "none"
        config = TrainConfig.from_run(resume, **typed)
    else:
        if not options.get("dataset_type"):
            raise GeotranslateError("--dataset-type is required (Pix2Pix, CycleGAN, "
                                    "Pix2PixHD, CUT or FastCUT)")
        config = TrainConfig(**options)
    run_dir = train(config)
    if is_main_process():  # under torchrun: once
        click.echo(str(run_dir))


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="HTML file to write  [default: RUN_DIR/report.html]")
@click.option("--chips", type=int, default=DEFAULT_CHIPS,
              help="Validation chips shown (rows of input | best | last | target).")
@click.option("--device", default="cpu", help="Where the chips are translated (auto, cpu, cuda).")
def report_command(run_dir, out_path, chips, device) -> None:
    """One self-contained HTML page of a training run: loss curves, validation PSNR/SSIM
    against the flat image per epoch, validation chips of the best and last models, the
    config. train writes it at its end (unless --no-preview)."""
    from geotranslate.report import write_report

    click.echo(str(write_report(run_dir, out_path, chips=chips, device=device)))


# ---- predict-raster (geotranslate/predict/) ---------------------------------------------------


@cli.command("predict-raster")
@click.argument("in_paths", metavar="IN...", nargs=-1, required=True, type=str)
@click.option("--model", "model_path", default="runs/latest", type=click.Path(),
              help="Run directory (or its model.json) of a trained model.")
@click.option("--out", "out_path", type=click.Path(), default=None,
              help="Output GeoTIFF (one IN). Default: <IN stem>_translated.tif beside IN.")
@click.option("--out-dir", type=click.Path(), default=None,
              help="Write <stem>_translated.tif for every IN into this directory (several IN, "
                   "or several processes).")
@click.option("--mosaic", type=click.Path(), default=None,
              help="Also write a VRT mosaic of all outputs (with --out-dir).")
@click.option("--resume", is_flag=True,
              help="Continue what an interrupted run left (partial rasters continue from "
                   "their last written strip; with --out-dir, finished outputs are kept).")
@click.option("--split-mpx", type=float, default=64.0,
              help="With several processes, split inputs of at least this many megapixels "
                   "over them by bands of rows (joined into <stem>_translated.vrt).")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), default="a2b",
              help="Translation direction (CycleGAN models have both; Pix2Pix only a2b).")
@click.option("--tile-size", type=int, default=None,
              help="Tile size in pixels. Default: the model's chip size.")
@click.option("--overlap", type=int, default=None,
              help="Overlap between tiles in pixels. Default: half the generator's receptive "
              "field, within a quarter to a half of the tile size.")
@click.option("--blend", type=click.Choice(["hann", "linear", "none"]), default="hann",
              help="Window that merges overlapping tiles (none: hard seams, for comparison).")
@click.option("--norm-stats", type=click.Choice(["scene", "tile"]), default="scene",
              help="Instance-norm statistics: of a sample of the whole scene, so the result "
              "does not depend on the tile size (scene), or of each tile (tile).")
@click.option("--batch-size", type=int, default=4, help="Tiles per forward pass.")
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              default="auto", help="Compute precision (autocast); fp16 only on GPUs. auto: bf16 "
              "on GPUs and CPUs with native bf16 (same PSNR within 0.1 dB), else fp32.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format. Default: on for CUDA and for bf16 on a CPU.")
@click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF with overviews.")
@click.option("--compress", default="zstd", metavar="CODEC",
              help="Output compression: zstd[:LEVEL] (default: level 3; 9 in a COG), "
                   "deflate[:LEVEL], lzw or none.")
@click.option("--compress-threads", default="1", metavar="N|all",
              help="Threads GDAL compresses with (NUM_THREADS) [default: 1].")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--window", default=None, metavar="ROW_OFF,COL_OFF,HEIGHT,WIDTH",
              help="Translate only this part of IN, on its own tile grid (tiles at its edge "
                   "read context from outside it).")
@click.option("--rank", type=int, default=None,
              help="This process's rank (0-based; e.g. $SLURM_ARRAY_TASK_ID) of --world-size. "
                   "One IN without --out-dir: translate the RANK-th band of rows into its own "
                   "part file, on the whole run's tile grid. With --out-dir: this process's "
                   "share of the inputs. Default: RANK from the environment (torchrun).")
@click.option("--world-size", type=int, default=None,
              help="Number of processes for --rank [default: WORLD_SIZE or 1].")
@progress_option()
def predict_raster_cmd(in_paths, model_path, out_path, out_dir, mosaic, resume, split_mpx,
                       direction, tile_size, overlap, blend, norm_stats, batch_size, device,
                       precision, channels_last, cog, compress, compress_threads, overwrite,
                       window, rank, world_size, progress) -> None:
    """Translate the raster IN with a trained model into a seamless GeoTIFF.

    IN may be a file, a URL, a GDAL name, stack: band files or a STAC item (see export-tiles);
    the default OUT of a remote IN is written in the working directory.

    The raster is streamed in overlapping tiles that are blended, so memory stays bounded
    whatever its size. To split a huge raster over several GPUs or machines, run the same
    command with --rank 0..N-1 --world-size N, one process each, and join the parts:
    gdalbuildvrt out.vrt IN_translated.part*.tif

    Many rasters: IN... --out-dir DIR (one <stem>_translated.tif each, --mosaic for a VRT of
    them all); under torchrun or a job array the processes share them (see README).
    """
    from geotranslate.predict import predict_raster
    from geotranslate.predict.batch import predict_rasters, resolve_rank
    from geotranslate.predict.grid import parse_region

    window = parse_region(window)  # a rasterio Window from here on
    if not 0 < split_mpx < float("inf"):
        raise GeotranslateError(f"--split-mpx {split_mpx}: must be a positive number")
    options = dict(direction=direction, tile_size=tile_size, overlap=overlap, blend=blend,
                   norm_stats=norm_stats,
                   batch_size=batch_size, device=device, precision=precision,
                   channels_last=channels_last, cog=cog, overwrite=overwrite, window=window,
                   progress=progress, resume=resume, compress=compress,
                   compress_threads=compress_threads)
    if out_dir is None and mosaic is None and len(in_paths) == 1 and (
            rank is not None or resolve_rank(None, world_size)[1] == 1):
        summary = predict_raster(in_paths[0], model_path, out_path, rank=rank,
                                 world_size=1 if world_size is None else world_size, **options)
        click.echo(str(summary))
        return
    if out_dir is None or out_path is not None:
        raise GeotranslateError("several inputs, --mosaic or several processes: give "
                                "--out-dir DIR (and no --out)")
    if window is not None:
        raise GeotranslateError("--window: only with one IN and --out")
    options.pop("window")
    result = predict_rasters(list(in_paths), model_path, out_dir, mosaic=mosaic, rank=rank,
                             world_size=world_size, split_pixels=int(split_mpx * 1e6),
                             **options)
    click.echo(f"total: {result}")
    if result.failed:
        raise click.exceptions.Exit(1)


@cli.command("model-stac")
@click.argument("run", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="The STAC item (JSON) to write.")
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(),
              help="An ONNX export of the model (export-onnx), added as an asset; repeat for "
                   "each direction.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def model_stac_cmd(run, out_path, onnx_paths, overwrite) -> None:
    """Write RUN's model (a run directory or its model.json) as a STAC item with the Machine
    Learning Model extension (MLM v1.4.0), for catalogues."""
    from geotranslate.modelstac import write_model_stac

    click.echo(str(write_model_stac(run, out_path, overwrite=overwrite, onnx=onnx_paths)))


@cli.command("export-onnx")
@click.argument("run", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="The ONNX model file to write.")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), default="a2b",
              help="Which generator to export (b2a: CycleGAN, CUT's have only a2b).")
@click.option("--tile-size", type=int, default=None,
              help="The model's input size in pixels. Default: the model's chip size.")
@click.option("--calibrate-on", type=click.Path(), default=None, metavar="RASTER",
              help="Instance norms keep this raster's scene statistics (as predict-raster "
                   "computes them); without it they use each tile's own.")
@click.option("--resolution", "resolution_cm", type=float, default=None,
              help="Pixel size in cm for QGIS Deepness. Default: the training chips' pixel "
                   "size, when known and in metres.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_onnx_cmd(run, out_path, direction, tile_size, calibrate_on, resolution_cm,
                    overwrite) -> None:
    """Export RUN's generator as an ONNX model that takes the raw bands (float32) and returns
    the target domain's data units, with the metadata QGIS's Deepness plugin reads."""
    from geotranslate.onnx_export import export_onnx

    summary = export_onnx(run, out_path, direction=direction, tile_size=tile_size,
                          calibrate_on=calibrate_on, resolution_cm=resolution_cm,
                          overwrite=overwrite)
    click.echo(f"wrote {summary['output']}: {direction}, tiles of {summary['tile_size']} px "
               f"(overlap {summary['overlap']} px), outputs {', '.join(summary['outputs'])}; "
               f"norm stats: {summary['norm_stats']}")


# ---- evaluate and preview (geotranslate/evaluate.py, geotranslate/render.py) -------------------


def _parse_data_range_option(text: str | None) -> list[float] | str | None:
    if text is None or text.strip() == "model":
        return None if text is None else "model"
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values:
        raise GeotranslateError(
            f"--data-range {text!r}: expected a number or a comma-separated list"
        )
    return values


def _check_evaluate_json(json_path, rasters, model_path, data_dir) -> None:
    """evaluate's --json must not replace what it reads: the rasters (and the files of a
    stack: or STAC item), the model, or the chip folder's meta.json and chips."""
    from geotranslate.modelfile import model_files
    from geotranslate.raster.sources import input_files

    check_file_output(json_path)  # before the work, not after it
    if model_path is None:
        check_not_input(json_path, input_files(rasters))
        return
    data = Path(data_dir)
    folders = [p for p in data.glob("*_[ab]") if p.is_dir()]
    chips = [p for folder in folders for p in folder.iterdir()]  # a hard link to one, too
    check_not_input(json_path, [*model_files(model_path), data / "meta.json", *chips],
                    folders=folders)


@cli.command("evaluate")
@click.argument("rasters", nargs=-1, type=click.Path())
@click.option("--model", "model_path", type=click.Path(),
              help="Chip mode: run directory (or model.json) of a trained model.")
@click.option("--data", "data_dir", default="chips", type=click.Path(),
              help="Chip mode: chip directory made by export-tiles.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val",
              help="Chip mode: which chips to evaluate on.")
@click.option("--direction", type=click.Choice(["a2b", "b2a"]), default="a2b",
              help="Chip mode: translation direction (b2a needs a CycleGAN model).")
@click.option("--device", default="auto", help="Chip mode: torch device (auto, cpu, cuda, cuda:1).")
@click.option("--batch-size", type=int, default=8, help="Chip mode: chips per forward pass.")
@click.option("--norm-stats", type=click.Choice(["scene", "tile"]), default="scene",
              help="Chip mode: instance-norm statistics of a sample of the split's chips, as "
              "predict-raster uses them (scene), or of each chip (tile).")
@click.option("--resampling", type=click.Choice(RESAMPLING_NAMES),
              default="bilinear", help="Raster mode: how REF is warped onto PRED's grid.")
@click.option("--data-range", "data_range",
              help="Data range for PSNR/SSIM (one value or one per band), or 'model' (chip "
                   "mode: the model's target normalization range) [default: p98-p2 of the "
                   "reference's scored pixels, in both modes].")
@click.option("--allow-no-crs", is_flag=True,
              help="Raster mode: accept rasters without CRS (they must share size and transform).")
@click.option("--bands", "bands_pred", default=None,
              help="Raster mode: bands of PRED to compare (1-based, e.g. 1,2,3) "
                   "[default: all except alpha].")
@click.option("--bands-ref", default=None,
              help="Raster mode: bands of REF, in PRED's band order (e.g. 2,3,4,8) "
                   "[default: all except alpha].")
@click.option("--aoi", default=None, type=click.Path(path_type=str),
              help="Raster mode: vector file (any CRS): score only pixels inside its polygons, "
                   "e.g. chips/index.gpkg with --aoi-where split=val.")
@click.option("--aoi-where", default=None, metavar="COLUMN=VALUE[,VALUE]",
              help="Keep only the --aoi features whose COLUMN has one of these values.")
@click.option("--exclude", default=None, type=click.Path(path_type=str),
              help="Raster mode: vector file (any CRS): leave out pixels inside its polygons.")
@click.option("--json", "json_path", type=click.Path(),
              help="Also write every figure and the settings to this JSON file.")
@progress_option()
def evaluate_command(
    rasters: tuple[str, ...],
    model_path: str | None,
    data_dir: str,
    split: str,
    direction: str,
    device: str,
    batch_size: int,
    norm_stats: str,
    resampling: str,
    data_range: str | None,
    allow_no_crs: bool,
    bands_pred: str | None,
    bands_ref: str | None,
    aoi: str | None,
    aoi_where: str | None,
    exclude: str | None,
    json_path: str | None,
    progress: bool | None,
) -> None:
    """Measure translation quality: MAE, RMSE, PSNR, SSIM (+ SAM, ERGAS for 3+ bands).

    \b
    Chip mode:   geotranslate evaluate --model runs/latest [--data chips] [--split val]
    Raster mode: geotranslate evaluate PRED.tif REF.tif
    Raster mode compares the common area on PRED's grid (REF is warped when grids differ);
    nodata in either raster is left out. Score only the held-out blocks of a chip export:
    geotranslate evaluate PRED.tif REF.tif --aoi chips/index.gpkg --aoi-where split=val
    """
    from geotranslate.evaluate import evaluate_chips, evaluate_rasters

    ranges = _parse_data_range_option(data_range)
    if json_path:
        _check_evaluate_json(json_path, rasters, model_path, data_dir)
    if model_path is not None:
        if rasters:
            raise GeotranslateError("give either --model (chip mode) or PRED REF (raster mode)")
        raster_only = {"--bands": bands_pred, "--bands-ref": bands_ref, "--aoi": aoi,
                       "--aoi-where": aoi_where, "--exclude": exclude}
        given = [name for name, value in raster_only.items() if value is not None]
        if given:
            raise GeotranslateError(f"{', '.join(given)}: raster mode only (PRED REF)")
        report = evaluate_chips(
            model_path, data_dir, split, direction, device=device, batch_size=batch_size,
            data_range=ranges, progress=progress, norm_stats=norm_stats,
        )
    else:
        if len(rasters) != 2:
            raise GeotranslateError(
                "evaluate needs PRED.tif REF.tif (raster mode) or --model RUN_DIR (chip mode)"
            )
        report = evaluate_rasters(
            rasters[0], rasters[1], resampling=resampling, data_range=ranges,
            allow_no_crs=allow_no_crs, bands=bands_pred, bands_ref=bands_ref, aoi=aoi,
            exclude=exclude, aoi_where=aoi_where, progress=progress,
        )
    click.echo(report.format_table())
    if json_path:
        report.write_json(json_path)
        click.echo(f"wrote {json_path}")


@cli.command("preview")
@click.argument("rasters", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_png", default="preview.png", type=click.Path(),
              help="PNG to write (panels side by side).")
@click.option("--rgb-bands", help="Bands shown as R,G,B (e.g. 3,2,1) or one gray band; "
                                  "default: from band descriptions/colours, else band 1 in gray.")
@click.option("--window", help="Zoom: ROW_OFF,COL_OFF,HEIGHT,WIDTH in pixels (as in "
                               "predict-raster), or "
                               "map:LEFT,BOTTOM,RIGHT,TOP in the first raster's CRS.")
@click.option("--max-size", type=int, default=1024,
              help="Longest side of each panel in pixels (larger rasters are decimated).")
@click.option("--columns", type=int, help="Panels per row (default: all in one row).")
@click.option("--title", "titles", cls=ListOption,
              help="Panel titles, one per raster (--title SAR translated optical) "
                   "[default: file names].")
@click.option("--db", is_flag=True, help="Show 10*log10 of the values (linear SAR power).")
def preview_command(
    rasters: tuple[str, ...],
    out_png: str,
    rgb_bands: str | None,
    window: str | None,
    max_size: int,
    columns: int | None,
    titles: tuple[str, ...],
    db: bool,
) -> None:
    """Side-by-side PNG of rasters or chips, each stretched per band (2-98 %)."""
    from geotranslate.render import render_rasters

    image = render_rasters(
        list(rasters), out_png, titles=list(titles) or None, rgb_bands=rgb_bands,
        window=window, max_size=max_size, columns=columns, db=db,
    )
    click.echo(f"wrote {out_png} ({image.width} x {image.height} px)")


if __name__ == "__main__":
    sys.exit(main())
