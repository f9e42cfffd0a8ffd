"""The run report (geotranslate report, and train at its end) and TensorBoard's images/hparams."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import pytest
from builders import make_chips
from PIL import Image

from geotranslate.cli import main

TINY = ["--ngf", "4", "--ndf", "4", "--n-layers-d", "1", "--n-blocks", "1", "--generator",
        "resnet", "--batch-size", "4", "--epochs", "2", "--epochs-decay", "0", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    chips = make_chips(root / "chips", n_train=8, n_val=3)
    assert main(["train", str(chips), "--dataset-type", "Pix2Pix", "--out", str(root / "run"),
                 *TINY]) == 0
    return root / "run"


def _images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_train_writes_a_report_holding_the_figures_of_metrics_csv(run):
    page = (run / "report.html").read_text()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r["val_psnr"]]
    assert [r["epoch"] for r in val] == ["0", "1", "2"]
    cells = re.findall(r"<td>([^<]*)</td>", page)
    for row in (val[-1], [r for r in rows if r["g_ab_l1"]][-1]):  # the last epoch's figures
        figures = [v for k, v in row.items() if v and k not in ("epoch", "iteration")]
        for value in figures:
            assert value in cells, value
        # in one table row, in the CSV's column order
        assert "<td>" + "</td><td>".join(v for v in row.values() if v) + "</td>" in \
            re.sub(r"<td></td>", "", page)
    images = _images(page)
    assert len(images) == 3  # losses, validation, chips
    losses, validation, chips = images
    assert losses.width > 300 and validation.width > 300
    # the chip grid: 3 validation chips, input | best | last | target, enlarged from 32 px
    assert "3 validation chips" in page and "input A | best (epoch" in page
    assert chips.width > 4 * 128 and chips.height > 3 * 128
    assert json.loads((run / "config.json").read_text())["dataset_type"] == "Pix2Pix"
    assert "&quot;dataset_type&quot;: &quot;Pix2Pix&quot;" in page
    assert "report: " in (run / "train.log").read_text()


def test_report_command_writes_elsewhere_and_refuses_bad_runs(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--chips", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert "1 validation chips" in page and len(_images(page)) == 3
    # a run folder without metrics, a corrupt metrics.csv, an output that is an input
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    cases = [(broken, [], "metrics.csv: no such file"),
             (tmp_path / "nowhere", [], "no such run directory"),
             (run, ["--out", str(run / "metrics.csv")], "would overwrite the input")]
    for folder, extra, message in cases:
        capsys.readouterr()
        assert main(["report", str(folder), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    (broken / "metrics.csv").write_text("epoch,iteration,lr\n1,1,oops\n")
    assert main(["report", str(broken)]) == 1
    assert "lr 'oops' of iteration 1 is not a number" in capsys.readouterr().err


def test_tensorboard_gets_the_previews_and_the_hyperparameters(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    previews = events.Images("preview")
    assert [e.step for e in previews] == [2, 4]  # one per epoch, at its last iteration
    shown = Image.open(io.BytesIO(previews[-1].encoded_image_string))
    with Image.open(run / "previews" / "epoch_002.png") as png:
        assert shown.size == png.size
    hparams = EventAccumulator(str(run / "tensorboard" / "hparams"))
    hparams.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = hparams.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    config = json.loads((run / "config.json").read_text())
    assert logged["dataset_type"].string_value == "Pix2Pix"
    assert logged["ngf"].number_value == config["ngf"] == 4
    with open(run / "metrics.csv", newline="") as f:
        last = [r for r in csv.DictReader(f) if r["g_ab_l1"]][-1]
    final = hparams.Scalars("hparam/final_g_ab_l1")
    assert final[0].value == pytest.approx(float(last["g_ab_l1"]), rel=1e-4)
