"""Issue 21: composite sources, many-input prediction, resume identity, list options.

Every command takes its inputs parsed (a ``stack:`` or a STAC item is its files), refuses an
output onto any file it reads before any work, and keeps one-line errors. The sweep at the end
tries every command that writes, every source form and every way an output can land on an
input.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from builders import (
    make_chips,
    make_model,
    predict_interrupted,
    stac_item,
    textured_field,
    write_raster,
)

from geotranslate.chips import export as export_module
from geotranslate.cli import main
from geotranslate.errors import GeotranslateError
from geotranslate.methods import Method
from geotranslate.predict import predict_raster
from geotranslate.predict import resume as resume_mod
from geotranslate.predict.resume import partial_paths
from geotranslate.train import TrainConfig, train
from geotranslate.train import setup as train_setup
from geotranslate.train.run import Run

PREDICT = ["--no-progress", "--device", "cpu"]


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geotranslate: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "Usage:" not in err, err
    for word in words:
        assert word in err, err
    return err


def snapshot(*paths: Path) -> dict:
    """The bytes of files (a symbolic link: its target's) and the listing of folders."""
    return {p: sorted(x.name for x in p.iterdir()) if p.is_dir() else p.read_bytes()
            for p in paths}


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory) -> Path:
    """A tiny 2 -> 2 band model with instance norms (predict samples scene statistics)."""
    return make_model(tmp_path_factory.mktemp("model"), bands_a=2, bands_b=2, norm="instance")


def _bands(folder: Path, *names: str, size: int = 40, seed: int = 0) -> list[Path]:
    data = textured_field(len(names), size, size, seed=seed)
    return [write_raster(folder / n, data[i : i + 1]) for i, n in enumerate(names)]


# ---- 1. every code path takes the parsed source -------------------------------------------


def test_predict_stack_and_stac_item_with_scene_statistics(scene_model, tmp_path, capsys):
    b1, b2 = _bands(tmp_path, "T_B1.tif", "T_B2.tif")
    item = stac_item(tmp_path / "item.json", {"B1": "./T_B1.tif", "B2": "./T_B2.tif"})
    with rasterio.open(b1) as d1, rasterio.open(b2) as d2:
        write_raster(tmp_path / "stacked.tif", np.concatenate([d1.read(), d2.read()]))
    outputs = {}
    for label, source in [("file", str(tmp_path / "stacked.tif")),
                          ("stack", f"stack:{b1},{b2}"), ("item", f"{item}:B1,B2")]:
        out = tmp_path / f"{label}.tif"
        assert main(["predict-raster", source, "--model", str(scene_model), "--out", str(out),
                     *PREDICT]) == 0, capsys.readouterr().err
        with rasterio.open(out) as ds:
            assert ds.tags()["GEOTRANSLATE_NORM_STATS"].startswith("scene-sample")
            outputs[label] = ds.read()
    np.testing.assert_array_equal(outputs["stack"], outputs["file"])
    np.testing.assert_array_equal(outputs["item"], outputs["file"])


# ---- 2, 3, 6: --out-dir and --mosaic --------------------------------------------------------


def test_mosaic_never_replaces_an_input_or_an_existing_file(scene_model, tmp_path, capsys):
    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    other = tmp_path / "notes.vrt"
    other.write_text("mine")
    before = snapshot(src, other)
    base = ["predict-raster", str(src), "--model", str(scene_model), "--out-dir",
            str(tmp_path / "o"), *PREDICT]
    assert main([*base, "--mosaic", str(src)]) == 1
    one_line_error(capsys, "would overwrite the input")
    assert main([*base, "--mosaic", str(src), "--overwrite"]) == 1
    one_line_error(capsys, "would overwrite the input")
    assert main([*base, "--mosaic", str(other)]) == 1
    one_line_error(capsys, "already exists")
    assert snapshot(src, other) == before and not (tmp_path / "o").exists()
    assert main([*base, "--mosaic", str(other), "--overwrite"]) == 0
    assert other.read_text().startswith("<VRTDataset")
    capsys.readouterr()


