"""Save and load a trained translator: ``model.safetensors`` (weights) + ``model.json`` (the rest).

No pickle: the weights are safetensors, everything else is JSON, and ``model.json`` records the
SHA-256 of the weights so a tampered or truncated file is refused rather than half-loaded.

``model.json`` holds: format name and version, dataset type, for each direction (``a2b``,
``b2a``) the generator spec to rebuild it, for each domain (``a``, ``b``) band count, dtype,
band descriptions, nodata and the normalizer, the chip size, a training summary and, per
direction, the generator's ``receptive_field`` in input pixels (computed from its layers when
saving; files written before it existed get it computed when loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geotranslate import schema as sc
from geotranslate.chips.meta import DOMAINS
from geotranslate.errors import (
    GeotranslateError,
    InputError,
    OptionError,
    StorageError,
    first_line,
)
from geotranslate.files import atomic_path, write_failed
from geotranslate.inputs import NORM_SCOPES
from geotranslate.stats import NORM_METHODS, Normalizer

FORMAT = "geotranslate-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
DIRECTIONS = {"a2b": DOMAINS, "b2a": DOMAINS[::-1]}
GENERATOR_PREFIX = {"a2b": "g_ab", "b2a": "g_ba"}

_DOMAIN = sc.Obj(
    {"band_count": sc.Int(min=1), "dtype": sc.DTYPE,
     "normalizer": sc.Obj({"method": sc.Str(NORM_METHODS), "low": sc.List(sc.Num(), 1),
                           "high": sc.List(sc.Num(), 1)})},
    optional={"band_descriptions": sc.Opt(sc.List(sc.Opt(sc.Str()))),
              "nodata": sc.Opt(sc.Num(finite=False)),
              "norm_scope": sc.Str(NORM_SCOPES),
              "reference": sc.Obj({"mean": sc.List(sc.Num(), 1), "std": sc.List(sc.Num(), 1)}),
              "input_transforms": sc.List(sc.Obj({"kind": sc.Str(("relative_elevation",)),
                                                  "radius_px": sc.Int(min=1)})),
              "composition": sc.List(sc.Obj({"band_count": sc.Int(min=1),
                                             "dtype": sc.DTYPE}))},
)
#: what load_model needs of model.json (other keys are allowed: newer optional fields);
#: ``dataset_type`` must also name a method of the registry (:func:`_check_method`)
MODEL_SCHEMA = sc.Obj(
    {"dataset_type": sc.Str(),
     "generators": sc.Map(sc.Obj({"arch": sc.Str(), "in_channels": sc.Int(min=1),
                                  "out_channels": sc.Int(min=1)},
                                 optional={"kwargs": sc.Obj()}),
                          keys=tuple(DIRECTIONS), min_len=1),
     "domains": sc.Obj({"a": _DOMAIN, "b": _DOMAIN}),
     "chip_size": sc.Int(min=1),
     "weights": sc.Obj({"sha256": sc.Str()})},
    optional={"training": sc.Obj()},
)


@dataclass
class DomainSpec:
    """One imaging domain as the model sees it: bands, dtype, nodata and normalization."""

    band_count: int
    dtype: str
    band_descriptions: list[str | None]
    nodata: float | None
    normalizer: Normalizer
    #: "scene": each input is first matched to ``reference`` by its own statistics (inputs.py);
    #: "dataset" (files written before the option existed): the normalizer alone
    norm_scope: str = "dataset"
    reference: dict | None = None  # {"mean": [...], "std": [...]} of the scene scope
    input_transforms: list[dict] = field(default_factory=list)  # e.g. relative elevation
    #: the sources the domain's bands come from, in order ({band_count, dtype, source}), when
    #: they are fused from several (raster/sources.py ``fuse:``)
    composition: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {
            "band_count": self.band_count,
            "dtype": self.dtype,
            "band_descriptions": list(self.band_descriptions),
            "nodata": self.nodata,
            "normalizer": self.normalizer.to_dict(),
            "norm_scope": self.norm_scope,
        }
        if self.norm_scope == "scene":
            out["reference"] = self.reference
        if self.input_transforms:
            out["input_transforms"] = list(self.input_transforms)
        if self.composition:
            out["composition"] = list(self.composition)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> DomainSpec:
        return cls(
            band_count=int(d["band_count"]),
            dtype=str(d["dtype"]),
            band_descriptions=list(d.get("band_descriptions") or [None] * int(d["band_count"])),
            nodata=d.get("nodata"),
            normalizer=Normalizer.from_dict(d["normalizer"]),
            norm_scope=str(d.get("norm_scope", "dataset")),
            reference=d.get("reference"),
            input_transforms=list(d.get("input_transforms") or []),
            composition=list(d.get("composition") or []),
        )


@dataclass
class TranslationModel:
    """Generators by direction plus what is needed to feed them rasters and decode their output."""

    dataset_type: str  # the method that trained it: a key of geotranslate.methods.METHODS
    generators: dict[str, torch.nn.Module]  # "a2b" -> g_ab, "b2a" -> g_ba
    generator_specs: dict[str, dict]  # direction -> GeneratorSpec.to_dict()
    domains: dict[str, DomainSpec]  # "a", "b"
    chip_size: int
    training: dict = field(default_factory=dict)
    receptive_fields: dict[str, int] = field(default_factory=dict)  # direction -> input px
    weights_file_sha256: str | None = None  # of model.safetensors, as loaded (model.json's)

    def receptive_field(self, direction: str) -> int:
        """Receptive field of the ``direction`` generator in input pixels (computed once)."""
        if direction not in self.receptive_fields:
            from geotranslate.models.receptive import receptive_field

            self.receptive_fields[direction] = receptive_field(self.generator(direction))
        return self.receptive_fields[direction]

    def generator(self, direction: str) -> torch.nn.Module:
        if direction not in DIRECTIONS:
            raise OptionError(f"direction {direction!r}: choose a2b or b2a")
        if direction not in self.generators:
            raise OptionError(
                f"this {self.dataset_type} model has no {direction} generator "
                f"(it has: {', '.join(sorted(self.generators))})"
            )
        return self.generators[direction]

    def source_domain(self, direction: str) -> DomainSpec:
        return self.domains[DIRECTIONS[direction][0]]

    def target_domain(self, direction: str) -> DomainSpec:
        return self.domains[DIRECTIONS[direction][1]]

    def to_json_dict(self, weights_digest: str) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset_type": self.dataset_type,
            "generators": self.generator_specs,
            "domains": {k: v.to_dict() for k, v in self.domains.items()},
            "chip_size": self.chip_size,
            "training": self.training,
            "receptive_field": {d: self.receptive_field(d) for d in sorted(self.generators)},
            "weights": {"file": WEIGHTS_NAME, "sha256": weights_digest},
        }


def weights_sha256(generator: torch.nn.Module) -> str:
    """SHA-256 of a generator's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # reshape(-1): 0-d tensors (batch norm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (model.json records the weights file's)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: TranslationModel, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for direction, net in model.generators.items():
        prefix = GENERATOR_PREFIX[direction]
        for name, value in net.state_dict().items():
            value = value.detach().to("cpu")
            if value.is_floating_point():
                value = value.float()  # bf16/fp16 training still saves fp32 weights
            tensors[f"{prefix}.{name}"] = value.contiguous()
    # The pair is replaced as a unit: the new model.json is first written complete under a
    # pending name, then the weights and it are renamed. A kill between the two renames
    # leaves new weights, the old model.json and the pending one that matches them, which
    # load_model then completes.
    pending = _pending_path(out / META_NAME)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        except SafetensorError as e:  # an I/O error (a full disk) comes as this type
            raise write_failed(out / WEIGHTS_NAME, first_line(e)) from None
        digest = sha256_file(tmp)
        with atomic_path(pending) as tmp_meta:
            tmp_meta.write_text(json.dumps(model.to_json_dict(digest), indent=2))
    os.replace(pending, out / META_NAME)
    return out / META_NAME


