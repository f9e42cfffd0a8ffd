"""The model file: round trip, and refusal of missing, tampered, truncated or foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from builders import tiny_cyclegan_model

from geotranslate import load_model
from geotranslate.errors import GeotranslateError
from geotranslate.modelfile import (
    META_NAME,
    WEIGHTS_NAME,
    save_model,
)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_cyclegan_model()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = torch.randn(1, 2, 32, 32)
    y = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.generators["a2b"].eval()
        model.generators["b2a"].eval()
        assert torch.equal(model.generators["a2b"](x), loaded.generator("a2b")(x))
        assert torch.equal(model.generators["b2a"](y), loaded.generator("b2a")(y))
    assert loaded.domains["a"].band_descriptions == ["VV", "VH"]
    assert loaded.domains["a"].nodata == -9999.0
    assert loaded.target_domain("a2b").normalizer == model.domains["b"].normalizer
    assert loaded.chip_size == 32 and loaded.dataset_type == "CycleGAN"
    # load through model.json and through the weights file as well
    assert load_model(tmp_path / META_NAME).chip_size == 32
    assert load_model(tmp_path / WEIGHTS_NAME).chip_size == 32


def test_tampered_weights_are_refused(tmp_path):
    save_model(tiny_cyclegan_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(GeotranslateError, match="truncated or modified"):
        load_model(tmp_path)


def test_truncated_weights_are_refused(tmp_path):
    save_model(tiny_cyclegan_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(GeotranslateError, match="truncated or modified"):
        load_model(tmp_path)


def test_truncated_weights_with_matching_hash_are_refused_as_corrupt(tmp_path):
    """Even with a recomputed hash, a file safetensors cannot parse is a clear error."""
    save_model(tiny_cyclegan_model(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    meta = json.loads((tmp_path / META_NAME).read_text())
    import hashlib

    meta["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="corrupt weights"):
        load_model(tmp_path)


def test_other_format_version_and_foreign_json_are_refused(tmp_path):
    save_model(tiny_cyclegan_model(), tmp_path)
    meta_path = tmp_path / META_NAME
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="version 99"):
        load_model(tmp_path)
    meta_path.write_text('{"hello": 1}')
    with pytest.raises(GeotranslateError, match="not a geotranslate model"):
        load_model(tmp_path)
    meta_path.write_text("{not json")
    with pytest.raises(GeotranslateError, match="corrupt model file"):
        load_model(tmp_path)


def test_architecture_mismatch_is_refused(tmp_path):
    save_model(tiny_cyclegan_model(), tmp_path)
    meta_path = tmp_path / META_NAME
    meta = json.loads(meta_path.read_text())
    meta["generators"]["a2b"]["kwargs"]["ngf"] = 8  # weights were saved for ngf=4
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="incompatible model"):
        load_model(tmp_path)


def test_missing_model_and_missing_direction(tmp_path):
    with pytest.raises(GeotranslateError, match="no such model"):
        load_model(tmp_path / "nope")
    with pytest.raises(GeotranslateError, match="no such model file"):
        load_model(tmp_path)
    model = tiny_cyclegan_model()
    del model.generators["b2a"]
    with pytest.raises(GeotranslateError, match="no b2a generator"):
        model.generator("b2a")


def test_weights_file_holds_no_pickle(tmp_path):
    save_model(tiny_cyclegan_model(), tmp_path)
    head = (tmp_path / WEIGHTS_NAME).read_bytes()[:8]
    assert head[:2] != b"\x80\x04"  # not a pickle protocol header
    header_len = int.from_bytes(head, "little")
    header = json.loads((tmp_path / WEIGHTS_NAME).read_bytes()[8 : 8 + header_len])
    assert any(k.startswith("g_ab.") for k in header) and any(k.startswith("g_ba.") for k in header)