def test_out_dir_output_may_not_be_another_input(scene_model, tmp_path, capsys):
    out_dir = tmp_path / "D"
    out_dir.mkdir()
    a = write_raster(tmp_path / "a.tif", textured_field(2, 40, 40, seed=1))
    b = write_raster(out_dir / "a_translated.tif", textured_field(2, 40, 40, seed=2))
    before = snapshot(a, b, out_dir)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(["predict-raster", str(a), str(b), "--model", str(scene_model),
                     "--out-dir", str(out_dir), *PREDICT, *extra]) == 1
        one_line_error(capsys, "would overwrite the input", "a_translated.tif")
        assert snapshot(a, b, out_dir) == before


def test_mosaic_in_a_missing_directory_is_refused_before_any_work(scene_model, tmp_path,
                                                                   capsys):
    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    assert main(["predict-raster", str(src), "--model", str(scene_model), "--out-dir",
                 str(tmp_path / "o"), "--mosaic", str(tmp_path / "missing" / "all.vrt"),
                 *PREDICT]) == 1
    one_line_error(capsys, "missing", "does not exist")
    for mosaic in (f"{tmp_path / 'o'}/", str(tmp_path)):  # a directory, named or existing
        assert main(["predict-raster", str(src), "--model", str(scene_model), "--out-dir",
                     str(tmp_path / "o"), "--mosaic", mosaic, *PREDICT]) == 1
        one_line_error(capsys, "directory")
    assert not (tmp_path / "o").exists()
    # in the --out-dir the run creates: fine
    assert main(["predict-raster", str(src), "--model", str(scene_model), "--out-dir",
                 str(tmp_path / "o"), "--mosaic", str(tmp_path / "o" / "all.vrt"),
                 *PREDICT]) == 0
    assert (tmp_path / "o" / "all.vrt").read_text().startswith("<VRTDataset")
    capsys.readouterr()


def test_out_dir_naming_a_file_and_same_stems_leave_nothing(scene_model, tmp_path, capsys):
    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    sub = tmp_path / "sub"
    sub.mkdir()
    twin = write_raster(sub / "in.tif", textured_field(2, 40, 40, seed=3))
    base = ["predict-raster", "--model", str(scene_model), *PREDICT]
    assert main([*base, str(src), str(twin), "--out-dir", str(src)]) == 1
    one_line_error(capsys, "is a file")
    assert main([*base, str(src), str(twin), "--out-dir", str(src / "deeper")]) == 1
    one_line_error(capsys, "under the file")
    assert main([*base, str(src), str(twin), "--out-dir", str(tmp_path / "new")]) == 1
    one_line_error(capsys, "in_translated.tif")
    assert not (tmp_path / "new").exists()
    # train --out naming a file: one line, not click's usage text
    chips = make_chips(tmp_path / "chips", n_train=2)
    assert main(["train", str(chips), "--dataset-type", "Pix2Pix", "--out", str(src),
                 "--max-steps", "1", "--no-progress"]) == 1
    one_line_error(capsys, "is a file")


# ---- 4: outputs onto the files of composite sources -----------------------------------------


def test_preview_and_evaluate_refuse_the_files_of_stacks_and_items(tmp_path, capsys):
    b02, b03 = _bands(tmp_path, "b02.tif", "b03.tif")
    item = stac_item(tmp_path / "item.json", {"B02": "./b02.tif", "B03": "./b03.tif"})
    pred = write_raster(tmp_path / "pred.tif", textured_field(2, 40, 40, seed=4))
    before = snapshot(b02, b03, item, pred)
    assert main(["preview", f"stack:{b02},{b03}", "--out", str(b02)]) == 1
    one_line_error(capsys, "would overwrite the input")
    assert main(["evaluate", str(pred), f"{item}:B02,B03", "--json", str(b02)]) == 1
    one_line_error(capsys, "would overwrite the input")
    assert main(["evaluate", str(pred), f"{item}:B02,B03", "--json", str(item)]) == 1
    one_line_error(capsys, "would overwrite the input")
    assert snapshot(b02, b03, item, pred) == before