def _pending_path(meta_path: Path) -> Path:
    """Where save_model keeps the new model.json until the new weights are in place."""
    return meta_path.with_name(f".{meta_path.name}.next")


def _read_model_json(path: Path) -> dict:
    meta = sc.load_json(path, "corrupt model file")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a geotranslate model file")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # "1", 1.0 and true are not 1
        raise InputError(
            f"{path}: model format_version {json.dumps(version)} is not supported by this "
            f"geotranslate, which reads only format_version {FORMAT_VERSION} (an integer)"
        )
    _check_method(meta, path)
    sc.validate(meta, MODEL_SCHEMA, path)
    _check_model_fields(meta, path)
    return meta


def _check_method(meta: dict, path: Path) -> None:
    """``dataset_type`` names a method of the registry (the training code, imported only when
    a model file is read: the format itself does not depend on it)."""
    from geotranslate.methods import METHODS

    sc.validate(meta, sc.Obj({"dataset_type": sc.Str(tuple(METHODS))}), path)


def _check_model_fields(meta: dict, path: Path) -> None:
    """What the schema cannot say: fields that must agree with each other."""
    for d, dom in meta["domains"].items():
        where = f"domains.{d}"
        count = dom["band_count"]
        descriptions = dom.get("band_descriptions")
        if descriptions and len(descriptions) != count:
            raise sc.invalid(path, f"{where}.band_descriptions",
                             f"{len(descriptions)} descriptions for {count} bands")
        norm = dom["normalizer"]
        for key in ("low", "high"):
            if len(norm[key]) != count:
                raise sc.invalid(path, f"{where}.normalizer.{key}",
                                 f"{len(norm[key])} values for {count} bands")
        for i, (low, high) in enumerate(zip(norm["low"], norm["high"], strict=True)):
            if not high > low:
                raise sc.invalid(path, f"{where}.normalizer",
                                 f"band {i + 1} has an empty range (low {low}, high {high})")
        sc.check_nodata(path, f"{where}.nodata", dom.get("nodata"), dom["dtype"])
        if dom.get("norm_scope") == "scene":
            reference = dom.get("reference")
            if reference is None:
                raise sc.invalid(path, f"{where}.reference", "missing for norm_scope scene")
            for key in ("mean", "std"):
                if len(reference[key]) != count:
                    raise sc.invalid(path, f"{where}.reference.{key}",
                                     f"{len(reference[key])} values for {count} bands")
    for direction, spec in meta["generators"].items():
        source, target = DIRECTIONS[direction]
        for key, d in (("in_channels", source), ("out_channels", target)):
            want = meta["domains"][d]["band_count"]
            if spec[key] != want:
                raise sc.invalid(path, f"generators.{direction}.{key}",
                                 f"{spec[key]}, but domain {d} has {want} bands")


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, value in tensors.items():
        if value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise InputError(
                    f"{path}: {bad} weights of {name} are NaN or infinite (the training "
                    "diverged); retrain, e.g. with a lower --lr"
                )


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        meta, weights = p / META_NAME, p / WEIGHTS_NAME
    elif p.suffix == ".json":
        meta, weights = p, p.with_name(WEIGHTS_NAME)
    elif p.suffix == ".safetensors":
        meta, weights = p.with_name(META_NAME), p
    elif not p.exists():
        raise StorageError(f"{p}: no such model (give a run directory or its model.json)")
    else:
        raise InputError(f"{p}: not a model (expected a run directory or model.json)")
    if not meta.exists():
        raise StorageError(f"{meta}: no such model file (has this run finished training?)")
    return meta, weights


