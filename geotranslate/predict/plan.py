"""The plan of a prediction: everything decided once, before the first tile is computed.

Two steps build it:

* :func:`make_layout` checks the options against the model and the raster's metadata and fixes
  the tile grid (Windows in the raster's pixels: the grid's extent and the region the output
  covers), tile size, overlap, blend, the domains and the output's profile. It reads no pixel
  (except a model that normalizes by the scene's own statistics, inputs.py).
* :func:`make_plan` adds what needs the scene's pixels and the input's content: the generator
  with the scene's normalization statistics (the scene pass, predict/scene.py), the output's
  provenance tags and the key ``--resume`` compares with an interrupted run's.

``--resume`` over an output an earlier run finished stops between the two, reading nothing.
The runner (predict/api.py) executes the plan through the pipeline into an output.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rasterio.windows import Window

from geotranslate.device import autocast as device_autocast
from geotranslate.device import default_channels_last, resolve_device, resolve_precision
from geotranslate.errors import InputError, OptionError
from geotranslate.inputs import check_composition, input_reader, scene_spec
from geotranslate.log import logger
from geotranslate.memory import check_memory
from geotranslate.modelfile import DomainSpec, TranslationModel, load_model, weights_sha256
from geotranslate.models import keep_channels_last
from geotranslate.predict.grid import (
    CHUNK_WIDTH,
    Strip,
    default_overlap,
    grid_window,
    parse_region,
    plan_strips,
    rank_window,
    row_first,
)
from geotranslate.predict.output import output_nodata, output_profile
from geotranslate.predict.pipeline import READ_AHEAD
from geotranslate.predict.provenance import provenance_tags
from geotranslate.predict.resume import input_identity
from geotranslate.predict.scene import sample_tile, scene_generator, scene_sample
from geotranslate.raster.io import open_raster, spectral_bands
from geotranslate.raster.sources import RasterSource


@dataclass(frozen=True)
class Compute:
    """How the tiles are computed: device, precision (autocast), memory layout, batch size."""

    device: torch.device
    precision: str
    channels_last: bool
    batch_size: int

    @classmethod
    def resolve(cls, device: str, precision: str, channels_last: bool | None,
                batch_size: int) -> Compute:
        """The options as given (``auto``, None: the defaults of this machine), checked."""
        if batch_size < 1:
            raise OptionError(f"batch size {batch_size}: must be at least 1")
        dev = resolve_device(device)
        precision = resolve_precision(precision, dev)
        if channels_last is None:
            channels_last = default_channels_last(dev, precision)
        return cls(dev, precision, channels_last, batch_size)

    def autocast(self):
        """A fresh autocast context of this precision."""
        return device_autocast(self.device, self.precision)


@dataclass(frozen=True)
class Layout:
    """A prediction as the options, the model and the raster's metadata decide it."""

    source: RasterSource  # parsed once (raster/sources.py)
    direction: str
    model: TranslationModel
    compute: Compute
    bands: tuple[int, ...]  # the raster's bands the generator reads
    domain_in: DomainSpec  # the input domain as it normalizes this raster (inputs.py)
    domain_out: DomainSpec
    read: Callable | None  # read(ds, window) through the input transforms; None: plain
    grid: Window  # the tile grid's extent in the raster: the raster, or --window
    region: Window  # what the output covers: the grid, or --rank's band of its rows
    tile: int
    overlap: int
    align: int  # the generator's total stride: tiles start on its lattice
    blend: str
    norm_stats: str  # "scene" or "tile" (predict/scene.py)
    receptive_field: int
    chunk_width: int
    strips: tuple[Strip, ...]  # every tile row of every column chunk (predict/grid.py)
    nodata: float
    profile: dict  # the output GeoTIFF's creation options (predict/output.py)
    compress: str

    @property
    def out_rows(self) -> tuple[int, int]:
        """The grid rows the output covers, [start, stop)."""
        start = self.region.row_off - self.grid.row_off
        return start, start + self.region.height


@dataclass(frozen=True)
class PredictPlan(Layout):
    """A layout with what needs the scene's pixels and the input's content (:func:`make_plan`)."""

    generator: torch.nn.Module  # on the device, in the tiles' layout, scene statistics kept
    norm_label: str  # what its normalization layers use (the GEOTRANSLATE_NORM_STATS tag)
    tags: dict  # the output's GEOTRANSLATE_* provenance tags
    resume_key: dict  # what --resume requires of an interrupted run (predict/resume.py)


def make_layout(
    source: RasterSource,
    model: TranslationModel | str | os.PathLike,
    compute: Compute,
    *,
    direction: str,
    tile_size: int | None,
    overlap: int | None,
    blend: str,
    norm_stats: str,
    window: str | tuple[int, int, int, int] | Window | None,
    rank: int | None,
    world_size: int,
    chunk_width: int,
    cog: bool,
    compress: str,
    compress_threads: int | str | None,
) -> Layout:
    """Check the options against the model and the raster ``source``; fix grid and profile."""
    with open_raster(source, allow_no_crs=True) as ds:
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=compute.device)
        generator = model.generator(direction)
        domain_in, domain_out = model.source_domain(direction), model.target_domain(direction)
        bands = _check_bands(ds, source.name, domain_in.band_count, direction)
        _note_missing_crs(ds, source.name)
        grid = grid_window(parse_region(window), ds.height, ds.width, ds.name)
        region = _output_region(grid, rank, world_size)
        align = int(getattr(generator, "total_stride", 1))
        tile = _tile_size(model.chip_size if tile_size is None else tile_size, align)
        field = model.receptive_field(direction)
        overlap = _overlap(overlap, tile, field, align)
        check_memory(_working_set(tile, compute.batch_size, domain_in.band_count,
                                  domain_out.band_count),
                     f"--tile-size {tile}", "use a smaller --tile-size (or --batch-size)")
        check_composition(domain_in, source, source.name, direction)
        read = input_reader(domain_in, bands)
        domain_in = scene_spec(domain_in, ds, bands, read)
        nodata = output_nodata(domain_out.dtype, domain_out.nodata)
        profile = output_profile(ds, region, domain_out, nodata, cog, compress, compress_threads)
    strips = plan_strips(grid, region, tile, overlap, chunk_width, align)
    return Layout(
        source=source, direction=direction, model=model, compute=compute, bands=tuple(bands),
        domain_in=domain_in, domain_out=domain_out, read=read, grid=grid, region=region,
        tile=tile, overlap=overlap, align=align, blend=blend, norm_stats=norm_stats,
        receptive_field=field, chunk_width=chunk_width, strips=tuple(strips), nodata=nodata,
        profile=profile, compress=compress)