# ---- 5: resume checks the input's identity ---------------------------------------------------


def _interrupted_run(tmp_path, monkeypatch, src: Path, run: Path, opts: dict) -> Path:
    monkeypatch.setattr(resume_mod, "CHECKPOINT_PIXELS", 1)
    out = tmp_path / "out.tif"
    predict_interrupted(src, run, out, at_call=6, **opts)
    assert partial_paths(out)[1].exists()
    return out


def test_resume_refuses_an_input_whose_content_changed(tmp_path, monkeypatch):
    run = make_model(tmp_path, seed=3)
    data = textured_field(2, 600, 100, seed=5)
    src = write_raster(tmp_path / "in.tif", data)
    opts = dict(tile_size=64, overlap=16, batch_size=4, progress=False)
    out = _interrupted_run(tmp_path, monkeypatch, src, run, opts)
    stat = src.stat()
    changed = data.copy()
    changed[:, 500:, :] += 0.5  # rows the interrupted run had not reached: same file size
    write_raster(src, changed)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old time
    assert src.stat().st_size == stat.st_size
    with pytest.raises(GeotranslateError, match="changed since the interrupted run"):
        predict_raster(src, run, out, resume=True, **opts)
    assert not out.exists()
    # the same content at the same time again resumes, to what a clean run gives
    write_raster(src, data)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    predict_raster(src, run, out, resume=True, **opts)
    predict_raster(src, run, tmp_path / "clean.tif", **opts)
    assert out.read_bytes() == (tmp_path / "clean.tif").read_bytes()


def test_resume_refuses_a_changed_band_file_of_a_stack(tmp_path, monkeypatch):
    run = make_model(tmp_path, seed=3)
    b1, b2 = _bands(tmp_path, "s_B1.tif", "s_B2.tif", size=300)
    opts = dict(tile_size=64, overlap=16, batch_size=4, progress=False)
    out = _interrupted_run(tmp_path, monkeypatch, f"stack:{b1},{b2}", run, opts)
    with rasterio.open(b2) as ds:
        data = ds.read()
    write_raster(b2, data[:, ::-1].copy())
    with pytest.raises(GeotranslateError, match="changed since the interrupted run"):
        predict_raster(f"stack:{b1},{b2}", run, out, resume=True, **opts)


def test_resume_after_a_complete_run_changes_nothing(scene_model, tmp_path, capsys):
    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    out = tmp_path / "out.tif"
    args = ["predict-raster", str(src), "--model", str(scene_model), "--out", str(out),
            *PREDICT]
    assert main(args) == 0
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.out + captured.err
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime


# ---- 7, 8, 9, 10 -------------------------------------------------------------------------------


def test_chip_mode_evaluate_on_a_deeply_nested_meta_json(chip_model, capsys):  # noqa: F811
    chips, run, _, _ = chip_model
    (chips / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["evaluate", "--model", str(run), "--data", str(chips), "--device",
                 "cpu"]) == 1
    one_line_error(capsys, "meta.json", "nested too deeply")


def test_stac_item_id_cannot_escape_the_chip_folder(tmp_path, capsys):
    b1, b2 = _bands(tmp_path, "x_B1.tif", "x_B2.tif", size=64)
    item = tmp_path / "item.json"
    stac_item(item, {"B1": "./x_B1.tif", "B2": "./x_B2.tif"})
    body = json.loads(item.read_text())
    body["id"] = "../../x"
    item.write_text(json.dumps(body))
    out = tmp_path / "work" / "chips"
    assert main(["export-tiles", f"{item}:B1,B2", "--out", str(out), "--tile-size", "32",
                 "--no-progress"]) == 0, capsys.readouterr().err
    chips = sorted(p.name for p in (out / "train_a").iterdir())
    assert len(chips) == 4 and all("/" not in c and not c.startswith(".") for c in chips)
    # nothing was written outside the output folder
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["chips"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item.json", "work", "x_B1.tif",
                                                          "x_B2.tif"]


