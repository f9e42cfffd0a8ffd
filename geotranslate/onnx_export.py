"""``export-onnx``: one direction's generator as an ONNX model that takes raw bands.

The exported graph is the generator wrapped with what ``predict-raster`` does around it
(:class:`RawBandsTranslator`): the source domain's normalization (data units -> [-1, 1],
clipped; pixels that are nodata or NaN in any band -> 0), the generator, and the target
domain's de-normalization back to data units (integers rounded and clipped to their dtype;
invalid pixels -> the output nodata, valid pixels equal to it moved one step off it, as
predict-raster writes them). So a consumer feeds float32 bands as read from the raster and
gets the translation in the target's units, without knowing our normalization.

The input is ``bands`` (N, C, T, T) float32, N free, T the tile size (fixed: QGIS's Deepness
takes the tile size from the input's shape). There is one output per target band, ``(N, 1, T,
T)`` named after the band: Deepness's Regressor reads the first channel of each output. A
single tile is what the model sees: the seamless blending of overlapping tiles is the
caller's (Deepness overlaps tiles by ``tiles_overlap`` percent).

Normalization layers: batch norm uses its running statistics (the same for every tile).
Instance norm in ONNX normalizes each tile by its own statistics, as ``predict-raster
--norm-stats tile``; with ``calibrate_on`` a raster's scene statistics are computed as
``predict-raster`` does (:mod:`geotranslate.predict.scene`) and baked into the graph as
constants, which then equals ``predict-raster`` on that raster (and suits rasters like it).

The ONNX metadata holds Deepness's keys (model_type Regressor, tile_size, tiles_overlap in
percent of the tile from the generator's receptive field, resolution in cm/px when known,
standardization that undoes Deepness's division by 255, reg_output_scaling 1, class_names:
the output band names) and ``geotranslate:*`` keys (bands, dtypes, nodata, the weights'
SHA-256, direction, normalization, version). Exported with the TorchScript-based exporter
(``dynamo=False``): it needs no extra package and takes about a second; the dynamo exporter
needs ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from geotranslate import __version__
from geotranslate.errors import (
    GeotranslateError,
    InputError,
    OptionError,
    StorageError,
    first_line,
)
from geotranslate.files import atomic_path, check_not_input
from geotranslate.modelfile import DomainSpec, TranslationModel, load_model, weights_sha256
from geotranslate.predict.grid import default_overlap
from geotranslate.predict.output import output_nodata

#: ONNX operator set of the export (onnxruntime >= 1.14 runs it)
OPSET = 17


class RawBandsTranslator(torch.nn.Module):
    """A generator between the source domain's data units and the target domain's."""

    def __init__(self, generator: torch.nn.Module, source: DomainSpec, target: DomainSpec):
        super().__init__()
        self.generator = generator
        low_in = np.asarray(source.normalizer.low, dtype=np.float64)
        high_in = np.asarray(source.normalizer.high, dtype=np.float64)
        low_out = np.asarray(target.normalizer.low, dtype=np.float64)
        high_out = np.asarray(target.normalizer.high, dtype=np.float64)
        # float32 constants computed as Normalizer.to_model / from_model compute them
        self.register_buffer("low_in", _channels(low_in))
        self.register_buffer("scale_in", _channels(2.0 / (high_in - low_in)))
        self.register_buffer("low_out", _channels(low_out))
        self.register_buffer("half_range_out", _channels((high_out - low_out) / 2.0))
        self.nodata_in = source.nodata
        self.band_count_out = target.band_count
        self.nodata_out = output_nodata(target.dtype, target.nodata)
        dtype = np.dtype(target.dtype)
        self.integer_range = None
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            self.integer_range = (float(info.min), float(info.max))

    def forward(self, bands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        valid = torch.isfinite(bands).all(dim=1, keepdim=True)
        if self.nodata_in is not None and not math.isnan(self.nodata_in):
            valid = valid & (bands != self.nodata_in).all(dim=1, keepdim=True)
        x = ((bands - self.low_in) * self.scale_in - 1.0).clamp(-1.0, 1.0)
        x = torch.where(valid, x, torch.zeros_like(x))
        y = (self.generator(x) + 1.0) * self.half_range_out + self.low_out
        if self.integer_range is not None:
            y = torch.round(y).clamp(*self.integer_range)
        nodata = self.nodata_out
        if not math.isnan(nodata) and self.integer_range is not None:
            step = -1.0 if nodata == self.integer_range[1] else 1.0
            y = torch.where(y == nodata, torch.full_like(y, nodata + step), y)
        y = torch.where(valid, y, torch.full_like(y, nodata))
        return tuple(y[:, i : i + 1] for i in range(self.band_count_out))


def _channels(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.float32)).reshape(1, -1, 1, 1)


def band_names(domain: DomainSpec, prefix: str) -> list[str]:
    """The domain's band descriptions, ``<prefix><n>`` (1-based) where a band has none."""
    return [d or f"{prefix}{i + 1}" for i, d in enumerate(domain.band_descriptions)]


