"""``predict_raster``: parse the source once, plan, run the plan through the pipeline into the
output, summarize (predict/plan.py, pipeline.py, output.py)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

from rasterio.windows import Window

from geotranslate.errors import OptionError
from geotranslate.modelfile import TranslationModel, model_files
from geotranslate.predict.blend import BLEND_MODES
from geotranslate.predict.grid import CHUNK_WIDTH, row_first
from geotranslate.predict.output import DEFAULT_COMPRESS, GeoTiffOutput, Output, default_output
from geotranslate.predict.pipeline import run_pipeline
from geotranslate.predict.plan import Compute, Layout, PredictPlan, make_layout, make_plan
from geotranslate.raster.sources import RasterSource, parse_source


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
    window: tuple[int, int, int, int]  # the output's region, row first as --window spells it
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


def _complete_summary(layout: Layout, output: Output, tile_size: int | None) -> PredictSummary:
    """The summary of a run that finds its output complete (``--resume`` after it finished)."""
    profile = layout.profile
    return PredictSummary(
        input=layout.source.name, output=str(output.name), direction=layout.direction,
        width=profile["width"], height=profile["height"], bands_in=0, bands_out=profile["count"],
        dtype=profile["dtype"], nodata=None, tile_size=tile_size or 0, overlap=layout.overlap,
        blend=layout.blend, receptive_field=0, norm_stats="", tiles=0, tiles_skipped=0,
        batch_size=0, device="", precision="", seconds=0.0, megapixels_per_second=0.0,
        input_wait_seconds=0.0, output_wait_seconds=0.0, window=(0, 0, 0, 0), cog=False,
        complete_already=True)


def _summary(plan: PredictPlan, output: Output, counts: tuple[int, int, float, float],
             stage_seconds: dict[str, float], seconds: float, cog: bool) -> PredictSummary:
    """What the run of ``plan`` did: ``counts`` as :func:`run_pipeline` returns them."""
    region, compute = plan.region, plan.compute
    return PredictSummary(
        input=plan.source.name, output=str(output.name), direction=plan.direction,
        width=region.width, height=region.height, bands_in=plan.domain_in.band_count,
        bands_out=plan.domain_out.band_count, dtype=plan.domain_out.dtype,
        nodata=None if math.isnan(plan.nodata) else plan.nodata, tile_size=plan.tile,
        overlap=plan.overlap, blend=plan.blend, receptive_field=plan.receptive_field,
        norm_stats=plan.norm_label, tiles=counts[0], tiles_skipped=counts[1],
        batch_size=compute.batch_size, input_wait_seconds=counts[2],
        output_wait_seconds=counts[3], device=str(compute.device),
        precision=compute.precision, seconds=seconds,
        megapixels_per_second=region.height * region.width / 1e6 / max(seconds, 1e-9),
        window=row_first(region), cog=cog, stage_cpu_seconds=stage_seconds,
    )


def run_plan(plan: PredictPlan, output: Output, progress: bool | None = None
             ) -> tuple[tuple[int, int, float, float], dict[str, float]]:
    """Compute the strips ``output`` still needs through the pipeline and publish it; the
    pipeline's counts and the CPU seconds of its stages."""
    stage_seconds: dict[str, float] = {}
    with output.writing(plan) as strips:
        counts = run_pipeline(plan, strips, output, progress, stage_seconds)
    return counts, stage_seconds


def predict_raster(
    in_path: str | os.PathLike | RasterSource,
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
    window: str | tuple[int, int, int, int] | Window | None = None,
    rank: int | None = None,
    world_size: int = 1,
    chunk_width: int = CHUNK_WIDTH,
    progress: bool | None = None,
    resume: bool = False,
    compress: str = DEFAULT_COMPRESS,
    compress_threads: int | str | None = None,
) -> PredictSummary:
    """Translate ``in_path`` (a raster name, or a RasterSource parsed already) with ``model``
    (a TranslationModel or a run directory / model.json): plan, pipeline, output.

    Writes ``out_path`` (default ``<IN stem>_translated.tif``) atomically and returns a summary.
    ``window``: a Window of the raster, or ``"ROW_OFF,COL_OFF,HEIGHT,WIDTH"``.
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
        raise OptionError(f"blend {blend!r}: choose from {', '.join(BLEND_MODES)}")
    compute = Compute.resolve(device, precision, channels_last, batch_size)
    if world_size < 1 or (rank is not None and not 0 <= rank < world_size):
        raise OptionError(f"rank {rank} / world size {world_size}: need 0 <= rank < size")
    source = in_path if isinstance(in_path, RasterSource) else parse_source(in_path)
    read_too = model_files(model) if isinstance(model, (str, os.PathLike)) else []
    layout = make_layout(
        source, model, compute, direction=direction, tile_size=tile_size, overlap=overlap,
        blend=blend, norm_stats=norm_stats, window=window, rank=rank, world_size=world_size,
        chunk_width=chunk_width, cog=cog, compress=compress, compress_threads=compress_threads)
    # no output over any file the run reads: the raster's (band files, item, archive), model's
    output = GeoTiffOutput(out_path or default_output(source, rank, world_size),
                           [source, *read_too], cog=cog, overwrite=overwrite, resume=resume)
    if output.complete_already():
        return _complete_summary(layout, output, tile_size)
    plan = make_plan(layout)
    counts, stage_seconds = run_plan(plan, output, progress)
    return _summary(plan, output, counts, stage_seconds, time.perf_counter() - started, cog)
