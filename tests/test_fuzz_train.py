"""Hostile cases for ``train``: bad options, divergence, failing chips, interrupts and kills.

Every case trains tiny networks on 32 px generated chips; interrupted runs are resumed and
compared bit for bit with an uninterrupted run (``--deterministic``, CPU).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import last_checkpoint, make_chips, read_metrics

from geotranslate.cli import main
from geotranslate.data import EpochSampler
from geotranslate.errors import GeotranslateError
from geotranslate.methods import Method
from geotranslate.methods import pix2pix as pix2pix_module
from geotranslate.train import TrainConfig, train

TINY = {"ngf": 4, "ndf": 4, "n_layers_d": 1, "n_blocks": 1, "progress": False}
TINY_ARGS = ["--ngf", "4", "--ndf", "4", "--n-layers-d", "1", "--n-blocks", "1",
             "--no-progress", "--no-preview"]
STEPS = 7


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz_train")
    return {"Pix2Pix": make_chips(root / "paired", n_train=8, n_val=2),
            "CycleGAN": make_chips(root / "unpaired", n_train=4, paired=False, mapping=None,
                                   bands_b=2)}


def common(chips: dict[str, Path], dataset_type: str, **extra) -> dict:
    return {"data_dir": str(chips[dataset_type]), "epochs": 1, "epochs_decay": 2,
            "batch_size": 2 if dataset_type == "Pix2Pix" else 1, "deterministic": True,
            "workers": 0, "preview": False,
            "pool_size": 2, "max_steps": STEPS, **TINY, **extra}


@pytest.fixture(scope="module")
def reference(chips, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs of STEPS iterations, one per dataset type."""
    root = tmp_path_factory.mktemp("reference")
    return {t: train(TrainConfig(t, out=str(root / t), **common(chips, t)))
            for t in ("Pix2Pix", "CycleGAN")}


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = last_checkpoint(a), last_checkpoint(b)
    assert ca["iteration"] == cb["iteration"] == STEPS
    for net in ca["nets"]:
        for name, value in ca["nets"][net].items():
            assert torch.equal(value, cb["nets"][net][name]), (net, name)
    assert read_metrics(a) == read_metrics(b)


# -- bad options: one line, before anything is written ------------------------------------------
@pytest.mark.parametrize("bad", [
    ["--lr", "nan"], ["--lr", "inf"], ["--workers", "-1"], ["--lambda-l1", "nan"],
    ["--lambda-tv", "-1"], ["--seed", "-1"], ["--pool-size", "-1"],
    ["--n-blocks", "-1"], ["--unet-depth", "0"], ["--n-layers-d", "9"],
    ["--n-layers-d", "5"], ["--unet-depth", "9"],
])
def test_bad_options_are_refused_in_one_line_and_leave_nothing(bad, tmp_path, capfd):
    data = make_chips(tmp_path / "chips", n_train=2, size=64)
    run = tmp_path / "run"
    args = ["train", str(data), "--dataset-type", "Pix2Pix", "--out", str(run),
            "--epochs", "1", "--epochs-decay", "0", *TINY_ARGS]
    status = main([*args, *bad])  # the last of a repeated option counts
    err = capfd.readouterr().err
    assert status == 1, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("geotranslate: error: ") and "Traceback" not in err, err
    assert not run.exists()
    if bad[0] == "--n-layers-d":
        assert "use --n-layers-d 4 or less" in lines[-1]
    assert "--crop-size 0" not in lines[-1]  # no impossible hint


def test_out_may_not_mix_with_the_chips(chips, tmp_path):
    data = chips["Pix2Pix"]
    before = sorted(p.name for p in data.iterdir())
    for out in (data, data / "run", data.parent):
        with pytest.raises(GeotranslateError, match="would mix with the chips"):
            train(TrainConfig("Pix2Pix", **common(chips, "Pix2Pix", out=str(out))))
    assert sorted(p.name for p in data.iterdir()) == before


