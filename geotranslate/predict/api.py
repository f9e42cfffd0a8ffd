"""``predict_raster``: check the inputs, set up device and output, run the pipeline, summarize."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from geotranslate.device import autocast as device_autocast
from geotranslate.device import default_channels_last, resolve_device, resolve_precision
from geotranslate.errors import GeotranslateError
from geotranslate.files import atomic_path, check_file_output, check_not_input
from geotranslate.inputs import check_composition, input_reader, scene_spec
from geotranslate.log import logger
from geotranslate.memory import check_memory
from geotranslate.modelfile import TranslationModel, load_model, model_files, weights_sha256
from geotranslate.models import keep_channels_last
from geotranslate.predict.blend import BLEND_MODES
from geotranslate.predict.grid import CHUNK_WIDTH, default_overlap, plan_strips, rank_window
from geotranslate.predict.output import (
    DEFAULT_COMPRESS,
    default_output,
    output_nodata,
    output_profile,
    to_cog,
)
from geotranslate.predict.pipeline import (
    READ_AHEAD,
    PipelineCompute,
    PipelineInput,
    PipelineOutput,
    run_pipeline,
)
from geotranslate.predict.provenance import provenance_tags
from geotranslate.predict.resume import (
    input_identity,
    keep_partial,
    open_partial,
    partial_paths,
    remaining_strips,
    remove_partial,
)
from geotranslate.predict.scene import scene_generator, scene_sample
from geotranslate.raster.io import open_raster, verify_geotiff
from geotranslate.raster.opening import spectral_bands
from geotranslate.raster.sources import input_files, parse_source
from geotranslate.raster.windows import parse_pixel_window


@dataclass
class PredictSummary:
    """What a prediction run did, for the CLI's closing line and for scripts."""

    input: str
    output: str
    direction: str
    width: int
    height: int
    bands_in: int
    bands_out: int
    dtype: str
    nodata: float | None
    tile_size: int
    overlap: int
    blend: str
    receptive_field: int  # of the generator, in input pixels
    norm_stats: str  # what the normalization layers used (the GEOTRANSLATE_NORM_STATS tag)
    tiles: int
    tiles_skipped: int
    batch_size: int
    device: str
    precision: str
    seconds: float
    megapixels_per_second: float
    input_wait_seconds: float  # compute thread waiting for the reader (disk-bound if large)
    output_wait_seconds: float  # compute thread waiting for blending/writing
    window: tuple[int, int, int, int]
    cog: bool
    complete_already: bool = False  # --resume found the output complete and left it
    #: CPU seconds of the pipeline's stages (read, normalize, forward, blend, cast, write)
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.complete_already:
            return f"{self.output}: already complete (nothing to resume)"
        return (
            f"wrote {self.output}: {self.width}x{self.height} px, {self.bands_out} band(s) "
            f"{self.dtype}{' (COG)' if self.cog else ''} in {self.seconds:.1f} s "
            f"({self.megapixels_per_second:.2f} Mpx/s; {self.tiles} tiles of {self.tile_size} px, "
            f"overlap {self.overlap}, {self.blend} blend; receptive field "
            f"{self.receptive_field} px; norm stats: {self.norm_stats}; "
            f"{self.device}, {self.precision}; "
            f"compute waited {self.input_wait_seconds:.1f} s for reading, "
            f"{self.output_wait_seconds:.1f} s for writing)"
        )


def _complete_summary(in_path, out: Path, direction, profile, tile_size, overlap,
                      blend) -> PredictSummary:
    """The summary of a run that finds its output complete (``--resume`` after it finished)."""
    return PredictSummary(
        input=str(in_path), output=str(out), direction=direction, width=profile["width"],
        height=profile["height"], bands_in=0, bands_out=profile["count"],
        dtype=profile["dtype"], nodata=None, tile_size=tile_size or 0, overlap=overlap or 0,
        blend=blend, receptive_field=0, norm_stats="", tiles=0, tiles_skipped=0, batch_size=0,
        device="", precision="", seconds=0.0, megapixels_per_second=0.0,
        input_wait_seconds=0.0, output_wait_seconds=0.0, window=(0, 0, 0, 0), cog=False,
        complete_already=True)


def _check_region(window, ds) -> tuple[int, int, int, int]:
    if window is None:
        return 0, 0, ds.height, ds.width
    row0, col0, height, width = window
    if height <= 0 or width <= 0 or row0 < 0 or col0 < 0:
        raise GeotranslateError(f"window {window}: offsets must be >= 0 and sizes > 0")
    if row0 + height > ds.height or col0 + width > ds.width:
        raise GeotranslateError(
            f"window {window} reaches outside {ds.name} ({ds.height} rows x {ds.width} cols)"
        )
    return row0, col0, height, width


