"""``model.json`` as a STAC item with the Machine Learning Model (MLM) extension, so catalogues
can index a trained translator.

The MLM fields are built with ``stac-model`` (the extension's pydantic models, which check
them) and the item declares MLM v1.4.0, the version pystac's own MLM extension implements;
tests/test_stac.py validates it against that version's JSON schema. The item has no footprint
(a model applies anywhere its input domain exists: geometry null); its datetime is when the
weights were written; its id is the SHA-256 of the weights (a model, not a folder name).

Each direction (``a2b``, ``b2a``) is one ``mlm:input`` and one ``mlm:output``. Their bands are
named after the domains' band descriptions (``a1``, ``b2``, … where a band has none) and
listed with dtype and nodata in the item's ``bands`` (STAC 1.1). ``value_scaling`` is, per
band, the exact affine map to the network's [-1, 1]: a z-score with mean (low + high) / 2 and
stddev (high - low) / 2; the values are then clipped to [-1, 1] and invalid pixels set to 0
(``pre_processing_function``: :meth:`geotranslate.stats.Normalizer.to_model`). Outputs map
back with the target's low/high (``geotranslate:normalization``,
:meth:`geotranslate.stats.Normalizer.from_model`). The assets are the weights (safetensors)
and ``model.json`` with the weights' SHA-256, and an ONNX export (``export-onnx``) when one is
given: that model takes the raw bands, its scaling included.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pystac
import torch

from geotranslate import __version__
from geotranslate.chips.meta import DOMAINS
from geotranslate.errors import InputError, OptionError, StorageError
from geotranslate.files import atomic_path, check_file_output, check_not_input
from geotranslate.modelfile import (
    DIRECTIONS,
    META_NAME,
    WEIGHTS_NAME,
    DomainSpec,
    load_model,
    model_files,
    sha256_file,
    weights_sha256,
)

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"


def _band_names(domain: DomainSpec, key: str) -> list[str]:
    """The domain's band descriptions; ``<domain><n>`` where a band has none or repeats."""
    names: list[str] = []
    for i, d in enumerate(domain.band_descriptions):
        names.append(d if d and d not in names else f"{key}{i + 1}")
    return names


def mlm_name(text: str) -> str:
    """``text`` made to fit the MLM name pattern (a letter first, a letter or digit last,
    letters, digits, ``_ . -`` and spaces between)."""
    name = re.sub(r"[^a-zA-Z0-9_.\-\s]", "-", text)
    if not name[:1].isalpha():
        name = "model " + name
    name = re.sub(r"[^a-zA-Z0-9]+$", "", name)
    return name if len(name) >= 3 else name + " model"


def _model_io(direction: str, model, chip: int, names: dict[str, list[str]]):
    from stac_model.base import ProcessingExpression
    from stac_model.input import InputStructure, ModelInput, ValueScalingZScore
    from stac_model.output import ModelOutput, ModelResult

    src_key, dst_key = DIRECTIONS[direction]
    src, dst = model.domains[src_key], model.domains[dst_key]
    norm = src.normalizer
    dims = ["batch", "channel", "height", "width"]
    model_input = ModelInput(
        name=f"{direction} input",
        bands=names[src_key],
        variables=None,
        input=InputStructure(shape=[-1, src.band_count, chip, chip], dim_order=dims,
                             data_type="float32"),
        value_scaling=[ValueScalingZScore(mean=(lo + hi) / 2, stddev=(hi - lo) / 2)
                       for lo, hi in zip(norm.low, norm.high, strict=True)],
        pre_processing_function=ProcessingExpression(
            format="python", expression="geotranslate.stats:Normalizer.to_model"),
    )
    model_output = ModelOutput(
        name=f"{direction} output",
        bands=names[dst_key],
        variables=None,
        tasks={"generative"},
        result=ModelResult(shape=[-1, dst.band_count, chip, chip], dim_order=dims,
                           data_type="float32"),
        post_processing_function=ProcessingExpression(
            format="python", expression="geotranslate.stats:Normalizer.from_model"),
    )
    extra_in = {"description": f"domain {src_key}, {src.dtype}, scaled to [-1, 1]",
                "geotranslate:normalization": norm.to_dict()}
    extra_out = {"description": f"domain {dst_key} in [-1, 1]; data units by "
                                f"geotranslate:normalization, as {dst.dtype}",
                 "geotranslate:normalization": dst.normalizer.to_dict()}
    return model_input, extra_in, model_output, extra_out


def _stac_bands(model, names: dict[str, list[str]]) -> list[dict]:
    """STAC 1.1 ``bands`` of both domains: name, description, dtype, nodata."""
    out = []
    for key in DOMAINS:
        dom = model.domains[key]
        for name in names[key]:
            band = {"name": name, "description": f"domain {key}", "data_type": dom.dtype}
            if dom.nodata is not None:
                nodata = float(dom.nodata)
                band["nodata"] = "nan" if nodata != nodata else nodata
            out.append(band)
    return out