def _output_names(names: list[str]) -> list[str]:
    """ONNX output names: the band names, made unique."""
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}_{n}", n + 1
        out.append(candidate)
    return out


def training_resolution_cm(model: TranslationModel, direction: str) -> float | None:
    """The source domain's pixel size in cm, from the training chips' meta.json, when it is
    still there and its CRS is in metres (else None: Deepness then asks the user)."""
    data_dir = model.training.get("data_dir")
    if not data_dir:
        return None
    from geotranslate.chips.meta import META_NAME, read_chip_meta

    try:
        domain = read_chip_meta(Path(data_dir) / META_NAME, domains=()).domains[direction[0]]
        size, crs = float(domain.pixel_size[0]), domain.crs
    except (GeotranslateError, KeyError, TypeError, IndexError):
        return None
    if not crs or not size > 0:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        units = CRS.from_user_input(crs).linear_units
    except CRSError:
        return None
    return round(size * 100.0, 6) if units in ("metre", "meter") else None


def onnx_metadata(model: TranslationModel, direction: str, *, tile: int, overlap: int,
                  norm_stats: str, digest: str, resolution_cm: float | None) -> dict[str, str]:
    """The ONNX model's metadata: Deepness's keys (JSON values) and ours (``geotranslate:``)."""
    source, target = model.source_domain(direction), model.target_domain(direction)
    names_in, names_out = band_names(source, "band"), band_names(target, "band")
    deepness = {
        "model_type": "Regressor",
        "tile_size": tile,
        "tiles_size": tile,  # the key as Deepness's documentation spells it
        "tiles_overlap": math.ceil(100 * overlap / tile),
        # Deepness divides the input by 255 and then standardizes: this gives the raw values
        "standardization_mean": [0.0] * source.band_count,
        "standardization_std": [1.0 / 255.0] * source.band_count,
        "reg_output_scaling": 1.0,
        "class_names": [{"0": name} for name in names_out],
    }
    if resolution_cm is not None:
        deepness["resolution"] = resolution_cm
    ours = {
        "geotranslate:version": __version__,
        "geotranslate:dataset_type": model.dataset_type,
        "geotranslate:direction": direction,
        "geotranslate:weights_sha256": digest,
        "geotranslate:input_bands": names_in,
        "geotranslate:input_dtype": source.dtype,
        "geotranslate:input_nodata": source.nodata,
        "geotranslate:output_bands": names_out,
        "geotranslate:output_dtype": target.dtype,
        "geotranslate:output_nodata": _json_number(output_nodata(target.dtype, target.nodata)),
        "geotranslate:normalization": {"input": source.normalizer.to_dict(),
                                       "output": target.normalizer.to_dict()},
        "geotranslate:norm_stats": norm_stats,
        "geotranslate:receptive_field": model.receptive_field(direction),
        "geotranslate:overlap_px": overlap,
    }
    return {k: json.dumps(v) for k, v in {**deepness, **ours}.items()}


