"""A new method is one module in geotranslate/methods/: nothing else is edited.

The package is copied, a toy method is written beside the others, and the copy's command line
offers it with its option, trains it, saves it and predicts a GeoTIFF with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from builders import write_raster

import geotranslate

TOY = '''
"""Toy: a paired method trained with a weighted L1 loss only (no adversary)."""

import torch

from geotranslate.models import masked_l1
from geotranslate.settings import Setting

from .base import Method


class Toy(Method):
    """g_ab translates A to B; no discriminator."""

    name = "Toy"
    paired = True
    OPTIONS = (Setting("toy_weight", float, 1.0, "Weight of the toy L1 loss.", minimum=0),)
    DEFAULTS = {"generator": "unet"}

    def build_networks(self):
        return {"g_ab": self.generator(self.bands["a"], self.bands["b"])}

    def loss_names(self):
        return ["g_ab_l1"]

    def optimize(self, b):
        with self.autocast():
            fake_b = self.run_nets["g_ab"](b["a"])
        self.zero_grad("g")
        loss = masked_l1(fake_b, b["b"], b["valid_a"] * b["valid_b"]) * self.option("toy_weight")
        self.backward_step(loss, "g")
        return {"g_ab_l1": loss}
'''


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.py"))}


def test_a_toy_method_is_one_module(tmp_path):
    package = Path(geotranslate.__file__).parent
    copy = tmp_path / "src" / "geotranslate"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "toy.py").write_text(TOY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "geotranslate", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)

    help_text = run("train", "--help").stdout
    assert "Toy" in help_text.split("--dataset-type [", 1)[1].split("]")[0].split("|")
    assert "--toy-weight" in help_text and "Toy: Weight of the toy L1 loss." in " ".join(
        help_text.split())

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1000, (2, 64, 64)).astype("float32")
    b = np.stack([a[0] * 0.2, a[1] * 0.1 + 5, a[0] * 0.05]).astype("float32")
    write_raster(tmp_path / "a.tif", a)
    write_raster(tmp_path / "b.tif", b)
    exported = run("export-tiles", "a.tif", "--b", "b.tif", "--out", "chips",
                   "--tile-size", "32")
    assert exported.returncode == 0, exported.stderr
    trained = run("train", "chips", "--dataset-type", "Toy", "--toy-weight", "2",
                  "--out", "run", "--epochs", "2", "--epochs-decay", "0", "--ngf", "4",
                  "--no-preview", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset_type"] == "Toy" and config["toy_weight"] == 2.0
    assert json.loads((tmp_path / "run" / "model.json").read_text())["dataset_type"] == "Toy"
    # its loss was logged and fell: it trained
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",").count("g_ab_l1") == 1

    predicted = run("predict-raster", "a.tif", "--model", "run", "--out", "b_pred.tif")
    assert predicted.returncode == 0, predicted.stderr
    with rasterio.open(tmp_path / "b_pred.tif") as out, rasterio.open(tmp_path / "b.tif") as ref:
        assert out.count == 3 and out.crs == ref.crs and out.transform == ref.transform
        assert np.isfinite(out.read()).all()

    # and nothing but the new module differs from the package
    new = _digests(copy)
    assert set(new) - set(_digests(package)) == {"methods/toy.py"}
    assert {k: v for k, v in new.items() if k != "methods/toy.py"} == _digests(package)
