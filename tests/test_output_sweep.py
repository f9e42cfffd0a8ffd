"""No command writes over one of its inputs: every command that writes, every source form,
every way an output path can name an input file (issue 21).

Source forms of a raster: a plain path, a relative path, a symbolic link, ``stack:`` band
files, a STAC ``item.json:`` with asset keys and a ``/vsizip/`` archive member. Ways an output
lands on an input file: the same path, a relative one, ``dir/./name``, ``dir/sub/../name``, a
symbolic link to it and a hard link of it, with and without ``--overwrite`` (and ``--resume``).
Each case must fail with one line, exit status 1, and leave every input byte for byte as it was.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from builders import make_chips, make_model, stac_item, textured_field, write_raster

from geotranslate.cli import main

FORMS = ["plain", "relative", "symlink", "stack", "item", "vsizip"]
PREDICT = ["--no-progress", "--device", "cpu"]


@pytest.fixture
def run(tmp_path_factory) -> Path:
    """A tiny 2 -> 2 band model with instance norms, for each test (one that a command wrote
    over must not hide what the next test checks)."""
    return make_model(tmp_path_factory.mktemp("sweep_model"), bands_a=2, bands_b=2,
                      norm="instance")


def build_source(form: str, main_file: Path, cwd: Path, item_path: Path | None = None,
                 seed: int = 0) -> tuple[str, list[Path]]:
    """A 2-band raster in source form ``form`` whose (first) file is ``main_file``: the
    argument naming it and every file it reads."""
    main_file.parent.mkdir(parents=True, exist_ok=True)
    data = textured_field(2, 40, 40, seed=seed)
    if form in ("plain", "relative", "symlink"):
        write_raster(main_file, data)
        if form == "plain":
            return str(main_file), [main_file]
        if form == "relative":
            return os.path.relpath(main_file, cwd), [main_file]
        link = cwd / f"link{seed}.tif"
        link.symlink_to(main_file)
        return str(link), [main_file, link]
    if form in ("stack", "item"):
        write_raster(main_file, data[:1])
        other = write_raster(cwd / f"band2_{seed}.tif", data[1:])
        if form == "stack":
            return f"stack:{main_file},{other}", [main_file, other]
        item = item_path or cwd / f"item{seed}.json"
        stac_item(item, {"B1": str(main_file), "B2": str(other)})
        return f"{item}:B1,B2", [item, main_file, other]
    assert form == "vsizip"
    inner = write_raster(cwd / f"inner{seed}.tif", data)
    with zipfile.ZipFile(main_file, "w") as z:
        z.write(inner, "inner.tif")
    inner.unlink()
    archive = str(main_file) if main_file.suffix == ".zip" else f"{{{main_file}}}"
    return f"/vsizip/{archive}/inner.tif", [main_file]


def landings(target: Path, cwd: Path) -> dict[str, str]:
    """Every way an output path can name the file ``target``."""
    (target.parent / "sub").mkdir(exist_ok=True)
    ways = {"same": str(target), "relative": os.path.relpath(target, cwd),
            "dotted": f"{target.parent}/./{target.name}",
            "updown": f"{target.parent}/sub/../{target.name}"}
    link = cwd / f"to_{target.parent.name}_{target.name}"
    if not link.is_symlink():
        link.symlink_to(target.resolve())
    ways["symlink"] = str(link)
    if not target.is_symlink():
        hard = cwd / f"hard_{target.parent.name}_{target.name}"
        if not hard.exists():
            os.link(target, hard)
        ways["hardlink"] = str(hard)
    return ways


def state(files: list[Path]) -> dict:
    return {f: f.read_bytes() for f in files}


def refused(capsys, args: list[str]) -> None:
    status = main(args)
    err = capsys.readouterr().err.strip()
    assert status == 1, (args, err)
    assert err.startswith("geotranslate: error: ") and len(err.splitlines()) == 1, (args, err)


def _main_file(form: str, folder: Path, name: str = "a") -> Path:
    return folder / (f"{name}.zip" if form == "vsizip" else f"{name}.tif")


@pytest.mark.parametrize("form", FORMS)
def test_predict_out(form, run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source, files = build_source(form, _main_file(form, tmp_path / "src"), tmp_path)
    model_files = [run / "model.json", run / "model.safetensors"]
    before = state(files + model_files)
    for target in files + model_files:
        for _way, out in landings(target, tmp_path).items():
            for extra in ([], ["--overwrite"], ["--resume"]):
                refused(capsys, ["predict-raster", source, "--model", str(run), "--out", out,
                                 *PREDICT, *extra])
    assert state(files + model_files) == before


@pytest.mark.parametrize("form", FORMS)
def test_predict_out_dir(form, run, tmp_path, monkeypatch, capsys):
    """One input's output, DIR/<stem>_translated.tif, is a file of another input."""
    monkeypatch.chdir(tmp_path)
    first = write_raster(tmp_path / "first.tif", textured_field(2, 40, 40, seed=5))
    out_dir = tmp_path / "D"
    source, files = build_source(form, out_dir / "first_translated.tif", tmp_path, seed=1)
    files = [first, *files]
    before = state(files)
    listing = sorted(p.name for p in out_dir.iterdir())
    (tmp_path / "to_D").symlink_to(out_dir)
    for way in (str(out_dir), "D", f"{out_dir}/.", str(tmp_path / "to_D")):
        for extra in ([], ["--overwrite"], ["--resume"]):
            refused(capsys, ["predict-raster", str(first), source, "--model", str(run),
                             "--out-dir", way, *PREDICT, *extra])
    assert state(files) == before
    assert sorted(p.name for p in out_dir.iterdir()) == listing


