"""Fuzz the files geotranslate reads back, and bad rasters: one line, exit 1, never a traceback.

Each case edits a copy of a real file (meta.json of a chip folder, config.json, the checkpoint
and model.json of a trained run) into a wrong shape, or makes a bad raster, runs the command
that reads it in-process and checks the promise of the README: exit status 1 and exactly
one ``geotranslate: error:`` line that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import make_chips, write_raster
from safetensors.torch import load_file, save_file

from geotranslate.cli import main
from geotranslate.modelfile import sha256_file
from geotranslate.train import TrainConfig, train

DEEP = "[" * 200_000 + "]" * 200_000  # 400 kB: deeper than Python's recursion limit
TINY = {"ngf": 4, "ndf": 4, "n_layers_d": 1, "progress": False, "preview": False,
        "tensorboard": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A chip folder, a run trained on it for one step, and a raster the model can translate."""
    root = tmp_path_factory.mktemp("fuzz")
    chips = make_chips(root / "chips", n_train=4, n_val=2)
    run = train(TrainConfig("Pix2Pix", data_dir=str(chips), out=str(root / "run"), epochs=1,
                            epochs_decay=0, batch_size=4, **TINY))
    rng = np.random.default_rng(0)
    raster = write_raster(root / "in.tif", rng.normal(size=(2, 64, 64)).astype(np.float32))
    return {"chips": chips, "run": run, "raster": raster}