def _check_bands(ds, name: str, expected: int, direction: str) -> list[int]:
    """The raster's spectral bands, refused unless as many as the generator takes."""
    bands = spectral_bands(ds)
    if len(bands) != expected:
        raise InputError(f"{name}: has {len(bands)} band(s) but the model's {direction} "
                         f"generator expects {expected}")
    return bands


def _note_missing_crs(ds, name: str) -> None:
    if ds.crs is None:
        kind = "GCPs" if ds.gcps[0] else "RPCs" if ds.rpcs is not None else None
        what = f"keeps its {kind} but has no CRS either" if kind else "has none either"
        logger.warning(f"{name} has no CRS; the output {what}")


def _output_region(grid: Window, rank: int | None, world_size: int) -> Window:
    """The grid, or the ``rank``-th of ``world_size`` bands of its rows."""
    if rank is not None:
        return rank_window(grid, rank, world_size)
    if world_size != 1:
        raise OptionError(f"world size {world_size}: give --rank too (0..N-1)")
    return grid


def _tile_size(tile: int, align: int) -> int:
    tile = int(tile)
    if tile < align or tile % align:
        raise OptionError(
            f"tile size {tile}: must be a positive multiple of {align} for this generator")
    return tile


def _overlap(overlap: int | None, tile: int, field: int, align: int) -> int:
    overlap = int(default_overlap(tile, field, align) if overlap is None else overlap)
    if not 0 <= overlap < tile:
        raise OptionError(f"overlap {overlap}: must be >= 0 and < the tile size {tile}")
    return overlap


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


def make_plan(layout: Layout) -> PredictPlan:
    """The layout with the scene pass run, the provenance tags and the resume key."""
    generator, norm_label = _scene_generator(layout)
    # the weights' digest: the model's generator, not the one holding the scene statistics
    digest = weights_sha256(layout.model.generator(layout.direction))
    tags = _provenance(layout, norm_label, digest)
    key = _resume_key(layout, norm_label, digest, tags["GEOTRANSLATE_VERSION"])
    return PredictPlan(**vars(layout), generator=generator, norm_label=norm_label, tags=tags,
                       resume_key=key)


def _scene_generator(layout: Layout) -> tuple[torch.nn.Module, str]:
    """The generator on the device, in the tiles' layout, with the scene's statistics: the
    scene pass runs in the tiles' precision and layout (predict/scene.py)."""
    compute = layout.compute
    generator = layout.model.generator(layout.direction).to(compute.device).eval()
    if compute.channels_last:  # with norms and paddings that keep the layout (models/layout.py)
        generator = keep_channels_last(copy.deepcopy(generator))
        generator = generator.to(memory_format=torch.channels_last)
    tile = sample_tile(int(layout.model.chip_size), layout.align)
    return scene_generator(
        generator, layout.norm_stats,
        lambda: scene_sample(layout.source, list(layout.bands), layout.domain_in, layout.grid,
                             tile, read=layout.read),
        compute.device, compute.autocast, channels_last=compute.channels_last,
    )


def _provenance(layout: Layout, norm_label: str, digest: str) -> dict[str, str]:
    """The output's GEOTRANSLATE_* tags (predict/provenance.py)."""
    source = layout.source
    tags = provenance_tags(layout.model, layout.direction,
                           Path(source.name).name if source.local else source.name,
                           digest=digest, tile=layout.tile, overlap=layout.overlap,
                           blend=layout.blend)
    tags.update({
        "GEOTRANSLATE_NORM_STATS": norm_label,
        "GEOTRANSLATE_TILE_SIZE": str(layout.tile),
        "GEOTRANSLATE_OVERLAP": str(layout.overlap),
        "GEOTRANSLATE_RECEPTIVE_FIELD": str(layout.receptive_field),
    })
    domain = layout.domain_in
    if domain.norm_scope != "dataset" or domain.input_transforms:  # inputs.py
        tags["GEOTRANSLATE_INPUT"] = "; ".join(
            [f"norm scope {domain.norm_scope}"]
            + [f"{t['kind']} radius {t['radius_px']} px" for t in domain.input_transforms])
    return tags


def _resume_key(layout: Layout, norm_label: str, digest: str, version: str) -> dict:
    """What ``--resume`` requires of the interrupted run: the same input (and content), weights
    and every option that changes the result or the file's bytes (regions row first)."""
    compute = layout.compute
    return {"input": layout.source.name, "input_identity": input_identity(layout.source),
            "weights_sha256": digest, "direction": layout.direction,
            "region": list(row_first(layout.region)), "grid": list(row_first(layout.grid)),
            "tile": layout.tile, "overlap": layout.overlap, "blend": layout.blend,
            "norm_stats": norm_label, "batch_size": compute.batch_size,
            "device": compute.device.type, "precision": compute.precision,
            "chunk_width": layout.chunk_width, "compress": layout.compress,
            "version": version}