@pytest.mark.parametrize("form", FORMS)
def test_predict_mosaic(form, run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source, files = build_source(form, _main_file(form, tmp_path / "src"), tmp_path)
    before = state(files)
    for target in files:
        for _way, mosaic in landings(target, tmp_path).items():
            for extra in ([], ["--overwrite"], ["--resume"]):
                refused(capsys, ["predict-raster", source, "--model", str(run), "--out-dir",
                                 str(tmp_path / "o"), "--mosaic", mosaic, *PREDICT, *extra])
    assert state(files) == before
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("form", FORMS)
def test_evaluate_json(form, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source, files = build_source(form, _main_file(form, tmp_path / "src"), tmp_path)
    pred = write_raster(tmp_path / "pred.tif", textured_field(2, 40, 40, seed=7))
    before = state([*files, pred])
    for target in [*files, pred]:
        for _way, out in landings(target, tmp_path).items():
            for pair in ([str(pred), source], [source, str(pred)]):
                refused(capsys, ["evaluate", *pair, "--json", out])
    assert state([*files, pred]) == before


@pytest.mark.parametrize("form", FORMS)
def test_preview(form, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source, files = build_source(form, _main_file(form, tmp_path / "src"), tmp_path)
    before = state(files)
    for target in files:
        for _way, out in landings(target, tmp_path).items():
            refused(capsys, ["preview", source, "--out", out])
            refused(capsys, ["preview", source, source, "--out", out, "--title", "x", "y"])
    assert state(files) == before


@pytest.mark.parametrize("form", FORMS)
def test_export_tiles(form, tmp_path, monkeypatch, capsys):
    """The export writes DIR/meta.json, DIR/index.gpkg, DIR/export.lock and chips in
    DIR/{train,val}_{a,b}/: inputs named so, or lying there, are refused."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "E"
    cases = [build_source(form, out / "index.gpkg", tmp_path, item_path=out / "meta.json",
                          seed=1),  # a STAC item: the item is meta.json
             build_source(form, out / "export.lock", tmp_path, seed=3),
             build_source(form, _main_file(form, out / "train_a", "in"), tmp_path, seed=4)]
    if form != "item":
        cases.append(build_source(form, out / "meta.json", tmp_path, seed=2))
    (tmp_path / "to_E").symlink_to(out)
    (out / "sub").mkdir()
    for source, files in cases:
        before = state(files)
        listing = sorted(p.name for p in out.iterdir())
        for way in (str(out), "E", f"{out}/.", f"{out}/sub/..", str(tmp_path / "to_E")):
            refused(capsys, ["export-tiles", source, "--out", way, "--tile-size", "16",
                             "--no-progress"])
            other = str(write_raster(tmp_path / "other.tif", textured_field(2, 40, 40)))
            refused(capsys, ["export-tiles", other, "--out", way, "--tile-size", "16",
                             "--no-progress", "--b", source])
        for target in files:  # the output directory is an input file, or under one
            refused(capsys, ["export-tiles", source, "--out", str(target), "--no-progress"])
            refused(capsys, ["export-tiles", source, "--out", f"{target}/chips",
                             "--no-progress"])
        assert state(files) == before
        assert sorted(p.name for p in out.iterdir()) == listing
    # --aoi / --exclude files are inputs too
    if form == "plain":
        vector = out / "index.gpkg"
        vector.write_text("an input")
        for option in ("--aoi", "--exclude"):
            refused(capsys, ["export-tiles", str(tmp_path / "other.tif"), "--out", str(out),
                             option, str(vector), "--no-progress", "--tile-size", "16"])
        assert vector.read_text() == "an input"


@pytest.mark.parametrize("form", ["plain", "relative", "symlink"])
def test_train(form, tmp_path, monkeypatch, capsys):
    """train reads a chip folder (and --vgg-weights): the run may not write into them."""
    monkeypatch.chdir(tmp_path)
    chips = make_chips(tmp_path / "chips", n_train=2)
    data = {"plain": str(chips), "relative": "chips", "symlink": str(tmp_path / "to_chips")}
    (tmp_path / "to_chips").symlink_to(chips)
    vgg = tmp_path / "R" / "model.safetensors"
    vgg.parent.mkdir()
    vgg.write_bytes(b"vgg weights")
    files = [*sorted(p for p in chips.rglob("*") if p.is_file()), vgg]
    before = state(files)
    base = ["train", data[form], "--dataset-type", "Pix2Pix", "--max-steps", "1", "--ngf", "4",
            "--ndf", "4", "--no-progress", "--no-preview", "--device", "cpu"]
    outs = [str(chips), "chips", f"{chips}/.", str(tmp_path / "to_chips"),
            str(chips / "train_a"), str(chips / "new"), str(tmp_path)]
    for out in outs:
        refused(capsys, [*base, "--out", out])
    for target in files:  # a file, or under one
        refused(capsys, [*base, "--out", str(target)])
    # --vgg-weights inside the run directory: the run writes model.safetensors there
    hd = [*base[:2], "--dataset-type", "Pix2PixHD", *base[4:]]  # --vgg-weights is its option
    for out in (str(vgg.parent), "R", f"{vgg.parent}/."):
        refused(capsys, [*hd, "--out", out, "--lambda-vgg", "1", "--vgg-weights", str(vgg)])
    assert state(files) == before


@pytest.mark.parametrize("form", ["plain", "relative", "symlink"])
def test_model_stac(form, run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "to_run").symlink_to(run)
    model = {"plain": str(run), "relative": os.path.relpath(run, tmp_path),
             "symlink": str(tmp_path / "to_run")}[form]
    files = [run / "model.json", run / "model.safetensors"]
    before = state(files)
    for target in files:
        for _way, out in landings(target, tmp_path).items():
            for extra in ([], ["--overwrite"]):
                refused(capsys, ["model-stac", model, "--out", out, *extra])
                refused(capsys, ["model-stac", str(target), "--out", out, *extra])
    assert state(files) == before


def test_evaluate_json_in_chip_mode(chip_model, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Chip mode reads the model and the chip folder: --json may land in neither."""
    chips, run_dir, _, _ = chip_model
    monkeypatch.chdir(chips.parent)
    files = [run_dir / "model.json", run_dir / "model.safetensors", chips / "meta.json",
             *sorted(chips.glob("val_*/*.tif"))]
    before = state(files)
    targets = [*files, chips / "val_a" / "new.json", chips / "train_b" / "new.json"]
    for target in targets:
        ways = landings(target, chips.parent) if target.exists() else {"same": str(target)}
        for out in ways.values():
            refused(capsys, ["evaluate", "--model", str(run_dir), "--data", str(chips),
                             "--device", "cpu", "--json", out])
    assert state(files) == before
    assert not (chips / "val_a" / "new.json").exists()