def one_error_line(capsys, status: int, name: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert status == 1, err
    assert "Traceback" not in err + captured.out
    lines = [line for line in err.splitlines() if line.startswith("geotranslate: error:")]
    assert len(lines) == 1, err
    assert name in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def edit_json(path: Path, edit) -> None:
    """Apply ``edit`` (a function of the parsed value, or raw text) to a JSON file."""
    if isinstance(edit, (str, bytes)):
        path.write_bytes(edit if isinstance(edit, bytes) else edit.encode())
        return
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def setter(keys: str, value):
    """An edit setting ``a.b.c`` to ``value`` (``DELETE`` removes the key)."""

    def edit(doc):
        *parents, last = keys.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return doc

    return edit


DELETE = object()
WHOLE = {"whole-null": "null", "whole-list": lambda d: [d], "whole-string": lambda d: "meta",
         "whole-number": lambda d: 3}
TEXT = {"deep": DEEP, "truncated": '{"format": "geotranslate-', "empty": "",
        "not-utf8": b'{"format": "\xff\xfe"}'}


META_CASES = {
    **WHOLE,
    **TEXT,
    "domains-list": setter("domains", []),
    "domains-null": setter("domains", None),
    "domain-b-missing": setter("domains.b", DELETE),
    "domain-null": setter("domains.a", None),
    "band-count-text": setter("domains.a.band_count", "abc"),
    "band-count-zero": setter("domains.b.band_count", 0),
    "band-count-disagrees": setter("domains.a.band_count", 5),
    "dtype-banana": setter("domains.a.dtype", "banana"),
    "dtype-complex": setter("domains.b.dtype", "complex64"),
    "stats-null": setter("domains.a.stats", None),
    "stats-bands-empty": setter("domains.a.stats.bands", []),
    "stats-p2-text": setter("domains.b.stats.bands.0.p2", "low"),
    "stats-p98-missing": setter("domains.b.stats.bands.1.p98", DELETE),
    "stats-nan": setter("domains.b.stats.bands.1.mean", float("nan")),
    "tile-size-text": setter("tile_size", "abc"),
    "dataset-type-number": setter("dataset_type", 3),  # the name of pairing in older files
    "pairing-number": setter("pairing", 3),
    "pairs-object": setter("pairs", {}),
    "sources-string": setter("domains.a.sources", "a.tif"),
}


def nodata_out_of_dtype(domain: str):
    """An edit making ``domain`` uint16 with a nodata value that uint16 cannot hold."""

    def edit(doc):
        doc["domains"][domain]["dtype"] = "uint16"
        doc["domains"][domain]["nodata"] = 70000
        return doc

    return edit


META_CASES["nodata-out-of-dtype"] = nodata_out_of_dtype("a")


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_bad_meta_json_in_train_and_export(world, case, tmp_path, capsys):
    chips = shutil.copytree(world["chips"], tmp_path / "chips")
    edit_json(chips / "meta.json", META_CASES[case])
    status = main(["train", str(chips), "--dataset-type", "Pix2Pix", "--out",
                   str(tmp_path / "run"), "--no-progress", "--epochs", "1", "--epochs-decay", "0"])
    one_error_line(capsys, status, "meta.json")
    assert not (tmp_path / "run").exists()
    if case == "domain-b-missing":
        return  # an export of one domain into the folder is what completes it
    status = main(["export-tiles", str(world["raster"]), "--domain", "a", "--tile-size", "32",
                   "--out", str(chips), "--no-progress"])
    one_error_line(capsys, status, "meta.json")


CONFIG_CASES = {
    **WHOLE, **TEXT,
    "batch-size-text": setter("batch_size", "abc"),
    "lr-text": setter("lr", "fast"),
    "lr-nan": setter("lr", float("nan")),
    "ngf-float": setter("ngf", 2.5),
    "epochs-null": setter("epochs", None),
    "pretrained-text": setter("pretrained", "yes"),
    "dataset-type-missing": setter("dataset_type", DELETE),
    "dataset-type-list": setter("dataset_type", ["Pix2Pix"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_json_on_resume(world, case, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    edit_json(run / "config.json", CONFIG_CASES[case])
    status = main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    one_error_line(capsys, status, "config.json")


def _drop(*keys):
    def edit(state):
        node = state
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        return state

    return edit


def _put(value, *keys):
    def edit(state):
        node = state
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return state

    return edit


CHECKPOINT_CASES = {
    "no-rng": _drop("rng"),
    "rng-null": _put(None, "rng"),
    "no-numpy-rng": _drop("rng", "numpy"),
    "python-rng-text": _put("abc", "rng", "python", "state"),
    "torch-rng-list": _put([1, 2, 3], "rng", "torch"),
    "torch-rng-short": _put(torch.zeros(7, dtype=torch.uint8), "rng", "torch"),
    "numpy-rng-short": _put(torch.zeros(5, dtype=torch.int64), "rng", "numpy", "keys"),
    "python-rng-short": _put([1, 2], "rng", "python", "state"),
    "epoch-text": _put("abc", "epoch"),
    "iteration-negative": _put(-3, "iteration"),
    "nets-empty": _put({}, "nets"),
    "no-optimizers": _drop("optimizers"),
    "schedulers-list": _put([1], "schedulers"),
    "a-list": lambda state: [1, 2],
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES) + ["random-bytes"])
def test_bad_checkpoint_on_resume(world, case, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    path = run / "checkpoints" / "last.pt"
    if case == "random-bytes":
        path.write_bytes(os.urandom(4000))
    else:
        state = torch.load(path, weights_only=True)
        torch.save(CHECKPOINT_CASES[case](state), path)
    status = main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    one_error_line(capsys, status, "last.pt")


MODEL_CASES = {
    **WHOLE, **TEXT,
    "chip-size-text": setter("chip_size", "abc"),
    "chip-size-zero": setter("chip_size", 0),
    "dtype-banana": setter("domains.b.dtype", "banana"),
    "dtype-complex": setter("domains.b.dtype", "complex64"),
    "band-count-disagrees-with-generator": setter("domains.a.band_count", 5),
    "band-count-text": setter("domains.b.band_count", "3"),
    "normalizer-too-short": setter("domains.a.normalizer.low", [0.0]),
    "normalizer-zero-range": lambda d: setter("domains.b.normalizer.high",
                                              d["domains"]["b"]["normalizer"]["low"])(d),
    "normalizer-method": setter("domains.a.normalizer.method", "magic"),
    "normalizer-nan": setter("domains.a.normalizer.low.0", float("nan")),
    "descriptions-wrong-length": setter("domains.b.band_descriptions", ["x"]),
    "generators-empty": setter("generators", {}),
    "generator-arch-number": setter("generators.a2b.arch", 3),
    "generator-direction": lambda d: {**d, "generators": {"x2y": d["generators"]["a2b"]}},
    "weights-missing": setter("weights", DELETE),
    "domains-list": setter("domains", []),
    "dataset-type": setter("dataset_type", "GAN"),
}


MODEL_CASES["nodata-out-of-dtype"] = nodata_out_of_dtype("b")


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_json_in_predict(world, case, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    edit_json(run / "model.json", MODEL_CASES[case])
    out = tmp_path / "out.tif"
    status = main(["predict-raster", str(world["raster"]), "--model", str(run), "--out", str(out),
                   "--device", "cpu", "--no-progress"])
    one_error_line(capsys, status, "model.json")
    assert not out.exists()


def test_non_finite_weights_are_refused_at_load(world, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    tensors = load_file(run / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name][0] = float("nan")
    save_file(tensors, run / "model.safetensors")
    meta = json.loads((run / "model.json").read_text())
    meta["weights"]["sha256"] = sha256_file(run / "model.safetensors")  # a consistent pair
    (run / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "out.tif"
    status = main(["predict-raster", str(world["raster"]), "--model", str(run), "--out", str(out),
                   "--device", "cpu", "--no-progress"])
    line = one_error_line(capsys, status, "model.safetensors")
    assert name in line and "NaN or infinite" in line
    assert not out.exists()
    # the untouched model translates the same raster
    assert main(["predict-raster", str(world["raster"]), "--model", str(world["run"]), "--out",
                 str(out), "--device", "cpu", "--no-progress"]) == 0


def _bad_rasters(root: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "random-bytes": os.urandom(5000),
        "empty": b"",
        "text": b"not a raster\n",
        "header-only": data[:8],
    }
    paths = {}
    for name, content in cases.items():
        paths[name] = root / f"{name}.tif"
        paths[name].write_bytes(content)
    paths["directory"] = root / "folder.tif"
    paths["directory"].mkdir()
    paths["not-utf8"] = Path(os.fsdecode(bytes(root) + b"/odd\xff.tif"))
    shutil.copyfile(good, paths["not-utf8"])
    return paths


def test_bad_rasters_in_every_reading_command(world, tmp_path, capsys):
    rng = np.random.default_rng(1)
    good = write_raster(tmp_path / "good.tif", rng.normal(size=(2, 256, 256)).astype(np.float32))
    for case, path in _bad_rasters(tmp_path, good).items():
        shown = "odd\\xff.tif" if case == "not-utf8" else path.name
        commands = {
            "predict": ["predict-raster", str(path), "--model", str(world["run"]), "--out",
                        str(tmp_path / "out.tif"), "--device", "cpu", "--no-progress"],
            "preview": ["preview", str(path), "--out", str(tmp_path / "p.png")],
            "evaluate": ["evaluate", str(path), str(good)],
            "export": ["export-tiles", str(path), "--tile-size", "32", "--out",
                       str(tmp_path / "chips"), "--no-progress"],
        }
        for command, args in commands.items():
            line = one_error_line(capsys, main(args), shown)
            if case == "truncated":
                assert "See previous exception" not in line, (command, line)
        assert not (tmp_path / "out.tif").exists() and not (tmp_path / "p.png").exists()
