"""Pix2PixHD, CUT and FastCUT through train() and the CLI; model selection (--keep, --patience)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import last_checkpoint, make_chips, read_metrics
from rasterio.transform import Affine
from safetensors.torch import load_file

from geotranslate import load_model
from geotranslate.cli import main
from geotranslate.evaluate import evaluate_chips
from geotranslate.train import TrainConfig, train

TINY = {"ngf": 8, "ndf": 8, "n_layers_d": 2, "n_blocks": 1, "progress": False}
TINY_CLI = ["--ngf", "8", "--ndf", "8", "--n-layers-d", "2", "--n-blocks", "1",
            "--no-progress", "--no-preview"]


@pytest.fixture(scope="module")
def unpaired_chips(tmp_path_factory) -> Path:
    return make_chips(tmp_path_factory.mktemp("unpaired") / "chips", n_train=8, paired=False,
                      mapping=None, nodata_holes=True)


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows]))


@pytest.mark.parametrize("dataset_type", ["Pix2PixHD", "CUT", "FastCUT"])
def test_new_methods_learn_and_predict_a_georeferenced_raster(
        dataset_type, paired_chips, unpaired_chips, tmp_path, make_raster):
    chips = paired_chips if dataset_type == "Pix2PixHD" else unpaired_chips
    run = tmp_path / "run"
    assert main(["train", str(chips), "--dataset-type", dataset_type, "--out", str(run),
                 "--epochs", "10", "--epochs-decay", "0", "--batch-size", "4", "--lr", "1e-3",
                 "--num-patches", "64", *TINY_CLI]) == 0
    rows = read_metrics(run)
    steps = [r for r in rows if r["d_b"]]
    assert len(steps) == 10 * len(list((chips / "train_a").iterdir())) // 4
    if dataset_type == "Pix2PixHD":  # paired: the validation error falls well below untrained
        val = [r for r in rows if r["val_l1"]]
        assert float(val[-1]["val_l1"]) < 0.7 * float(val[0]["val_l1"]), val
        assert mean(steps[-6:], "g_ab_feat") < mean(steps[:6], "g_ab_feat")
    else:  # the contrastive loss falls: output patches keep telling their input places apart
        assert mean(steps[-6:], "nce") < 0.8 * mean(steps[:6], "nce")
        assert "nce_idt" not in steps[0]  # 2 -> 3 bands: g_ab cannot take a B image

    # the model file holds the final generator, and predict-raster writes a correct GeoTIFF
    model = load_model(run)
    assert model.dataset_type == dataset_type and set(model.generators) == {"a2b"}
    saved = last_checkpoint(run)["nets"]["g_ab"]
    for name, value in model.generators["a2b"].state_dict().items():
        assert torch.equal(value, saved[name]), name
    data = np.random.default_rng(3).uniform(0, 1, (2, 50, 70)).astype("float32")
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    src = make_raster("a.tif", data, transform=transform, crs="EPSG:32631")
    out = tmp_path / "b.tif"
    assert main(["predict-raster", str(src), "--model", str(run), "--out", str(out),
                 "--no-progress"]) == 0
    stats = json.loads((chips / "meta.json").read_text())["domains"]["b"]["stats"]["bands"]
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.transform == transform
        assert (ds.count, ds.height, ds.width) == (3, 50, 70)
        y = ds.read().astype(np.float64)
    assert np.isfinite(y).all() and y.std() > 0
    for band, s in zip(y, stats, strict=True):
        assert s["min"] - 1e-4 <= band.min() and band.max() <= s["max"] + 1e-4


@pytest.mark.parametrize("dataset_type", ["Pix2PixHD", "CUT", "FastCUT"])
def test_new_methods_resume_exactly(dataset_type, paired_chips, unpaired_chips, tmp_path):
    chips = paired_chips if dataset_type == "Pix2PixHD" else unpaired_chips
    common = {"data_dir": str(chips), "epochs": 1, "epochs_decay": 2, "batch_size": 2,
              "deterministic": True, "workers": 0, "preview": False, "num_patches": 32,
              **TINY}
    full = train(TrainConfig(dataset_type, out=str(tmp_path / "full"), max_steps=7, **common))
    part = train(TrainConfig(dataset_type, out=str(tmp_path / "part"), max_steps=3, **common))
    assert last_checkpoint(part)["iteration"] == 3
    train(TrainConfig.from_run(part, max_steps=7))
    a, b = last_checkpoint(full), last_checkpoint(part)
    assert a["iteration"] == b["iteration"] == 7 and list(a["nets"]) == list(b["nets"])
    for net in a["nets"]:
        for name, value in a["nets"][net].items():
            assert torch.equal(value, b["nets"][net][name]), (net, name)
    assert read_metrics(full) == read_metrics(part)
    assert load_file(str(full / "model.safetensors")).keys() == \
        load_file(str(part / "model.safetensors")).keys()


def test_cut_translates_two_bands_to_four(tmp_path, capsys):
    chips = make_chips(tmp_path / "chips", n_train=4, bands_a=2, bands_b=4, paired=False,
                       mapping=None)
    run = train(TrainConfig("CUT", data_dir=str(chips), out=str(tmp_path / "run"), epochs=2,
                            epochs_decay=0, batch_size=2, num_patches=32, preview=True, **TINY))
    assert "identity NCE off: domain A has 2 bands and domain B 4" in capsys.readouterr().err
    nets = last_checkpoint(run)["nets"]
    assert set(nets) == {"g_ab", "d_b", "f_ab", "e_b"}  # e_b feeds 4-band fakes to the encoder
    assert nets["e_b"]["weight"].shape == (2, 4, 1, 1)
    rows = read_metrics(run)
    assert len(rows) == 4 and all(np.isfinite(float(r["nce"])) for r in rows)
    out = load_model(run).generator("a2b")(torch.zeros(1, 2, 32, 32))
    assert out.shape == (1, 4, 32, 32)
    assert (run / "previews" / "epoch_002.png").exists()


def _val_psnr(model_dir: Path, chips: Path) -> float:
    """PSNR of a saved model on the validation chips as evaluate gives it (the validation's
    units; each chip's own instance statistics, as in training)."""
    report = evaluate_chips(model_dir, chips, split="val", norm_stats="tile")
    return report.metrics["overall"]["psnr"]


def test_best_model_is_kept_and_patience_stops(paired_chips, tmp_path, capsys):
    common = {"data_dir": str(paired_chips), "epochs": 12, "epochs_decay": 0, "batch_size": 4,
              "lr": 2e-2, "preview": False, "workers": 0, "deterministic": True,
              "precision": "fp32", **TINY}  # the re-evaluation below is fp32
    run = train(TrainConfig("Pix2Pix", out=str(tmp_path / "last"), patience=1, **common))
    val = [r for r in read_metrics(run) if r["val_psnr"] and int(r["epoch"]) > 0]
    psnr = [float(r["val_psnr"]) for r in val]
    best_epoch = int(np.argmax(psnr)) + 1
    # it stopped exactly 1 epoch after the best one, before the 12 asked for
    assert len(psnr) == best_epoch + 1 < 12, psnr
    assert "validation PSNR has not improved for 1 epoch (" in capsys.readouterr().err
    best = json.loads((run / "best" / "model.json").read_text())
    assert best["training"]["best_epoch"] == best_epoch
    assert _val_psnr(run / "best", paired_chips) == pytest.approx(max(psnr), abs=1e-3)
    final = load_file(str(run / "model.safetensors"))
    last = last_checkpoint(run)["nets"]["g_ab"]
    assert all(torch.equal(final[f"g_ab.{k}"], v) for k, v in last.items())
    summary = json.loads((run / "model.json").read_text())["training"]
    assert summary["best_epoch"] == best_epoch and summary["kept"] == "last"

    # --keep best: model.safetensors is the best epoch's generator
    kept = train(TrainConfig("Pix2Pix", out=str(tmp_path / "best"), patience=1, keep="best",
                             **common))
    assert load_file(str(kept / "model.safetensors")).keys() == final.keys()
    best_weights = load_file(str(run / "best" / "model.safetensors"))
    kept_weights = load_file(str(kept / "model.safetensors"))
    assert all(torch.equal(best_weights[k], kept_weights[k]) for k in best_weights)
    assert not all(torch.equal(best_weights[k], final[k]) for k in best_weights)


def test_patience_and_keep_best_need_a_validation_split(unpaired_chips, tmp_path, capsys):
    for option in (["--patience", "3"], ["--keep", "best"]):
        status = main(["train", str(unpaired_chips), "--dataset-type", "CUT",
                       "--out", str(tmp_path / "run"), *option, *TINY_CLI])
        err = capsys.readouterr().err
        assert status == 1 and err.count("\n") == 1, err
        assert f"{option[0]}" in err and "needs a validation split" in err
        assert not (tmp_path / "run").exists()
    status = main(["train", str(unpaired_chips), "--dataset-type", "Pix2PixHD", "--lambda-vgg",
                   "1", "--out", str(tmp_path / "run"), *TINY_CLI])
    err = capsys.readouterr().err
    assert status == 1 and "--lambda-vgg needs a local VGG19 weights file" in err, err


def test_old_config_json_loads_and_resume_checks_nce_layers(unpaired_chips, tmp_path, capsys):
    run = train(TrainConfig("CUT", data_dir=str(unpaired_chips), out=str(tmp_path / "run"),
                            epochs=1, epochs_decay=0, max_steps=1, num_patches=16,
                            preview=False, **TINY))
    saved = json.loads((run / "config.json").read_text())
    assert saved["nce_layers"] is None and saved["lambda_nce"] is None
    # a config.json of the previous version: none of the new fields, lambda_l1 a number
    old = {k: v for k, v in saved.items() if k not in (
        "num_d", "lambda_feat", "lambda_vgg", "vgg_weights", "lambda_gan", "lambda_nce",
        "nce_idt", "nce_layers", "num_patches", "nce_temperature", "keep", "patience")}
    old.update(dataset_type="Pix2Pix", lambda_l1=100.0)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    config = TrainConfig.from_run(tmp_path / "old")
    config.validate()
    # settings it lacks take their declared defaults: the method's own when None
    assert config.lambda_l1 == 100.0 and config.num_patches is None and config.keep == "last"
    # resuming with other NCE layers would mix two losses: refused in one line
    status = main(["train", "--resume", str(run), "--nce-layers", "0,4", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert status == 1 and "cannot resume: the run has nce layers" in err, err


@pytest.mark.parametrize(("option", "message"), [
    (["--dataset-type", "CUT", "--nce-temperature", "0"], "nce-temperature must be a finite"),
    (["--dataset-type", "CUT", "--num-patches", "0"], "num-patches must be >= 1"),
    (["--dataset-type", "CUT", "--lambda-nce", "nan"], "lambda-nce must be a finite number"),
    (["--dataset-type", "Pix2PixHD", "--num-d", "0"], "num-d must be >= 1"),
    (["--dataset-type", "Pix2PixHD", "--lambda-feat", "-1"], "lambda-feat must be a finite"),
    (["--dataset-type", "Pix2Pix", "--patience", "0"], "patience must be >= 1"),
])
def test_bad_method_options_fail_in_one_line(option, message, paired_chips, tmp_path, capsys):
    status = main(["train", str(paired_chips), "--out", str(tmp_path / "run"), *option,
                   *TINY_CLI])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()
