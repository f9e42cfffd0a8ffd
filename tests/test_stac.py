"""model-stac: the item validates against the MLM v1.4.0 JSON schema, offline.

The schemas are kept in tests/schemas/ (see its README); every ``$ref`` they make is resolved
from there, never fetched: a reference to anything else fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import make_model

from geotranslate.cli import main as cli_main
from geotranslate.modelstac import MLM_SCHEMA, mlm_name, model_stac_item

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

SCHEMAS = Path(__file__).parent / "schemas"
RESOURCES = {
    MLM_SCHEMA: "mlm-v1.4.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json": "processing-v1.1.0.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json":
        "classification-v1.1.0.json",
}


def _unknown(uri: str):
    raise AssertionError(f"the schema refers to {uri}, which is not kept in tests/schemas")


def mlm_errors(item: dict) -> list[str]:
    """Every error of ``item`` against the MLM v1.4.0 schema (empty: valid)."""
    from referencing.jsonschema import DRAFT7

    resources = [(uri, DRAFT7.create_resource(json.loads((SCHEMAS / name).read_text())))
                 for uri, name in RESOURCES.items()]
    registry = referencing.Registry(retrieve=_unknown).with_resources(resources)
    schema = json.loads((SCHEMAS / RESOURCES[MLM_SCHEMA]).read_text())
    validator = jsonschema.Draft7Validator(schema, registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(item)]


def _with_descriptions(run: Path, a: list, b: list) -> None:
    meta = json.loads((run / "model.json").read_text())
    meta["domains"]["a"]["band_descriptions"] = a
    meta["domains"]["b"]["band_descriptions"] = b
    (run / "model.json").write_text(json.dumps(meta))


def test_model_stac_item_validates_against_the_mlm_schema(tmp_path):
    run = make_model(tmp_path, bands_a=2, bands_b=4, range_a=(-30.0, 5.0),
                     range_b=(100.0, 4100.0), dtype_b="uint16", nodata_b=0,
                     name="run")
    _with_descriptions(run, ["VV", "VH"], ["blue", "green", "red", None])
    item = model_stac_item(run)
    assert mlm_errors(item) == []
    props = item["properties"]
    assert props["mlm:framework"] == "PyTorch" and props["mlm:pretrained"] is False
    (inp,), (out,) = props["mlm:input"], props["mlm:output"]
    assert inp["bands"] == ["VV", "VH"] and out["bands"] == ["blue", "green", "red", "b4"]
    assert [b["name"] for b in props["bands"]] == ["VV", "VH", "blue", "green", "red", "b4"]
    assert props["bands"][2]["nodata"] == 0 and props["bands"][2]["data_type"] == "uint16"
    # the scaling a consumer applies gives exactly what the network was trained on
    raw = np.array([-30.0, 5.0, -12.5, 40.0])
    for band, scaling in enumerate(inp["value_scaling"]):
        assert scaling["type"] == "z-score"
        mine = np.clip((raw - scaling["mean"]) / scaling["stddev"], -1, 1)
        from geotranslate.modelfile import load_model

        ours = load_model(run).domains["a"].normalizer.to_model(
            np.stack([raw, raw]).astype(np.float64))[band]
        assert np.allclose(mine, ours, atol=1e-6)
        assert mine[0] == -1 and mine[1] == 1
    # the id is the weights' digest: another run folder, the same id; other weights, another
    sha = json.loads((run / "model.json").read_text())["weights"]["sha256"]
    assert item["id"] == f"geotranslate-{sha[:16]}"
    other = make_model(tmp_path, bands_a=2, bands_b=4, seed=1, name="run2")
    assert model_stac_item(other)["id"] != item["id"]


def test_the_schema_catches_what_the_old_item_got_wrong(tmp_path):
    run = make_model(tmp_path)
    item = model_stac_item(run)
    bad_name = json.loads(json.dumps(item))
    bad_name["properties"]["mlm:name"] = "Pix2Pix a2b (run)"
    no_bands = json.loads(json.dumps(item))
    del no_bands["properties"]["bands"]
    bad_scaling = json.loads(json.dumps(item))
    bad_scaling["properties"]["mlm:input"][0]["value_scaling"][0] = {"type": "z-score"}
    for broken in (bad_name, no_bands, bad_scaling):
        assert mlm_errors(broken)


@pytest.mark.parametrize("text", ["Pix2Pix a2b (run)", "9 lives", "é", "run_", "x"])
def test_mlm_name_fits_the_pattern(text):
    import re

    pattern = json.loads((SCHEMAS / "mlm-v1.4.0.json").read_text())["$defs"]["mlm:name"]
    assert re.match(pattern["pattern"], mlm_name(text))


def test_onnx_export_is_an_asset_of_the_item(tmp_path, capsys):
    from geotranslate.onnx_export import export_onnx

    run = make_model(tmp_path)
    export_onnx(run, run / "model_a2b.onnx")
    out = tmp_path / "item.json"
    assert cli_main(["model-stac", str(run), "--out", str(out), "--onnx",
                     str(run / "model_a2b.onnx")]) == 0
    item = json.loads(out.read_text())
    assert mlm_errors(item) == []
    asset = item["assets"]["onnx_a2b"]
    assert "mlm:model" in asset["roles"]
    # hrefs are relative to the item's folder: they lead to the files
    assert asset["href"] == "run/model_a2b.onnx"
    for a in item["assets"].values():
        assert (tmp_path / a["href"]).is_file()
    assert asset["mlm:artifact_type"] == "torch.onnx.export"
    # a file that is not a geotranslate ONNX model is one error line
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert cli_main(["model-stac", str(run), "--out", str(tmp_path / "i2.json"), "--onnx",
                     str(tmp_path / "x.onnx")]) == 1
    assert "not an ONNX model" in capsys.readouterr().err
    # nor an export of other weights
    other = make_model(tmp_path, seed=1, name="other")
    export_onnx(other, tmp_path / "other.onnx")
    assert cli_main(["model-stac", str(run), "--out", str(tmp_path / "i3.json"), "--onnx",
                     str(tmp_path / "other.onnx")]) == 1
    assert "exported from other weights" in capsys.readouterr().err