def test_a_late_refusal_removes_the_new_run_dir(chips, tmp_path, monkeypatch):
    def out_of_memory(self, batch):
        raise GeotranslateError("out of GPU memory (simulated)")

    monkeypatch.setattr(Method, "step", out_of_memory)
    run = tmp_path / "run"
    with pytest.raises(GeotranslateError, match="simulated"):
        train(TrainConfig("Pix2Pix", **common(chips, "Pix2Pix", out=str(run))))
    assert not run.exists()
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(GeotranslateError, match="simulated"):
        train(TrainConfig("Pix2Pix", **common(chips, "Pix2Pix", out=str(run))))
    assert [p.name for p in run.iterdir()] == ["notes.txt"]  # only what the run added goes


# -- divergence ---------------------------------------------------------------------------------
def test_non_finite_losses_stop_the_run_and_keep_the_last_good_checkpoint(
        chips, tmp_path, monkeypatch):
    real_l1 = pix2pix_module.masked_l1
    calls = {"n": 0}

    def diverging_l1(*args):
        calls["n"] += 1
        loss = real_l1(*args)
        return loss * math.nan if calls["n"] == 5 else loss

    monkeypatch.setattr(pix2pix_module, "masked_l1", diverging_l1)
    run = tmp_path / "run"
    with pytest.raises(GeotranslateError, match=r"training diverged at iteration 5: loss "
                       r"g_ab_l1 is nan; no model written, the last good checkpoint "
                       r"\(iteration 4\) is kept"):
        train(TrainConfig("Pix2Pix", **common(chips, "Pix2Pix", out=str(run), save_every=2)))
    state = last_checkpoint(run)
    assert state["iteration"] == 4
    assert all(bool(torch.isfinite(v).all()) for net in state["nets"].values()
               for v in net.values() if v.is_floating_point())
    assert not (run / "model.safetensors").exists() and not (run / "model.json").exists()


def test_non_finite_weights_are_never_saved(chips, tmp_path, monkeypatch):
    real_step = Method.step

    def poisoning_step(self, batch):  # finite losses, NaN weights after the update
        losses = real_step(self, batch)
        with torch.no_grad():
            next(self.nets["g_ab"].parameters()).fill_(math.nan)
        return losses

    monkeypatch.setattr(Method, "step", poisoning_step)
    run = tmp_path / "run"
    with pytest.raises(GeotranslateError, match=r"weight g_ab\.\S+ is not finite"):
        train(TrainConfig("Pix2Pix", **common(chips, "Pix2Pix", out=str(run), max_steps=1)))
    assert not run.exists()  # no checkpoint was ever good: nothing left


# -- a chip that fails in a DataLoader worker ---------------------------------------------------
def test_a_chip_failing_in_a_worker_gives_one_line(tmp_path, monkeypatch, capfd):
    data = make_chips(tmp_path / "chips", n_train=4)
    victim = sorted((data / "train_b").iterdir())[1]
    real_set_epoch = EpochSampler.set_epoch

    def set_epoch_then_damage(self, epoch, start=0):  # after the chips were checked
        victim.write_bytes(b"II*\x00 not a tiff any more")
        real_set_epoch(self, epoch, start)

    monkeypatch.setattr(EpochSampler, "set_epoch", set_epoch_then_damage)
    status = main(["train", str(data), "--dataset-type", "Pix2Pix", "--out",
                   str(tmp_path / "run"), "--epochs", "1", "--epochs-decay", "0",
                   "--no-cache", "--workers", "1", *TINY_ARGS])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert status == 1 and "Traceback" not in err and "worker" not in err, err
    assert len(errors) == 1 and errors[0].startswith("geotranslate: error: "), err
    assert victim.name in errors[0]


