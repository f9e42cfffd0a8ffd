"""DistributedDataParallel on CPU: 2 processes with the gloo backend via torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from builders import known_mapping, make_chips

from geotranslate import load_model


@pytest.mark.parametrize("dataset_type", ["Pix2Pix", "CycleGAN", "CUT"])
def test_torchrun_two_cpu_processes(tmp_path, dataset_type):
    paired = dataset_type == "Pix2Pix"
    chips = make_chips(tmp_path / "chips", n_train=8, paired=paired,
                       mapping=known_mapping if paired else None, bands_b=3 if paired else 2)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "geotranslate", "train", str(chips), "--dataset-type", dataset_type,
           "--out", str(run), "--ngf", "4", "--ndf", "4", "--n-layers-d", "1", "--n-blocks", "1",
           "--epochs", "2", "--epochs-decay", "0", "--batch-size", "2", "--device", "cpu",
           "--no-progress", "--net-norm", "batch"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "world size 2" in log
    assert "all 2 ranks hold identical weights" in log  # DDP kept the replicas in sync
    # only rank 0 logs: one line per iteration; each rank sees 8 / 2 chips = 2 batches an epoch
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["d_b"]]
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert done.stderr.count("done: 4 iterations") == 1
    # each rank prints only its own: the run directory once (stdout), run-wide lines by rank 0
    assert done.stdout.splitlines().count(str(run)) == 1
    assert done.stderr.count(f"run dir {run}") == 1
    model = load_model(run)
    assert model.training["world_size"] == 2 and model.training["iterations"] == 4
    assert (run / "previews" / "epoch_002.png").exists()