def model_files(path: str | os.PathLike) -> list[Path]:
    """The files a model is read from (a run directory, its model.json or its weights), for
    the commands' "no output over an input" check; nothing is opened."""
    p = Path(path)
    folder = p if p.is_dir() or p.suffix not in (".json", ".safetensors") else p.parent
    return [p, folder / META_NAME, folder / WEIGHTS_NAME, _pending_path(folder / META_NAME)]


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TranslationModel:
    """Load and validate a model from a run directory, its model.json or its safetensors file.

    A missing, corrupt, tampered or incompatible file raises a one-line GeotranslateError.
    """
    from geotranslate.models import GeneratorSpec  # deferred: keeps `import` of this light

    meta_path, weights_path = _resolve(path)
    meta = _read_model_json(meta_path)
    if not weights_path.exists():
        raise StorageError(f"{weights_path}: weights file missing")
    digest = sha256_file(weights_path)
    if meta["weights"]["sha256"] != digest:
        meta = _finish_interrupted_save(meta_path, weights_path, digest)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{weights_path}: corrupt weights ({e})") from None
    _check_finite(tensors, weights_path)
    try:
        domains = {k: DomainSpec.from_dict(v) for k, v in meta["domains"].items()}
        generators: dict[str, torch.nn.Module] = {}
        for direction, spec in meta["generators"].items():
            # the weights come from the file: no download of pretrained encoders, no init
            net = GeneratorSpec.from_dict(spec).build(init=False)
            prefix = GENERATOR_PREFIX[direction] + "."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            net.load_state_dict(state, strict=True)
            generators[direction] = net.to(device).eval()
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{meta_path}: incompatible model ({first_line(e)})") from None
    return TranslationModel(
        dataset_type=meta["dataset_type"],
        generators=generators,
        generator_specs=meta["generators"],
        domains=domains,
        chip_size=int(meta["chip_size"]),
        training=meta.get("training", {}),
        receptive_fields=_receptive_fields(meta.get("receptive_field"), generators),
        weights_file_sha256=digest,
    )


def _finish_interrupted_save(meta_path: Path, weights_path: Path, digest: str) -> dict:
    """The weights do not match model.json: a save killed between its two renames, or damage.

    A pending model.json that matches the weights is the interrupted save's: it is put in
    place (or, in a read-only folder, used as it is).
    """
    pending = _pending_path(meta_path)
    if pending.exists():
        try:
            meta = _read_model_json(pending)
        except GeotranslateError:
            meta = None
        if meta is not None and meta["weights"]["sha256"] == digest:
            with contextlib.suppress(OSError):
                os.replace(pending, meta_path)
            return meta
    raise InputError(
        f"{weights_path}: weights do not match {meta_path.name} (truncated or modified file, "
        "and no interrupted save to complete)"
    )
def _receptive_fields(value: object, generators: dict) -> dict[str, int]:
    """model.json's ``receptive_field`` entries that are sound (others are recomputed)."""
    if not isinstance(value, dict):
        return {}
    return {
        d: int(v) for d, v in value.items()
        if d in generators and isinstance(v, int) and not isinstance(v, bool) and v >= 1
    }