def _working_set(tile: int, batch_size: int, bands_in: int, bands_out: int) -> int:
    """A lower bound of the host memory of a run with ``tile`` px tiles (network activations
    not counted): the blend window (built in float64), the batches in and out in float32,
    the strips read ahead and the blending accumulator (float32, tile rows x a chunk)."""
    px = tile * tile
    strip = tile * max(CHUNK_WIDTH, tile)
    return (
        px * 12
        + batch_size * (bands_in + bands_out) * px * 4
        + (READ_AHEAD + 1) * bands_in * strip * 4
        + (bands_out * 4 + 5) * strip
    )


def predict_raster(
    in_path: str | os.PathLike,
    model: TranslationModel | str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    *,
    direction: str = "a2b",
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = "hann",
    norm_stats: str = "scene",
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    cog: bool = False,
    overwrite: bool = False,
    window: str | tuple[int, int, int, int] | None = None,
    rank: int | None = None,
    world_size: int = 1,
    chunk_width: int = CHUNK_WIDTH,
    progress: bool | None = None,
    resume: bool = False,
    compress: str = DEFAULT_COMPRESS,
    compress_threads: int | str | None = None,
) -> PredictSummary:
    """Translate ``in_path`` with ``model`` (a TranslationModel or a run directory / model.json).

    Writes ``out_path`` (default ``<IN stem>_translated.tif``) atomically and returns a summary.
    ``resume``: continue the partial result an interrupted run left (predict/resume.py).
    ``compress``: the output's codec (:func:`geotranslate.predict.output.parse_compress`),
    ``compress_threads``: GDAL's NUM_THREADS for it (a count or ``"all"``).
    See the module docstring for the tiling, blending, nodata and scale-out rules.
    ``norm_stats`` ``"scene"`` (default) gives instance norms the statistics of a sample of the
    whole region (:mod:`geotranslate.predict.scene`), so the result does not depend on the
    tiling; ``"tile"`` normalizes each tile by its own statistics. ``overlap`` defaults to
    :func:`geotranslate.predict.grid.default_overlap` of the generator's receptive field.
    """
    started = time.perf_counter()
    if blend not in BLEND_MODES:
        raise GeotranslateError(f"blend {blend!r}: choose from {', '.join(BLEND_MODES)}")
    if batch_size < 1:
        raise GeotranslateError(f"batch size {batch_size}: must be at least 1")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    autocast = partial(device_autocast, dev, precision)
    if world_size < 1 or (rank is not None and not 0 <= rank < world_size):
        raise GeotranslateError(f"rank {rank} / world size {world_size}: need 0 <= rank < size")
    in_source = parse_source(in_path)  # a file, a URL, band files …: see raster/sources.py
    in_path = in_source.name
    read_too = model_files(model) if isinstance(model, (str, os.PathLike)) else []
    with open_raster(in_source, allow_no_crs=True) as ds:
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=dev)
        generator = model.generator(direction)
        source, target = model.source_domain(direction), model.target_domain(direction)
        bands = spectral_bands(ds)
        if len(bands) != source.band_count:
            raise GeotranslateError(
                f"{in_path}: has {len(bands)} band(s) but the model's {direction} generator "
                f"expects {source.band_count}"
            )
        if ds.crs is None:
            kind = "GCPs" if ds.gcps[0] else "RPCs" if ds.rpcs is not None else None
            what = f"keeps its {kind} but has no CRS either" if kind else "has none either"
            logger.warning(f"{in_path} has no CRS; the output {what}")
        grid_region = _check_region(parse_pixel_window(window), ds)
        region = grid_region  # what the output covers
        if rank is not None:
            region = rank_window(grid_region, rank, world_size)
        elif world_size != 1:
            raise GeotranslateError(f"world size {world_size}: give --rank too (0..N-1)")
        divisor = int(getattr(generator, "total_stride", 1))
        tile = int(model.chip_size if tile_size is None else tile_size)
        if tile < divisor or tile % divisor:
            raise GeotranslateError(
                f"tile size {tile}: must be a positive multiple of {divisor} for this generator"
            )
        field = model.receptive_field(direction)
        if overlap is None:
            overlap = default_overlap(tile, field, divisor)
        overlap = int(overlap)
        if not 0 <= overlap < tile:
            raise GeotranslateError(f"overlap {overlap}: must be >= 0 and < the tile size {tile}")
        check_memory(_working_set(tile, batch_size, source.band_count, target.band_count),
                     f"--tile-size {tile}", "use a smaller --tile-size (or --batch-size)")
        check_composition(source, in_source, in_path, direction)
        read = input_reader(source, bands)
        source = scene_spec(source, ds, bands, read)
        nodata = output_nodata(target.dtype, target.nodata)
        profile = output_profile(ds, region, target, nodata, cog, compress, compress_threads)
    if out_path:
        check_file_output(out_path)
    out = Path(out_path) if out_path else default_output(in_source, rank, world_size)
    # every file it reads: the raster's (band files, STAC item and assets, archive), the model
    check_not_input(out, input_files([in_source, *read_too]))
    if out.is_dir():
        raise GeotranslateError(f"{out}: is a directory; give the output file's name")
    if resume and not overwrite and out.exists() and not partial_paths(out)[1].exists():
        logger.info(f"{out}: already complete, nothing to resume (left as it is)")
        return _complete_summary(in_path, out, direction, profile, tile_size, overlap, blend)

    generator = generator.to(dev).eval()
    use_channels_last = (default_channels_last(dev, precision) if channels_last is None
                         else channels_last)
    if use_channels_last:  # with norms and paddings that keep the layout (models/layout.py)
        generator = keep_channels_last(copy.deepcopy(generator))
        generator = generator.to(memory_format=torch.channels_last)
    sample_tile = int(model.chip_size)
    if sample_tile % divisor:
        sample_tile = max(divisor, sample_tile // divisor * divisor)
    # the calibration pass runs in the tiles' precision and layout
    generator, norm_label = scene_generator(
        generator, norm_stats,
        lambda: scene_sample(in_source, bands, source, grid_region, sample_tile, read=read),
        dev, autocast, channels_last=use_channels_last,
    )
    out_rows = (region[0] - grid_region[0], region[0] - grid_region[0] + region[2])
    plan = plan_strips(grid_region[2], grid_region[3], tile, overlap, chunk_width, out_rows,
                       align=divisor)
    digest = weights_sha256(model.generator(direction))  # the weights, not the scene stats
    tags = provenance_tags(model, direction,
                           Path(in_path).name if in_source.local else in_path,
                           digest=digest, tile=tile, overlap=overlap, blend=blend)
    tags.update({
        "GEOTRANSLATE_NORM_STATS": norm_label,
        "GEOTRANSLATE_TILE_SIZE": str(tile),
        "GEOTRANSLATE_OVERLAP": str(overlap),
        "GEOTRANSLATE_RECEPTIVE_FIELD": str(field),
    })
    if source.norm_scope != "dataset" or source.input_transforms:  # inputs.py
        tags["GEOTRANSLATE_INPUT"] = "; ".join(
            [f"norm scope {source.norm_scope}"]
            + [f"{t['kind']} radius {t['radius_px']} px" for t in source.input_transforms])
    key = {"input": str(in_path), "input_identity": input_identity(in_source),
           "weights_sha256": digest, "direction": direction,
           "region": list(region), "grid": list(grid_region), "tile": tile, "overlap": overlap,
           "blend": blend, "norm_stats": norm_label, "batch_size": batch_size,
           "device": dev.type, "precision": precision, "chunk_width": chunk_width,
           "compress": compress,
           "version": tags["GEOTRANSLATE_VERSION"]}
    stage_seconds: dict[str, float] = {}
    with atomic_path(out, overwrite=overwrite) as tmp_final:
        tmp_tiff, checkpoint = open_partial(out, key, profile, resume=resume,
                                            overwrite=overwrite)
        todo = remaining_strips(plan, checkpoint and checkpoint.start, tile, out_rows[0],
                                out_rows[1])
        try:
            counts = run_pipeline(
                PipelineInput(in_source, bands, source, grid_region, todo, tile, read),
                PipelineCompute(generator, dev, autocast, use_channels_last, batch_size),
                PipelineOutput(tmp_tiff, out, profile, target, nodata, tags, overlap, blend,
                               out_rows[0], checkpoint),
                progress, stage_seconds,
            )
            verify_geotiff(tmp_tiff, out)
            if cog:
                to_cog(tmp_tiff, tmp_final, profile, compress)
                verify_geotiff(tmp_final, out)
            else:
                os.replace(tmp_tiff, tmp_final)
        except (KeyboardInterrupt, SystemExit):
            keep_partial(tmp_tiff, checkpoint)  # the partial result stays for --resume
            raise
        except BaseException:
            remove_partial(out, tmp_tiff, checkpoint)
            raise
        remove_partial(out, tmp_tiff, checkpoint)
    seconds = time.perf_counter() - started
    return PredictSummary(
        input=str(in_path), output=str(out), direction=direction,
        width=region[3], height=region[2], bands_in=source.band_count,
        bands_out=target.band_count, dtype=target.dtype,
        nodata=None if math.isnan(nodata) else nodata, tile_size=tile, overlap=overlap,
        blend=blend, receptive_field=field, norm_stats=norm_label, tiles=counts[0],
        tiles_skipped=counts[1], batch_size=batch_size,
        input_wait_seconds=counts[2], output_wait_seconds=counts[3],
        device=str(dev), precision=precision, seconds=seconds,
        megapixels_per_second=region[2] * region[3] / 1e6 / max(seconds, 1e-9),
        window=region, cog=cog, stage_cpu_seconds=stage_seconds,
    )