def test_export_workers_beyond_the_cores_are_bounded_with_a_note(tmp_path, monkeypatch,
                                                                   capsys):
    src = write_raster(tmp_path / "a.tif", textured_field(2, 96, 96))
    monkeypatch.setattr(export_module, "default_workers", lambda: 1)
    started = []
    real_start = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    assert main(["export-tiles", str(src), "--out", str(tmp_path / "many"), "--tile-size", "32",
                 "--workers", "50", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--workers 50" in err and "using 4" in err, err
    assert started.count("window-reader") == 4
    assert main(["export-tiles", str(src), "--out", str(tmp_path / "one"), "--tile-size", "32",
                 "--workers", "1", "--no-progress"]) == 0
    for folder in ("train_a",):
        names = sorted(p.name for p in (tmp_path / "one" / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "many" / folder).iterdir())
        for name in names:
            assert (tmp_path / "one" / folder / name).read_bytes() == (
                tmp_path / "many" / folder / name).read_bytes()


def test_list_options_given_last_and_empty(tmp_path, capsys):
    a = write_raster(tmp_path / "A.tif", textured_field(2, 64, 64, seed=1))
    b = write_raster(tmp_path / "B.tif", textured_field(3, 64, 64, seed=2))
    out = tmp_path / "c"
    assert main(["export-tiles", str(a), "--out", str(out), "--tile-size", "32", "--no-progress",
                 "--b", str(b)]) == 0, capsys.readouterr().err
    assert len(list((out / "train_b").iterdir())) == 4
    png = tmp_path / "p.png"
    assert main(["preview", str(a), str(b), "--out", str(png), "--title", "one",
                 "--title", "two"]) == 0, capsys.readouterr().err
    assert main(["preview", str(a), str(b), "--title", "one", "two", "--out",
                 str(tmp_path / "q.png")]) == 0
    capsys.readouterr()
    for args in (["export-tiles", str(a), "--b", "--out", str(tmp_path / "e")],
                 ["export-tiles", str(a), "--out", str(tmp_path / "e"), "--b"],
                 ["preview", str(a), "--out", str(tmp_path / "r.png"), "--title"]):
        assert main(args) == 1, args
        one_line_error(capsys, "give at least one value")
    assert not (tmp_path / "e").exists() and not (tmp_path / "r.png").exists()


# ---- also --------------------------------------------------------------------------------------


def test_rank_world_size_and_split_size_are_checked(scene_model, tmp_path, capsys):
    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    base = ["predict-raster", str(src), "--model", str(scene_model), *PREDICT]
    for extra, words in [(["--rank", "0", "--world-size", "0"], "world size 0"),
                         (["--rank", "2", "--world-size", "2"], "rank 2"),
                         (["--split-mpx", "-1"], "--split-mpx"),
                         (["--split-mpx", "nan"], "--split-mpx"),
                         (["--split-mpx", "0", "--out-dir", str(tmp_path / "o")],
                          "--split-mpx")]:
        assert main([*base, *extra]) == 1, extra
        one_line_error(capsys, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_model_stac_out_naming_a_directory(scene_model, tmp_path, capsys):
    assert main(["model-stac", str(scene_model), "--out", f"{tmp_path / 'dir'}/"]) == 1
    one_line_error(capsys, "ends with '/'")
    assert not (tmp_path / "dir").exists()


def test_index_gpkg_is_byte_identical_whatever_the_workers_and_time(tmp_path):
    src = write_raster(tmp_path / "a.tif", textured_field(2, 96, 96))
    outs = []
    for workers in (1, 2):
        outs.append(tmp_path / f"w{workers}")
        export_module.export_tiles([src], out_dir=outs[-1], tile_size=32, workers=workers,
                                   progress=False)
        time.sleep(0.05)  # another millisecond, another second
    for name in ("index.gpkg", "meta.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_broken_zip_archives_say_so(tmp_path, capsys):
    src = write_raster(tmp_path / "a.tif", textured_field(2, 40, 40))
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.write(src, "a.tif")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(src.read_bytes())
    cases = {f"/vsizip/{truncated}/a.tif": "not a zip archive, or is truncated",
             f"/vsizip/{not_zip}/a.tif": "not a zip archive, or is truncated",
             f"/vsizip/{good}/b.tif": "has no member 'b.tif'"}
    for name, words in cases.items():
        assert main(["preview", name, "--out", str(tmp_path / "p.png")]) == 1
        one_line_error(capsys, words)
    assert main(["preview", f"/vsizip/{good}/a.tif", "--out", str(tmp_path / "p.png")]) == 0


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive()
            and type(t).__module__.startswith("tensorboard")]


def test_a_failed_fresh_run_closes_its_tensorboard_writer(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    data = make_chips(tmp_path / "chips", n_train=2)

    def failing_step(self, batch):
        raise GeotranslateError("out of memory (simulated)")

    monkeypatch.setattr(Method, "step", failing_step)
    before = len(_writer_threads())
    run = tmp_path / "run"
    with pytest.raises(GeotranslateError, match="simulated"):
        train(TrainConfig("Pix2Pix", data_dir=str(data), out=str(run), ngf=4, ndf=4,
                          n_layers_d=1, n_blocks=1, progress=False, preview=False, workers=0,
                          max_steps=1, tensorboard=True))
    assert not run.exists()
    assert len(_writer_threads()) == before


def test_resume_at_the_end_of_the_first_epoch_gives_no_scheduler_warning(tmp_path,
                                                                          monkeypatch):
    data = make_chips(tmp_path / "chips", n_train=4)
    config = dict(data_dir=str(data), ngf=4, ndf=4, n_layers_d=1, n_blocks=1, progress=False,
                  preview=False, workers=0, batch_size=2, epochs=1, epochs_decay=1,
                  tensorboard=False)
    real_step_done = Run.step_done

    def ctrl_c_at_the_epoch_end(self):  # Ctrl-C in the last step of the first epoch
        real_step_done(self)
        if self.iteration == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "step_done", ctrl_c_at_the_epoch_end)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig("Pix2Pix", out=str(run), **config))
    monkeypatch.setattr(Run, "step_done", real_step_done)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(TrainConfig("Pix2Pix", resume=str(run), **config))


def test_model_format_version_message_names_what_it_found(scene_model, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.json", "model.safetensors"):
        (run / name).write_bytes((scene_model / name).read_bytes())
    meta = json.loads((run / "model.json").read_text())
    for version in ("1", True, 1.0):
        meta["format_version"] = version
        (run / "model.json").write_text(json.dumps(meta))
        src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
        assert main(["predict-raster", str(src), "--model", str(run), *PREDICT]) == 1
        err = one_line_error(capsys, f"format_version {json.dumps(version)} is not supported")
        assert "version 1 is not supported" not in err


def test_resume_identity_of_a_remote_input_follows_its_headers(tmp_path):
    import functools
    import http.server

    from geotranslate.predict.resume import input_identity
    from geotranslate.raster.sources import parse_source

    src = write_raster(tmp_path / "in.tif", textured_field(2, 40, 40))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = parse_source(f"http://127.0.0.1:{server.server_address[1]}/in.tif")
        first = input_identity(source)
        assert first[0]["last_modified"] and first[0]["size"] == str(src.stat().st_size)
        assert input_identity(source) == first
        stat = src.stat()
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))  # rewritten later
        assert input_identity(source) != first
    finally:
        server.shutdown()


def test_train_workers_beyond_the_cores_are_bounded_with_a_note(tmp_path, monkeypatch, capsys):
    data = make_chips(tmp_path / "chips", n_train=2)
    monkeypatch.setattr(train_setup, "_usable_cores", lambda: 1)
    asked = []
    real_loader = train_setup.DataLoader

    def recording_loader(*args, **kwargs):
        asked.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(train_setup, "DataLoader", recording_loader)
    train(TrainConfig("Pix2Pix", data_dir=str(data), out=str(tmp_path / "run"), ngf=4, ndf=4,
                      n_layers_d=1, n_blocks=1, progress=False, preview=False, workers=50,
                      max_steps=1, tensorboard=False))
    assert asked == [1]
    assert "--workers 50" in capsys.readouterr().err