def model_stac_item(run: str | os.PathLike, onnx: Sequence[str | os.PathLike] = (),
                    base: str | os.PathLike | None = None) -> dict:
    """The STAC item (as a dict) of a trained model; ``onnx``: its ONNX exports (assets
    ``onnx_a2b``, ``onnx_b2a``). Asset hrefs are relative to ``base``, the folder the item
    is written to (default: the run's)."""
    from stac_model.schema import MLModelProperties

    model = load_model(run)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    sha = model.weights_file_sha256
    when = dt.datetime.fromtimestamp((folder / WEIGHTS_NAME).stat().st_mtime, dt.UTC)
    names = {k: _band_names(model.domains[k], k) for k in DOMAINS}
    inputs, outputs, archs, params = [], [], [], 0
    for direction in sorted(model.generators):
        generator = model.generators[direction]
        model_input, extra_in, model_output, extra_out = _model_io(
            direction, model, model.chip_size, names)
        inputs.append((model_input, extra_in))
        outputs.append((model_output, extra_out))
        archs.append(model.generator_specs[direction]["arch"])
        params += sum(p.numel() for p in generator.parameters())
    pretrained = bool(model.training.get("pretrained"))
    properties = MLModelProperties(
        name=mlm_name(f"geotranslate {model.dataset_type} {' '.join(sorted(model.generators))} "
                      f"{folder.resolve().name}"),
        architecture=f"{model.dataset_type} generator ({', '.join(archs)})",
        tasks={"generative"},
        framework="PyTorch",
        framework_version=torch.__version__.split("+")[0],
        accelerator=None,
        pretrained=pretrained,
        pretrained_source="ImageNet encoder weights (segmentation_models_pytorch)"
        if pretrained else None,
        total_parameters=params,
        input=[i for i, _ in inputs],
        output=[o for o, _ in outputs],
    )
    fields = json.loads(properties.model_dump_json(by_alias=True, exclude_none=False))
    fields = {k: v for k, v in fields.items()
              if v is not None or k in ("mlm:accelerator",)}
    for entry, (_, extra) in zip(fields["mlm:input"], inputs, strict=True):
        entry.update(extra)
    for entry, (_, extra) in zip(fields["mlm:output"], outputs, strict=True):
        entry.update(extra)
    digest = {d: weights_sha256(g) for d, g in model.generators.items()}
    item = pystac.Item(
        id=f"geotranslate-{sha[:16]}",
        geometry=None, bbox=None, datetime=when,
        properties={
            **fields,
            "bands": _stac_bands(model, names),
            "geotranslate:version": __version__,
            "geotranslate:dataset_type": model.dataset_type,
            "geotranslate:generators_sha256": digest,
            "geotranslate:chip_size": model.chip_size,
        },
        stac_extensions=[MLM_SCHEMA],
    )
    item.add_asset("weights", pystac.Asset(
        href=_href(folder / WEIGHTS_NAME, base or folder),
        media_type="application/octet-stream; application=safetensors",
        roles=["mlm:model", "mlm:weights", "data"], title="generator weights (safetensors)",
        extra_fields={"mlm:artifact_type": "safetensors.torch.save_file",
                      "geotranslate:sha256": sha}))
    item.add_asset("metadata", pystac.Asset(
        href=_href(folder / META_NAME, base or folder), media_type="application/json",
        roles=["metadata"],
        title="geotranslate model.json"))
    for path in onnx:
        asset, direction, generator_sha = _onnx_asset(Path(path), base or folder)
        if generator_sha != digest.get(direction):
            raise InputError(f"{path}: was exported from other weights than {folder}'s "
                                    f"{direction} generator")
        key = f"onnx_{direction}"
        if key in item.assets:
            raise OptionError(f"{path}: a second ONNX model of the same direction")
        item.add_asset(key, asset)
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    pystac.Item.from_dict(d)  # structurally valid
    return d


def _href(path: Path, base: str | os.PathLike) -> str:
    """``path`` relative to the item's folder ``base`` (POSIX separators, as STAC wants)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _onnx_asset(path: Path, base: str | os.PathLike) -> tuple[pystac.Asset, str, str]:
    """The ONNX export as an asset (its href relative to the item's folder ``base``), its
    direction and the digest of the generator weights it was exported from."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a missing file, or protobuf's DecodeError
        raise InputError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        direction = json.loads(props["geotranslate:direction"])
        generator_sha = json.loads(props["geotranslate:weights_sha256"])
    except (KeyError, ValueError):
        raise InputError(
            f"{path}: not an ONNX model written by geotranslate export-onnx") from None
    asset = pystac.Asset(
        href=_href(path, base), media_type=ONNX_MEDIA_TYPE, roles=["mlm:model", "data"],
        title=f"{direction} generator as ONNX (raw bands in, data units out)",
        extra_fields={"mlm:artifact_type": "torch.onnx.export",
                      "geotranslate:sha256": sha256_file(path),
                      "geotranslate:direction": direction,
                      "geotranslate:deepness": {"model_type": json.loads(props["model_type"]),
                                                "tile_size": json.loads(props["tile_size"])}})
    return asset, direction, generator_sha


def write_model_stac(run: str | os.PathLike, out: str | os.PathLike,
                     overwrite: bool = False, onnx: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the model's STAC item to ``out`` (atomically; never over the model's files)."""
    check_file_output(out)  # "dir/" names a directory, before Path drops the slash
    out = Path(out)
    check_not_input(out, model_files(run))
    item = model_stac_item(run, onnx, base=out.resolve().parent)
    if out.is_dir():
        raise StorageError(f"{out}: is a directory; give the item's file name")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(item, indent=2) + "\n")
    return out
