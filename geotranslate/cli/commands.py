"""The subcommands: each parses its options and calls a library function."""

from __future__ import annotations

from pathlib import Path

import click

from geotranslate.chips.meta import DOMAINS, PAIRINGS, SPLITS
from geotranslate.choices import (
    BLEND_MODES,
    DIRECTIONS,
    NORM_STATS_MODES,
    PRECISIONS,
)
from geotranslate.cli.options import CONTEXT, ListOption, SettingsCommand, number_list
from geotranslate.errors import OptionError
from geotranslate.files import check_file_output, check_not_input
from geotranslate.log import is_main_process, logger, progress_option
from geotranslate.raster.warp import RESAMPLING_NAMES
from geotranslate.report import DEFAULT_CHIPS

# ---- export-tiles (geotranslate/chips/) -----------------------------------------------------


@click.command("export-tiles")
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
@click.option("--mode", type=click.Choice(PAIRINGS), default=None,
              help="paired: B resampled onto A's grid, same names; unpaired: tiled "
                   "independently (CycleGAN) [default: paired when --b is given].")
@click.option("--domain", type=click.Choice(DOMAINS), default=None,
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

def _train_settings():
    from geotranslate.train.config import all_settings

    return all_settings()


@click.command("train", cls=SettingsCommand, settings=_train_settings, context_settings=CONTEXT)
@click.argument("data_dir", default="chips", type=click.Path())
@click.option("--no-augment", is_flag=True, hidden=True,
              help="Deprecated: the same as --augment none (now the default).")
@progress_option()
@click.pass_context
def train_command(ctx: click.Context, resume: str | None, **options) -> None:
    """Train a translator on chips: Pix2Pix, Pix2PixHD, CycleGAN, CUT, FastCUT, or any method
    in geotranslate/methods/ (--dataset-type).

    Writes RUN_DIR/config.json, metrics.csv, previews/, checkpoints/last.pt and the final
    model.safetensors + model.json. Several GPUs or nodes:
    torchrun --nproc_per_node N -m geotranslate train ...
    """
    from geotranslate.train import TrainConfig, train
    from geotranslate.train.config import method_settings, takers

    no_augment = options.pop("no_augment")
    if no_augment:  # the former switch: geometry kept
        if options["augment"] != "none":
            raise OptionError(f"--no-augment contradicts --augment {options['augment']}")
    # the options typed on this command line (the others hold their defaults)
    typed = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    if resume:  # the run's own settings, overridden only by options typed here
        if no_augment:
            typed["augment"] = "none"
        config = TrainConfig.from_run(resume, **typed)
    else:
        if not options.get("dataset_type"):
            from geotranslate.methods import METHODS

            raise OptionError(f"--dataset-type is required ({', '.join(METHODS)})")
        config = TrainConfig(**options)
    own = {s.name for s in config.method.OPTIONS}
    for s in method_settings():
        if s.name in typed and s.name not in own:
            logger.warning(f"{s.option} is not an option of {config.dataset_type} "
                           f"({', '.join(takers(s.name))}); ignored")
    run_dir = train(config)
    if is_main_process():  # under torchrun: once
        click.echo(str(run_dir))


@click.command("report")
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


@click.command("predict-raster")
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
@click.option("--direction", type=click.Choice(DIRECTIONS), default="a2b",
              help="Translation direction (CycleGAN models have both; Pix2Pix only a2b).")
@click.option("--tile-size", type=int, default=None,
              help="Tile size in pixels. Default: the model's chip size.")
@click.option("--overlap", type=int, default=None,
              help="Overlap between tiles in pixels. Default: half the generator's receptive "
              "field, within a quarter to a half of the tile size.")
@click.option("--blend", type=click.Choice(BLEND_MODES), default="hann",
              help="Window that merges overlapping tiles (none: hard seams, for comparison).")
@click.option("--norm-stats", type=click.Choice(NORM_STATS_MODES), default="scene",
              help="Instance-norm statistics: of a sample of the whole scene, so the result "
              "does not depend on the tile size (scene), or of each tile (tile).")
@click.option("--batch-size", type=int, default=4, help="Tiles per forward pass.")
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(PRECISIONS),
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
        raise OptionError(f"--split-mpx {split_mpx}: must be a positive number")
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
        raise OptionError("several inputs, --mosaic or several processes: give "
                          "--out-dir DIR (and no --out)")
    if window is not None:
        raise OptionError("--window: only with one IN and --out")
    options.pop("window")
    result = predict_rasters(list(in_paths), model_path, out_dir, mosaic=mosaic, rank=rank,
                             world_size=world_size, split_pixels=int(split_mpx * 1e6),
                             **options)
    click.echo(f"total: {result}")
    if result.failed:
        raise click.exceptions.Exit(1)


@click.command("model-stac")
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


@click.command("export-onnx")
@click.argument("run", type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="The ONNX model file to write.")
@click.option("--direction", type=click.Choice(DIRECTIONS), default="a2b",
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
    values = number_list(text, "--data-range", float)
    if not values:
        raise OptionError(f"--data-range {text!r}: expected a number or a comma-separated list")
    return list(values)


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


@click.command("evaluate")
@click.argument("rasters", nargs=-1, type=click.Path())
@click.option("--model", "model_path", type=click.Path(),
              help="Chip mode: run directory (or model.json) of a trained model.")
@click.option("--data", "data_dir", default="chips", type=click.Path(),
              help="Chip mode: chip directory made by export-tiles.")
@click.option("--split", type=click.Choice(SPLITS), default="val",
              help="Chip mode: which chips to evaluate on.")
@click.option("--direction", type=click.Choice(DIRECTIONS), default="a2b",
              help="Chip mode: translation direction (b2a needs a CycleGAN model).")
@click.option("--device", default="auto", help="Chip mode: torch device (auto, cpu, cuda, cuda:1).")
@click.option("--batch-size", type=int, default=8, help="Chip mode: chips per forward pass.")
@click.option("--norm-stats", type=click.Choice(NORM_STATS_MODES), default="scene",
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
            raise OptionError("give either --model (chip mode) or PRED REF (raster mode)")
        raster_only = {"--bands": bands_pred, "--bands-ref": bands_ref, "--aoi": aoi,
                       "--aoi-where": aoi_where, "--exclude": exclude}
        given = [name for name, value in raster_only.items() if value is not None]
        if given:
            raise OptionError(f"{', '.join(given)}: raster mode only (PRED REF)")
        report = evaluate_chips(
            model_path, data_dir, split, direction, device=device, batch_size=batch_size,
            data_range=ranges, progress=progress, norm_stats=norm_stats,
        )
    else:
        if len(rasters) != 2:
            raise OptionError(
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


@click.command("preview")
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


#: every command, in the order --help lists them
COMMANDS = [export_tiles_command, train_command, report_command, predict_raster_cmd,
            model_stac_cmd, export_onnx_cmd, evaluate_command, preview_command]
