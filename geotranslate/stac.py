"""``model.json`` as a STAC item with the Machine Learning Model (MLM) extension, so catalogues
can index a trained translator.

The item has no footprint (a model applies anywhere its input domain exists: geometry null);
its datetime is when the weights were written. ``mlm:input`` / ``mlm:output`` describe the
bands, dtypes and normalization of the source and target domains of each direction; the assets
are the weights (safetensors) and ``model.json``, with the weights' SHA-256.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pystac
import torch

from geotranslate import __version__
from geotranslate.errors import GeotranslateError
from geotranslate.modelfile import META_NAME, WEIGHTS_NAME, load_model, model_files
from geotranslate.predict.provenance import weights_sha256
from geotranslate.raster.io import atomic_path, check_file_output, check_not_input

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"


def _domain_io(name: str, domain, chip: int, role: str) -> dict:
    bands = [d or f"{name}{i + 1}" for i, d in enumerate(domain.band_descriptions or
                                                         [None] * domain.band_count)]
    shape = {"shape": [-1, domain.band_count, chip, chip],
             "dim_order": ["batch", "channel", "height", "width"], "data_type": "float32"}
    norm = domain.normalizer
    io = {"name": name, "bands": bands}
    if role == "input":
        io["input"] = shape
        io["value_scaling"] = [{"type": "min-max", "minimum": float(lo), "maximum": float(hi)}
                               for lo, hi in zip(norm.low, norm.high, strict=True)]
        io["pre_processing_function"] = None
    else:
        io["tasks"] = ["generative"]
        io["result"] = shape
        io["post_processing_function"] = None
    io["geotranslate:dtype"] = domain.dtype
    io["geotranslate:normalization"] = norm.method
    return io


def model_stac_item(run: str | os.PathLike) -> dict:
    """The STAC item (as a dict, validated by a pystac round trip) of a trained model."""
    model = load_model(run)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    meta = json.loads((folder / META_NAME).read_text())
    when = dt.datetime.fromtimestamp((folder / WEIGHTS_NAME).stat().st_mtime, dt.timezone.utc)
    inputs, outputs, archs, params = [], [], [], 0
    for direction, generator in model.generators.items():
        src, dst = model.source_domain(direction), model.target_domain(direction)
        inputs.append(_domain_io(f"{direction}:{direction[0]}", src, model.chip_size, "input"))
        outputs.append(_domain_io(f"{direction}:{direction[-1]}", dst, model.chip_size,
                                  "output"))
        archs.append(model.generator_specs[direction]["arch"])
        params += sum(p.numel() for p in generator.parameters())
    digest = {d: weights_sha256(g) for d, g in model.generators.items()}
    item = pystac.Item(
        id=f"geotranslate-{folder.resolve().name}",
        geometry=None, bbox=None, datetime=when,
        properties={
            "mlm:name": f"{model.dataset_type} {'/'.join(sorted(model.generators))} "
                        f"({folder.resolve().name})",
            "mlm:architecture": f"{model.dataset_type} generator ({', '.join(archs)})",
            "mlm:tasks": ["generative"],
            "mlm:framework": "pytorch",
            "mlm:framework_version": torch.__version__.split("+")[0],
            "mlm:pretrained": True,
            "mlm:total_parameters": params,
            "mlm:accelerator": None,
            "mlm:input": inputs,
            "mlm:output": outputs,
            "geotranslate:version": __version__,
            "geotranslate:dataset_type": model.dataset_type,
            "geotranslate:generators_sha256": digest,
            "geotranslate:chip_size": model.chip_size,
        },
        stac_extensions=[MLM_SCHEMA],
    )
    item.add_asset("weights", pystac.Asset(
        href=WEIGHTS_NAME, media_type="application/octet-stream; application=safetensors",
        roles=["mlm:model", "mlm:weights", "data"], title="generator weights (safetensors)",
        extra_fields={"mlm:artifact_type": "safetensors.torch.save_file",
                      "geotranslate:sha256": meta["weights"]["sha256"]}))
    item.add_asset("metadata", pystac.Asset(
        href=META_NAME, media_type="application/json", roles=["metadata"],
        title="geotranslate model.json"))
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    pystac.Item.from_dict(d)  # structurally valid
    return d


def write_model_stac(run: str | os.PathLike, out: str | os.PathLike,
                     overwrite: bool = False) -> Path:
    """Write the model's STAC item to ``out`` (atomically; never over the model's files)."""
    check_file_output(out)  # "dir/" names a directory, before Path drops the slash
    out = Path(out)
    check_not_input(out, model_files(run))
    item = model_stac_item(run)
    if out.is_dir():
        raise GeotranslateError(f"{out}: is a directory; give the item's file name")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(item, indent=2) + "\n")
    return out