# -- interrupts: at step boundaries and inside steps --------------------------------------------
def _sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize(("dataset_type", "where", "at"), [
    ("Pix2Pix", "between_updates", 3),
    ("Pix2Pix", "before_step", 5),
    ("Pix2Pix", "after_step", 2),
    ("CycleGAN", "between_updates", 4),
    ("CycleGAN", "after_step", 4),  # the last step of epoch 1 (4 batches of 1 chip)
    ("Pix2Pix", "twice_between_updates", 5),
])
def test_resume_after_sigint_is_exact(dataset_type, where, at, chips, reference, tmp_path,
                                      monkeypatch):
    real_step = Method.step
    real_backward = Method.backward_step
    state = {"step": 0, "updates": 0}

    def step(self, batch):
        state["step"] += 1
        state["updates"] = 0
        if where == "before_step" and state["step"] == at:
            _sigint()
        losses = real_step(self, batch)
        if where == "after_step" and state["step"] == at:
            _sigint()
        return losses

    def backward_step(self, loss, group):
        real_backward(self, loss, group)
        state["updates"] += 1
        if where.endswith("between_updates") and state["step"] == at and state["updates"] == 1:
            _sigint()  # the first network group is updated, the second not yet
            if where.startswith("twice"):
                _sigint()

    monkeypatch.setattr(Method, "step", step)
    monkeypatch.setattr(Method, "backward_step", backward_step)
    run = tmp_path / "run"
    config = common(chips, dataset_type, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(dataset_type, out=str(run), **config))
    log = (run / "train.log").read_text()
    if where.startswith("twice"):  # aborted inside the step: the save before it is kept
        assert last_checkpoint(run)["iteration"] == 4
        assert f"interrupted again inside iteration {at}; not saved" in log
    else:  # the step under way is finished, then saved
        assert last_checkpoint(run)["iteration"] == at
        assert f"interrupted at iteration {at}; checkpoint saved" in log
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.undo()
    train(TrainConfig(dataset_type, resume=str(run), **config))
    assert_same_run(reference[dataset_type], run)


# -- SIGKILL after a --save-every checkpoint ----------------------------------------------------
KILLER = """
import os, signal, sys
from geotranslate.train import TrainConfig, train, run
real_save = run.save_checkpoint
def save_then_die(state, run_dir):
    path = real_save(state, run_dir)
    if state["iteration"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
run.save_checkpoint = save_then_die
train(TrainConfig(**eval(sys.argv[1])))
"""


def test_sigkill_after_a_save_every_checkpoint_keeps_its_metrics(chips, reference, tmp_path):
    run = tmp_path / "run"
    config = common(chips, "Pix2Pix", save_every=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", KILLER,
         repr({"dataset_type": "Pix2Pix", "out": str(run), "tensorboard": False, **config})],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert last_checkpoint(run)["iteration"] == 4
    train(TrainConfig("Pix2Pix", resume=str(run), tensorboard=False, **config))
    assert_same_run(reference["Pix2Pix"], run)  # rows 1-4 survived the kill


# -- resuming a finished run with more epochs ---------------------------------------------------
def test_resume_with_more_epochs_applies_the_new_schedule(chips, tmp_path):
    settings = {**common(chips, "Pix2Pix"), "max_steps": None, "epochs_decay": 0,
                "batch_size": 4}
    short = train(TrainConfig("Pix2Pix", out=str(tmp_path / "short"), **settings))
    done = last_checkpoint(short)
    assert done["iteration"] == 2
    train(TrainConfig("Pix2Pix", resume=str(short), **{**settings, "epochs": 3}))
    longer = train(TrainConfig("Pix2Pix", out=str(tmp_path / "long"),
                               **{**settings, "epochs": 3}))
    resumed, straight = last_checkpoint(short), last_checkpoint(longer)
    assert resumed["iteration"] == 6
    changed = [not torch.equal(v, resumed["nets"]["g_ab"][k])
               for k, v in done["nets"]["g_ab"].items() if v.is_floating_point()]
    assert any(changed)  # trained on, not at learning rate 0
    for net in straight["nets"]:  # exactly as if the run had been 3 epochs from the start
        for name, value in straight["nets"][net].items():
            assert torch.equal(value, resumed["nets"][net][name]), (net, name)
    lrs = [float(r["lr"]) for r in read_metrics(short) if r["lr"]]
    assert lrs == [2e-4] * 6