def _json_number(value: float) -> float | str:
    return "nan" if math.isnan(value) else value


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    direction: str = "a2b",
    tile_size: int | None = None,
    calibrate_on: str | os.PathLike | None = None,
    resolution_cm: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the ONNX model of RUN's ``direction`` generator to ``out``; returns a summary.

    ``tile_size``: the model's input size (default the chip size). ``calibrate_on``: a raster
    whose scene statistics the instance norms keep (see the module docstring).
    ``resolution_cm``: Deepness's resolution (default: from the training chips, if known).
    """
    import onnx

    from geotranslate.models.norms import norm_layer_kinds
    from geotranslate.predict.scene import norm_stats_label

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out)
    inputs = [folder / "model.json", folder / "model.safetensors"]
    check_not_input(out, inputs + ([Path(calibrate_on)] if calibrate_on is not None else []))
    if out.is_dir():
        raise StorageError(f"{out}: is a directory; give the ONNX file's name")
    model = load_model(run)
    generator = model.generator(direction).eval()
    source, target = model.source_domain(direction), model.target_domain(direction)
    divisor = int(getattr(generator, "total_stride", 1))
    tile = int(model.chip_size if tile_size is None else tile_size)
    if tile < divisor or tile % divisor:
        raise OptionError(
            f"tile size {tile}: must be a positive multiple of {divisor} for this generator")
    digest = weights_sha256(generator)
    kinds = norm_layer_kinds(generator)
    if calibrate_on is not None:
        generator, norm_stats = _calibrated(generator, model, direction, calibrate_on)
    else:
        norm_stats = norm_stats_label(kinds, "tile", 0, 0)
    overlap = default_overlap(tile, model.receptive_field(direction), divisor)
    wrapped = RawBandsTranslator(generator, source, target).eval()
    names = _output_names(band_names(target, "band"))
    example = torch.zeros(1, source.band_count, tile, tile)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice, and tracing notes about shape checks
        # that are constant for the fixed tile size
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapped, (example,), buffer, dynamo=False, opset_version=OPSET,
                input_names=["bands"], output_names=names,
                dynamic_axes={"bands": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            )
        except Exception as e:  # an operator ONNX lacks: one line, not a trace dump
            raise GeotranslateError(
                f"{folder}: the {direction} generator cannot be exported to ONNX "
                f"({first_line(e)})") from None
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = (f"geotranslate {model.dataset_type} {direction}: raw {source.dtype} "
                        f"bands in, {target.dtype} data units out")
    metadata = onnx_metadata(
        model, direction, tile=tile, overlap=overlap, norm_stats=norm_stats, digest=digest,
        resolution_cm=(resolution_cm if resolution_cm is not None
                       else training_resolution_cm(model, direction)))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return {"output": str(out), "direction": direction, "tile_size": tile,
            "overlap": overlap, "norm_stats": norm_stats, "outputs": names,
            "weights_sha256": digest}


def _calibrated(generator, model: TranslationModel, direction: str, raster):
    """The generator with the scene statistics of ``raster`` (as predict-raster computes them
    for the whole raster) and the label of what was done."""
    from rasterio.windows import Window

    from geotranslate.predict.scene import sample_tile, scene_generator, scene_sample
    from geotranslate.raster.io import open_raster
    from geotranslate.raster.opening import spectral_bands
    from geotranslate.raster.sources import parse_source

    source = model.source_domain(direction)
    in_source = parse_source(raster)
    with open_raster(in_source, allow_no_crs=True) as ds:
        bands = spectral_bands(ds)
        region = Window(0, 0, ds.width, ds.height)
    if len(bands) != source.band_count:
        raise InputError(
            f"{in_source.name}: has {len(bands)} band(s) but the model's {direction} "
            f"generator expects {source.band_count}")
    tile = sample_tile(int(model.chip_size), int(getattr(generator, "total_stride", 1)))
    return scene_generator(
        generator, "scene",
        lambda: scene_sample(in_source, bands, source, region, tile),
        torch.device("cpu"), contextlib.nullcontext)
