"""Training end to end on tiny networks and generated chips (CPU)."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import last_checkpoint, make_chips, read_metrics, val_chips
from safetensors.torch import load_file

from geotranslate import load_model
from geotranslate.cli import main
from geotranslate.errors import GeotranslateError, OptionError
from geotranslate.evaluate import evaluate_chips
from geotranslate.methods import Method
from geotranslate.render import parse_rgb_bands
from geotranslate.stats import BandStats, robust_range
from geotranslate.train import TrainConfig, train
from geotranslate.train.validation import validation_line

TINY = {"ngf": 8, "ndf": 8, "n_layers_d": 2, "n_blocks": 1, "progress": False}



@pytest.fixture(scope="module")
def unpaired_chips(tmp_path_factory) -> Path:
    return make_chips(tmp_path_factory.mktemp("unpaired") / "chips", n_train=6, paired=False,
                      mapping=None, nodata_holes=True)


def test_pix2pix_learns_a_known_mapping(paired_chips, tmp_path):
    # fp32: the model file's generator is checked against the logged validation L1 below
    run = train(TrainConfig("Pix2Pix", data_dir=str(paired_chips), out=str(tmp_path / "run"),
                            epochs=30, epochs_decay=0, batch_size=4, lr=1e-3,
                            precision="fp32", **TINY))
    rows = read_metrics(run)
    val = [r for r in rows if r["val_l1"]]
    assert [int(r["epoch"]) for r in val] == list(range(31))  # untrained baseline + each epoch
    untrained, trained = float(val[0]["val_l1"]), float(val[-1]["val_l1"])
    assert trained < 0.4 * untrained, (untrained, trained)
    assert float(val[-1]["val_psnr"]) > float(val[0]["val_psnr"]) + 6
    assert float(val[-1]["val_ssim"]) > 0.5 > float(val[0]["val_ssim"])
    losses = [r for r in rows if r["g_ab_l1"]]
    assert len(losses) == 30 * 4 and int(losses[-1]["iteration"]) == 120
    assert np.mean([float(r["g_ab_l1"]) for r in losses[-8:]]) < \
        0.4 * np.mean([float(r["g_ab_l1"]) for r in losses[:8]])
    assert len(list((run / "previews").glob("epoch_*.png"))) == 30

    # the model file reproduces the trained generator: evaluate scores its val chips (each
    # chip's own instance statistics, as in training) as the last validation row says
    report = evaluate_chips(run, paired_chips, split="val", norm_stats="tile")
    assert report.metrics["overall"]["mae"] == pytest.approx(trained, rel=1e-4)
    assert report.metrics["overall"]["psnr"] == pytest.approx(float(val[-1]["val_psnr"]),
                                                              rel=1e-4)
    assert report.metrics["overall"]["ssim"] == pytest.approx(float(val[-1]["val_ssim"]),
                                                              rel=1e-4)
    assert report.baseline["metrics"]["overall"]["mae"] == pytest.approx(
        float(val[-1]["val_flat_l1"]), rel=1e-4)
    model = load_model(run)
    assert model.dataset_type == "Pix2Pix" and set(model.generators) == {"a2b"}
    assert model.generator_specs["a2b"]["arch"] == "unet"
    assert model.generator_specs["a2b"]["kwargs"]["num_downs"] == 2  # 32 px chips: field 19 px
    assert model.chip_size == 32 and model.training["iterations"] == 120
    # domains come from meta.json; the default normalizer is its robust range
    meta = json.loads((paired_chips / "meta.json").read_text())
    assert model.domains["b"].band_count == 3 and model.domains["b"].nodata == -9999.0
    band = BandStats.from_dict(meta["domains"]["a"]["stats"]["bands"][0])
    assert model.domains["a"].normalizer.method == "robust"
    assert model.domains["a"].normalizer.low[0] == robust_range(band)[0]
    # the saved weights are the checkpoint's generator
    weights = load_file(run / "model.safetensors")
    for name, value in last_checkpoint(run)["nets"]["g_ab"].items():
        torch.testing.assert_close(weights[f"g_ab.{name}"], value, rtol=0, atol=0)


@pytest.mark.parametrize("bands_b", [3, 2])
def test_cyclegan_on_unpaired_chips(tmp_path, bands_b, capsys):
    chips = make_chips(tmp_path / "chips", n_train=4, paired=False, mapping=None,
                       bands_b=bands_b, nodata_holes=True)
    run = train(TrainConfig("CycleGAN", data_dir=str(chips), out=str(tmp_path / "run"),
                            epochs=1, epochs_decay=2, precision="bf16", **TINY))
    log = (run / "train.log").read_text()
    rows = read_metrics(run)
    assert len(rows) == 12
    if bands_b == 3:  # 2-band A, 3-band B: no identity mapping exists
        assert "identity loss off: domain A has 2 bands and domain B 3" in log
        assert "identity loss off" in capsys.readouterr().err
        assert "idt_a" not in rows[0]
    else:
        assert "identity loss off" not in log and float(rows[0]["idt_a"]) > 0
    for r in rows:
        assert all(np.isfinite(float(r[k])) for k in ("d_a", "d_b", "g_ab_gan", "cycle_a"))
    # lr: constant for 1 epoch, then linear decay (1 - k/3)
    lrs = [float(r["lr"]) for r in rows[::4]]
    np.testing.assert_allclose(lrs, [2e-4, 2e-4 * 2 / 3, 2e-4 / 3], rtol=1e-5)
    model = load_model(run)
    assert set(model.generators) == {"a2b", "b2a"}
    assert model.generator_specs["a2b"]["in_channels"] == 2
    assert model.generator_specs["a2b"]["out_channels"] == bands_b
    assert model.generator_specs["b2a"]["arch"] == "resnet"
    out = model.generator("a2b")(torch.zeros(1, 2, 32, 32))
    assert out.shape == (1, bands_b, 32, 32)
    assert (run / "previews" / "epoch_003.png").exists()


@pytest.mark.parametrize("dataset_type", ["Pix2Pix", "CycleGAN"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
        dataset_type, paired_chips, unpaired_chips, tmp_path):
    chips = paired_chips if dataset_type == "Pix2Pix" else unpaired_chips
    common = {"data_dir": str(chips), "epochs": 1, "epochs_decay": 2, "batch_size": 2,
              "deterministic": True, "workers": 0, "preview": False, "crop_size": 24,
              "pool_size": 2, **TINY}
    full = train(TrainConfig(dataset_type, out=str(tmp_path / "full"), max_steps=9, **common))
    part = train(TrainConfig(dataset_type, out=str(tmp_path / "part"), max_steps=4, **common))
    assert last_checkpoint(part)["iteration"] == 4
    train(TrainConfig(dataset_type, resume=str(part), max_steps=9, **common))
    a, b = last_checkpoint(full), last_checkpoint(part)
    assert a["iteration"] == b["iteration"] == 9 and a["epoch"] == b["epoch"]
    for net in a["nets"]:
        for name, value in a["nets"][net].items():
            assert torch.equal(value, b["nets"][net][name]), (net, name)
    for k, state in a["optimizers"]["g"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizers"]["g"]["state"][k]["exp_avg"])
    # the metrics of the resumed run continue those of the uninterrupted one exactly
    assert read_metrics(full) == read_metrics(part)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_model_file_round_trip_refuses_tampered_and_truncated(unpaired_chips, tmp_path):
    run = train(TrainConfig("CycleGAN", data_dir=str(unpaired_chips), out=str(tmp_path / "run"),
                            epochs=1, epochs_decay=0, preview=False, max_steps=2, **TINY))
    x = torch.linspace(-1, 1, 2 * 32 * 32).reshape(1, 2, 32, 32)
    reference = load_model(run).generator("a2b")(x)
    weights = run / "model.safetensors"
    original = weights.read_bytes()
    torch.testing.assert_close(load_model(run / "model.json").generator("a2b")(x), reference)
    tampered = bytearray(original)
    tampered[-10] ^= 0xFF
    weights.write_bytes(bytes(tampered))
    with pytest.raises(GeotranslateError, match="do not match model.json"):
        load_model(run)
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(GeotranslateError, match="truncated or modified"):
        load_model(run)
    weights.unlink()
    with pytest.raises(GeotranslateError, match="weights file missing"):
        load_model(run)


def test_resume_refuses_other_runs_and_corrupt_checkpoints(paired_chips, tmp_path):
    common = {"data_dir": str(paired_chips), "epochs": 1, "epochs_decay": 0, "preview": False,
              "max_steps": 1}
    run = train(TrainConfig("Pix2Pix", out=str(tmp_path / "run"), **common, **TINY))
    with pytest.raises(GeotranslateError, match="cannot resume: the run has dataset type"):
        train(TrainConfig("CycleGAN", resume=str(run), **common, **TINY))
    with pytest.raises(GeotranslateError, match="cannot resume: the run has generator specs"):
        train(TrainConfig("Pix2Pix", resume=str(run), **common, **{**TINY, "ngf": 4}))
    with pytest.raises(GeotranslateError, match="already holds a run"):
        train(TrainConfig("Pix2Pix", out=str(run), **common, **TINY))
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:300])
    with pytest.raises(GeotranslateError, match="last.pt: corrupt checkpoint"):
        train(TrainConfig("Pix2Pix", resume=str(run), **common, **TINY))
    with pytest.raises(GeotranslateError, match="no such run directory"):
        train(TrainConfig("Pix2Pix", resume=str(tmp_path / "nope"), **common, **TINY))
    with pytest.raises(GeotranslateError, match="crop size 64 is larger than the chips"):
        train(TrainConfig("Pix2Pix", crop_size=64, **common, **TINY))
    with pytest.raises(GeotranslateError, match="fp16 needs a CUDA GPU"):
        train(TrainConfig("Pix2Pix", precision="fp16", device="cpu", **common, **TINY))


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(unpaired_chips, tmp_path, monkeypatch):
    real_step = Method.step
    calls = {"n": 0}

    def interrupted_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C during the step: it finishes, then the run stops
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch)

    monkeypatch.setattr(Method, "step", interrupted_step)
    config = TrainConfig("CycleGAN", data_dir=str(unpaired_chips), out=str(tmp_path / "run"),
                         epochs=1, epochs_decay=0, preview=False, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    state = last_checkpoint(tmp_path / "run")
    assert state["iteration"] == 4 and state["epoch"] == 0 and state["epoch_batch"] == 4
    assert "interrupted at iteration 4" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "model.json").exists()
    monkeypatch.setattr(Method, "step", real_step)
    run = train(TrainConfig("CycleGAN", data_dir=str(unpaired_chips), resume=str(tmp_path / "run"),
                            epochs=1, epochs_decay=0, preview=False, **TINY))
    assert load_model(run).training["iterations"] == 6
    assert [int(r["iteration"]) for r in read_metrics(run)] == list(range(1, 7))


def test_tensorboard_scalars_follow_metrics_csv_across_a_crash_and_resume(
        paired_chips, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    real_step = Method.step
    calls = {"n": 0}

    def crashing_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # after epoch 1's checkpoint (iteration 2) and iteration 3
            raise RuntimeError("simulated crash")
        return real_step(self, batch)

    monkeypatch.setattr(Method, "step", crashing_step)
    common = {"data_dir": str(paired_chips), "epochs": 2, "epochs_decay": 0, "batch_size": 8,
              "preview": False, **TINY}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(TrainConfig("Pix2Pix", out=str(tmp_path / "run"), **common))
    assert last_checkpoint(tmp_path / "run")["iteration"] == 2
    monkeypatch.setattr(Method, "step", real_step)
    run = train(TrainConfig("Pix2Pix", resume=str(tmp_path / "run"), **common))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = [r for r in read_metrics(run) if r["d_b"]]
    for tag in ("d_b", "g_ab_l1", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        # iteration 3 of the crashed run is purged: one value per iteration, as in the CSV
        assert [step for step, _ in logged] == [1, 2, 3, 4], tag
        np.testing.assert_allclose([v for _, v in logged], [float(r[tag]) for r in rows],
                                   rtol=1e-5)
    assert [e.step for e in events.Scalars("val_l1")] == [0, 2, 4]


def test_cli_trains_resumes_and_reports_errors(paired_chips, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", str(paired_chips), "--dataset-type", "Pix2Pix", "--ngf", "4", "--ndf", "4",
            "--n-layers-d", "1", "--epochs", "1", "--epochs-decay", "0", "--batch-size", "8",
            "--no-progress", "--rgb-bands", "b:3,2,1"]
    assert main(args) == 0
    latest = tmp_path / "runs" / "latest"
    assert (latest / "model.json").exists() and (latest / "previews" / "epoch_001.png").exists()
    run = latest.resolve()
    assert run.name.startswith("Pix2Pix-")
    from PIL import Image

    with Image.open(latest / "previews" / "epoch_001.png") as preview:
        # A, fake B, real B side by side; 32 px chips enlarged 4x, titles above
        assert preview.width == 3 * 128 + 2 * 4 and preview.height > 128
        pixels = np.asarray(preview.convert("RGB"))
        assert pixels[40:, :128].std() > 10 and pixels[40:, -128:].std() > 10  # not blank
    # resume reuses the run's settings (ngf 4) and takes new ones (more epochs)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    model = load_model(run)
    assert model.training["epochs"] == 2 and model.generator_specs["a2b"]["kwargs"]["ngf"] == 4
    capsys.readouterr()
    assert main(["train", str(tmp_path / "missing"), "--dataset-type", "Pix2Pix"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("geotranslate: error: ") and "no such chip directory" in err
    assert err.count("\n") == 1
    assert main(["train", str(paired_chips)]) == 1
    assert "--dataset-type is required" in capsys.readouterr().err
    base = ["train", str(paired_chips), "--dataset-type", "Pix2Pix", "--no-progress"]
    assert main([*base, "--device", "gpu"]) == 1
    assert "expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda:1"]) == 1
        assert "no CUDA GPU is available" in capsys.readouterr().err


def test_full_disk_fails_in_one_line_and_keeps_no_half_file(paired_chips, small_disk, capsys):
    # a real ENOSPC on a tiny tmpfs with room for the log but not the first checkpoint
    run = small_disk(60_000) / "run"
    status = main(["train", str(paired_chips), "--dataset-type", "Pix2Pix", "--out", str(run),
                   "--ngf", "8", "--ndf", "8", "--n-layers-d", "1", "--epochs", "1",
                   "--epochs-decay", "0", "--batch-size", "8", "--no-progress", "--no-preview"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("geotranslate: error")]
    assert status == 1 and len(lines) == 1 and len(lines[0]) < 300, err
    assert f"{run}/checkpoints/last.pt: write failed" in lines[0], err
    leftovers = [p.name for p in run.rglob("*") if p.is_file()]
    assert not any(".part" in name for name in leftovers), leftovers
    assert "last.pt" not in leftovers and "model.json" not in leftovers


def test_rgb_bands_option():
    assert parse_rgb_bands("3,2,1") == {"a": [3, 2, 1], "b": [3, 2, 1]}
    assert parse_rgb_bands("a:1;b:3,2,1") == {"a": [1], "b": [3, 2, 1]}
    with pytest.raises(GeotranslateError, match="--rgb-bands 'c:1'"):
        parse_rgb_bands("c:1")


def _flat_baseline_by_hand(chips: Path) -> dict[str, float]:
    """L1, PSNR and SSIM of a flat image at B's training mean on the val chips, in B's data
    units with the data range p98 - p2 of the scored target pixels, computed here from the
    chip files and meta.json (not through geotranslate)."""
    from skimage.metrics import structural_similarity

    meta = json.loads((chips / "meta.json").read_text())
    mean = np.array([b["mean"] for b in meta["domains"]["b"]["stats"]["bands"]])
    targets = [(raw, valid & (raw != -9999.0).all(axis=0)) for raw, valid in val_chips(chips)]
    scored = np.concatenate([raw[:, valid] for raw, valid in targets], axis=1)
    low, high = np.percentile(scored, [2, 98], axis=1)
    ranges = high - low
    abs_sum, sq_sum, ssim_sum = np.zeros(3), np.zeros(3), np.zeros(3)
    for raw, valid in targets:
        err = mean[:, None] - raw[:, valid]
        abs_sum += np.abs(err).sum(axis=1)
        sq_sum += (err**2).sum(axis=1)
        for k in range(3):
            _, ssim_map = structural_similarity(
                np.full(raw[k].shape, mean[k]), np.where(valid, raw[k], raw[k][valid].mean()),
                data_range=ranges[k], win_size=7, full=True)
            ssim_sum[k] += ssim_map[valid].sum()
    count = scored.shape[1]
    mse = sq_sum / count
    return {"l1": float((abs_sum / count).mean()),
            "psnr": float(10 * np.log10(1 / (mse / ranges**2).mean())),
            "ssim": float((ssim_sum / count).mean())}


def test_validation_reports_a_flat_image_baseline_and_augment_is_recorded(tmp_path, capsys):
    chips = make_chips(tmp_path / "chips", n_train=4, n_val=3, nodata_holes=True, seed=4)
    run = tmp_path / "run"
    args = ["train", str(chips), "--dataset-type", "Pix2Pix", "--out", str(run), "--ngf", "4",
            "--ndf", "4", "--n-layers-d", "1", "--epochs", "5", "--epochs-decay", "0",
            "--batch-size", "4", "--lr", "1e-9", "--augment", "hflip", "--no-progress",
            "--no-preview", "--norm-method", "percentile"]  # figures in data units: any method
    assert main(args) == 0
    by_hand = _flat_baseline_by_hand(chips)
    val = [r for r in read_metrics(run) if r["val_l1"]]
    assert [int(r["epoch"]) for r in val] == [0, 1, 2, 3, 4, 5]
    for row in val:  # the same chips and pixels every epoch: the same bar
        assert float(row["val_flat_l1"]) == pytest.approx(by_hand["l1"], rel=1e-5)
        assert float(row["val_flat_psnr"]) == pytest.approx(by_hand["psnr"], rel=1e-5)
        assert float(row["val_flat_ssim"]) == pytest.approx(by_hand["ssim"], rel=1e-4, abs=1e-6)
    log = (run / "train.log").read_text()
    assert "augment hflip" in log
    lines = [line for line in log.splitlines() if "validation:" in line]
    assert len(lines) == 6 and lines[0].startswith("untrained model validation: L1 ")
    assert f"(flat image at the target mean: L1 {by_hand['l1']:.4f}, PSNR " \
        f"{by_hand['psnr']:.2f} dB" in lines[-1]
    # an (almost) untrained model: flagged after 5 epochs exactly when it is not above the bar
    beaten = (float(val[-1]["val_psnr"]) > float(val[-1]["val_flat_psnr"])
              and float(val[-1]["val_ssim"]) > float(val[-1]["val_flat_ssim"]))
    assert ("no better than a flat image after 5 epochs (" in lines[-1]) == (not beaten)
    # config.json and model.json record the augmentation
    assert json.loads((run / "config.json").read_text())["augment"] == "hflip"
    assert load_model(run).training["augment"] == "hflip"
    # a run whose metrics.csv predates the val_flat_* columns keeps its rows when resumed
    with open(run / "metrics.csv", newline="") as f:
        old = [{k: v for k, v in r.items() if not k.startswith("val_flat")}
               for r in csv.DictReader(f)]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    assert main(["train", "--resume", str(run), "--epochs", "6", "--no-progress"]) == 0
    val_after = [r for r in read_metrics(run) if r["val_l1"]]
    assert [r["val_l1"] for r in val_after[:6]] == [r["val_l1"] for r in val]
    assert all(r["val_flat_l1"] == "" for r in val_after[:6])
    assert float(val_after[6]["val_flat_l1"]) == pytest.approx(by_hand["l1"], rel=1e-5)
    # --no-augment still works (the same as the default, --augment none); a contradiction fails
    run2 = tmp_path / "run2"
    base = [*args[:args.index("--out")], "--out", str(run2), "--ngf", "4", "--ndf", "4",
            "--n-layers-d", "1", "--max-steps", "1", "--no-progress", "--no-preview"]
    assert main([*base, "--no-augment"]) == 0
    assert json.loads((run2 / "config.json").read_text())["augment"] == "none"
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run3"), "--no-augment", "--augment", "d4"]) == 1
    assert "--no-augment contradicts --augment d4" in capsys.readouterr().err


def test_resuming_a_run_of_an_earlier_version_rescores_its_best_epoch(paired_chips, tmp_path):
    """Checkpoints of earlier versions hold the best validation PSNR in the model's [-1, 1]
    units; a resume scores that epoch's generator again in today's, as validation does."""
    common = {"data_dir": str(paired_chips), "epochs_decay": 0, "batch_size": 8,
              "preview": False, "precision": "fp32", **TINY}
    run = train(TrainConfig("Pix2Pix", out=str(tmp_path / "run"), epochs=2, **common))
    state = last_checkpoint(run)
    assert state["best"]["units"] == "data units"
    best_epoch = state["best"]["epoch"]
    logged = {int(r["epoch"]): float(r["val_psnr"]) for r in read_metrics(run) if r["val_psnr"]}
    assert state["best"]["psnr"] == pytest.approx(logged[best_epoch], rel=1e-5)
    del state["best"]["units"]
    state["best"]["psnr"] = 99.0  # an earlier version's figure, above any of today's
    torch.save(state, run / "checkpoints" / "last.pt")
    train(TrainConfig("Pix2Pix", resume=str(run), epochs=3, **common))
    log = (run / "train.log").read_text()
    assert (f"the best epoch's ({best_epoch}) PSNR, 99.00 dB before, is "
            f"{logged[best_epoch]:.2f} dB") in log
    logged = {int(r["epoch"]): float(r["val_psnr"]) for r in read_metrics(run) if r["val_psnr"]}
    best = last_checkpoint(run)["best"]
    assert best["epoch"] == (3 if logged[3] > logged[best_epoch] else best_epoch)
    assert best["psnr"] == pytest.approx(max(logged[best_epoch], logged[3]), rel=1e-5)


def test_validation_line_flags_a_model_no_better_than_the_flat_image():
    scores = {"val_l1": 0.3, "val_psnr": 14.0, "val_ssim": 0.2,
              "val_flat_l1": 0.25, "val_flat_psnr": 14.8, "val_flat_ssim": 0.1}
    line = validation_line(5, scores)
    assert line.startswith("epoch 5 validation: L1 0.3000, PSNR 14.00 dB, SSIM 0.2000 (flat "
                           "image at the target mean: L1 0.2500, PSNR 14.80 dB, SSIM 0.1000)")
    assert "no better than a flat image after 5 epochs" in line
    early = validation_line(2, scores)
    assert "not yet better than a flat image" in early and "after" not in early
    assert "after 5 epochs (PSNR): check" in line
    better = validation_line(9, {**scores, "val_psnr": 16.6})
    assert "flat image at the target mean" in better and "better than" not in better
    # a higher PSNR with a lower SSIM than the flat image's is flagged too
    textured = validation_line(9, {**scores, "val_psnr": 16.6, "val_ssim": 0.05})
    assert "no better than a flat image after 9 epochs (SSIM)" in textured
    both = validation_line(9, {**scores, "val_ssim": 0.1})
    assert "(PSNR, SSIM)" in both


def test_old_config_json_keeps_its_augmentation(paired_chips, tmp_path, capsys):
    """Runs made before --augment MODE flipped and rotated (augment: true, the old default)."""
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "[default: none]" in help_text and "sun's azimuth" in help_text
    assert "rotation-invariant mappings" in help_text
    assert TrainConfig("Pix2Pix").augment == "none"
    assert TrainConfig.from_dict({"dataset_type": "Pix2Pix"}).augment == "d4"
    assert TrainConfig.from_dict({"dataset_type": "Pix2Pix", "augment": True}).augment == "d4"
    assert TrainConfig.from_dict({"dataset_type": "Pix2Pix", "augment": False}).augment == "none"
    run = tmp_path / "old"
    run.mkdir()
    old = TrainConfig("Pix2Pix", data_dir=str(paired_chips)).to_dict()
    del old["augment"]
    (run / "config.json").write_text(json.dumps(old))
    assert TrainConfig.from_run(run).augment == "d4"
    assert TrainConfig.from_run(run, augment="none").augment == "none"
    with pytest.raises(GeotranslateError, match="augment 'rot90': choose from none, hflip"):
        TrainConfig("Pix2Pix", augment="rot90").validate()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pretrained", "False", "--pretrained 'False': expected true or false"),  # bool("False")
    ("dropout", True, "--dropout True: expected a number"),  # a rate, not a switch
    ("ngf", "8", "--ngf '8': expected a whole number"),
    ("ngf", 8.5, "--ngf 8.5: expected a whole number"),
    ("lr", "1e-3", "--lr '1e-3': expected a number"),
])
def test_a_python_setting_of_the_wrong_type_is_refused(field, value, message):
    with pytest.raises(OptionError, match=message):
        TrainConfig("Pix2Pix", **{field: value}).validate()
    TrainConfig("Pix2Pix", ngf=8, lr=1, dropout=0).validate()  # an int is a number
