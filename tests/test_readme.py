"""Every command line in README.md's ```bash blocks runs, and succeeds.

Each line runs in a fresh working directory that holds what it names: ``sample_data/`` (the
real folder), or small generated rasters, chips and runs under the names it uses (scene.tif,
s1_*.tif, chips, runs/latest, …; see INPUTS). URLs are served from a loopback HTTP server,
``s3://`` from a loopback S3 server (moto), with the AWS variables the README tells users to
set. A line naming something this test cannot provide fails, so a new README example cannot
go untested.

What is changed, and only for speed: ``train`` lines get ``--max-steps 1 --ngf 4 --ndf 4``
(``--resume`` lines ``--max-steps 2`` only: the run's own networks); a ``torchrun
--nproc_per_node 4 -m geotranslate train …`` (or ``predict-raster …``) line runs its
``train …`` part in one process (tests/test_ddp.py and tests/test_archive.py run torchrun
themselves with two CPU processes); export-tiles and
predict-raster get ``--no-progress``. The documented flags keep their meaning.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from builders import ROOT, write_raster
from rasterio.transform import from_origin
from servers import GDAL_TEST_ENV, range_server, s3_env, s3_server

from geotranslate.cli import main as cli_main

README = ROOT / "README.md"
#: bash lines that are not geotranslate commands, and why they are not run here
NOT_RUN = {
    "make demo": "runs the demo block's four steps, each run below",
    "make test": "runs this test suite",
}
OUTPUT_OPTIONS = {"--out", "--json", "--out-dir", "--mosaic"}
SPEED_TRAIN = ["--max-steps", "1", "--ngf", "4", "--ndf", "4", "--no-progress", "--no-preview",
               "--device", "cpu"]
SPEED_RESUME = ["--max-steps", "2", "--no-progress", "--no-preview"]


def readme_lines() -> list[str]:
    """The command lines of README.md's bash blocks (continuations joined, comments kept)."""
    lines, block = [], None
    for raw in README.read_text().splitlines():
        if raw.strip().startswith("```"):
            block = [] if raw.strip() == "```bash" and block is None else None
            continue
        if block is None:
            continue
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1].rstrip() + " " + raw.strip()
        elif raw.strip() and not raw.strip().startswith("#"):
            lines.append(raw.strip())
    return lines


# ---- what a line may name ----------------------------------------------------------------------

RNG = np.random.default_rng(7)


def _sar(path: Path, size: int = 256, crs: str = "EPSG:32633", x0: float = 500000) -> None:
    data = RNG.normal(-14, 3, (2, size, size)).astype("float32")
    write_raster(path, data, crs=crs, transform=from_origin(x0, 5300000, 10, 10),
                 descriptions=["VV", "VH"])


def _optical(path: Path, size: int = 256, crs: str = "EPSG:32633", rows: int | None = None,
             x0: float = 500000) -> None:
    data = RNG.integers(200, 4000, (4, rows or size, size)).astype("uint16")
    write_raster(path, data, crs=crs, transform=from_origin(x0, 5300000, 10, 10), nodata=0,
                 descriptions=["blue", "green", "red", "nir"])


def _band(path: Path, res: int) -> None:
    n = 2560 // res
    write_raster(path, RNG.integers(200, 4000, (1, n, n)).astype("uint16"),
                 transform=from_origin(500000, 5300000, res, res), nodata=0)


def _copy_tree(key: str) -> Callable[[Path, dict], None]:
    def make(target: Path, assets: dict) -> None:
        shutil.copytree(assets[key], target, symlinks=True)

    return make


def _link(key: str) -> Callable[[Path, dict], None]:
    def make(target: Path, assets: dict) -> None:
        target.symlink_to(assets[key], target_is_directory=True)

    return make


def _glob_pair(prefix: str, maker) -> Callable[[Path, dict], None]:
    def make(target: Path, assets: dict) -> None:  # two scenes in two UTM zones
        maker(target.parent / f"{prefix}20240601.tif")
        maker(target.parent / f"{prefix}20240615.tif", crs="EPSG:32634", x0=166000)

    return make


def _stack_bands(target: Path, assets: dict) -> None:
    for name, res in [("B02", 10), ("B03", 10), ("B04", 10), ("B08", 10), ("B11", 20)]:
        _band(target.parent / f"T32_{name}.tif", res)


def _stac_item(target: Path, assets: dict) -> None:
    import datetime

    import pystac

    _stack_bands(target, assets)
    item = pystac.Item("T32-20240601", None, None, datetime.datetime(2024, 6, 1), {})
    for key in ["B02", "B03", "B04", "B08"]:
        item.add_asset(key, pystac.Asset(f"./T32_{key}.tif"))
    target.write_text(json.dumps(item.to_dict(include_self_link=False)))


def _onnx(target: Path, assets: dict) -> None:
    from geotranslate.onnx_export import export_onnx

    export_onnx(assets["pix2pix"], target)


def _zip(target: Path, assets: dict) -> None:
    _sar(target.parent / "vv.tif")
    with zipfile.ZipFile(target, "w") as z:
        z.write(target.parent / "vv.tif", "measurement/vv.tif")
    (target.parent / "vv.tif").unlink()


def _file(maker, **kwargs) -> Callable[[Path, dict], None]:
    return lambda target, assets: maker(target, **kwargs)


#: names README lines use -> how this test makes them in the line's working directory.
#: Globs are made as files they match; URL paths are made in the served folder.
INPUTS: dict[str, Callable[[Path, dict], None]] = {
    "sample_data/sar.tif": lambda t, a: None,  # the real sample_data/, linked in
    "sample_data/optical.tif": lambda t, a: None,
    "sar.tif": _file(_sar),
    "optical.tif": _file(_optical),
    "translated.tif": _file(_optical),
    "scene.tif": _file(_sar),
    "map.tif": _file(_optical),
    "dsm.tif": lambda t, a: write_raster(t, RNG.normal(400, 50, (1, 256, 256)).astype("float32")),
    "big_mosaic.tif": _file(_optical, size=512, rows=1024),
    "s1_*.tif": _glob_pair("s1_", _sar),
    "s2_*.tif": _glob_pair("s2_", _optical),
    "cloudy_*.tif": _glob_pair("cloudy_", _optical),
    "clear_*.tif": _glob_pair("clear_", _optical),
    "s1_20240615.tif": _glob_pair("s1_", _sar),
    "cloudy_20240615.tif": _glob_pair("cloudy_", _optical),
    "clear_20240615.tif": _glob_pair("clear_", _optical),
    "declouded.tif": _file(_optical, crs="EPSG:32634", x0=166000),  # on clear_20240615
    "cloud_chips": _copy_tree("cloud_chips"),
    "runs/cloud": _link("cloud"),
    "north/*.tif": _glob_pair("n_", _sar),
    "maps/*.tif": _glob_pair("m_", _optical),
    "chips": _copy_tree("chips"),
    "demo_output/chips": _copy_tree("chips"),
    "demo_output/run": _link("pix2pix"),
    "demo_output/sar_translated.tif": _file(_optical, size=512),
    "scene_translated.tif": _file(_optical),
    "s2_l1c.tif": lambda t, a: write_raster(  # 13 bands on translated.tif's grid
        t, RNG.integers(200, 4000, (13, 256, 256)).astype("uint16"), nodata=0,
        transform=from_origin(500000, 5300000, 10, 10)),
    "demo_output/chips/index.gpkg": lambda t, a: shutil.copytree(a["chips"], t.parent,
                                                                 dirs_exist_ok=True),
    "runs/latest": _link("pix2pix"),  # CycleGAN for --direction b2a lines
    "runs/Pix2Pix-20261121-101500": _copy_tree("pix2pix"),
    "S1_product.zip": _zip,
    "T32_B02.tif": _stack_bands,
    "T32_B03.tif": lambda t, a: None,
    "T32_B04.tif": lambda t, a: None,
    "T32_B11.tif": lambda t, a: None,
    "item.json": _stac_item,
    "model.onnx": _onnx,
    # served over HTTP (https://data.example.com/...) and from S3 (s3://my-bucket/...)
    "s1/scene.tif": _file(_sar),
    "s2/scene.tif": _file(_optical),
}
FILE_LIKE = re.compile(r"(/|\.(tif|tiff|vrt|json|png|zip|gpkg|onnx)$|\.json:|\*)",
                       re.IGNORECASE)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Chips from the sample data and tiny Pix2Pix and CycleGAN runs trained on them."""
    root = tmp_path_factory.mktemp("readme_assets")
    chips = root / "chips"
    assert cli_main(["export-tiles", str(ROOT / "sample_data/sar.tif"), "--b",
                     str(ROOT / "sample_data/optical.tif"), "--out", str(chips),
                     "--tile-size", "64", "--val-fraction", "0.15", "--no-progress"]) == 0
    runs = {}
    for kind in ["Pix2Pix", "CycleGAN"]:
        run = root / kind.lower()
        assert cli_main(["train", str(chips), "--dataset-type", kind, "--out", str(run),
                         *SPEED_TRAIN]) == 0
        runs[kind.lower()] = run
    # the cloud-removal example: A = S1 fused with the cloudy optical scene covering it
    scenes = root / "cloud_scenes"
    scenes.mkdir()
    for prefix, maker in (("s1_", _sar), ("cloudy_", _optical), ("clear_", _optical)):
        _glob_pair(prefix, maker)(scenes / f"{prefix}x.tif", {})
    cloud_chips = root / "cloud_chips"
    names = {p: sorted(str(f) for f in scenes.glob(f"{p}*.tif"))
             for p in ("s1_", "cloudy_", "clear_")}
    assert cli_main(["export-tiles", *names["s1_"], "--a-extra", *names["cloudy_"], "--b",
                     *names["clear_"], "--out", str(cloud_chips), "--tile-size", "128",
                     "--no-progress"]) == 0
    runs["cloud"] = root / "cloud"
    assert cli_main(["train", str(cloud_chips), "--dataset-type", "Pix2Pix", "--out",
                     str(runs["cloud"]), *SPEED_TRAIN]) == 0
    return {"chips": chips, "cloud_chips": cloud_chips, **runs}


def _translate(token: str, ctx: dict) -> str:
    """Map one token onto what this test serves: URLs to the loopback server."""
    if token.startswith("https://data.example.com/"):
        return ctx["http"] + token[len("https://data.example.com"):]
    if token.startswith("/vsicurl/https://data.example.com/"):
        return "/vsicurl/" + ctx["http"] + token[len("/vsicurl/https://data.example.com"):]
    return token


def _provide(token: str, work: Path, ctx: dict, assets: dict, direction_b2a: bool) -> None:
    """Make what ``token`` names in ``work`` (or the served folder); fail when unknown."""
    key, where = token, work
    for prefix in ("https://data.example.com/", "/vsicurl/https://data.example.com/"):
        if token.startswith(prefix):
            key, where = token[len(prefix):], ctx["served"]
    for prefix in ("s3://my-bucket/", "/vsis3/my-bucket/"):
        if token.startswith(prefix):
            key, where = token[len(prefix):], ctx["bucket_dir"]
    if token.startswith("/vsizip/"):
        key = token[len("/vsizip/"):].split("/", 1)[0]
    if token.startswith("stack:"):
        for part in token[len("stack:"):].split(","):
            _provide(part, work, ctx, assets, direction_b2a)
        return
    if token.startswith("fuse:"):
        for part in token[len("fuse:"):].split("+"):
            _provide(part, work, ctx, assets, direction_b2a)
        return
    if re.match(r"^.+\.json:[^/]+$", token):
        key = token.rsplit(":", 1)[0]
    if key not in INPUTS:
        pytest.fail(f"README names {token!r}, which test_readme.py cannot provide: add it to "
                    "INPUTS")
    target = where / key
    target.parent.mkdir(parents=True, exist_ok=True)
    maker = INPUTS[key]
    if key == "runs/latest" and direction_b2a:
        maker = _link("cyclegan")
    if not target.exists() and not target.is_symlink():
        maker(target, assets)


def _command(line: str, work: Path, ctx: dict, assets: dict) -> list[str]:
    """The argv to run for a README line (NOT_RUN lines skip); provisions its inputs."""
    args = shlex.split(line, comments=True)
    if " ".join(args) in NOT_RUN:
        pytest.skip(f"not a geotranslate command: {NOT_RUN[' '.join(args)]}")
    torchrun = args[0] == "torchrun"
    if torchrun:
        nproc = args.index("--nproc_per_node")
        assert args[nproc + 3] == "geotranslate", line
        assert args[nproc + 4] in ("train", "predict-raster"), line  # tests/test_archive.py
        # runs predict-raster under torchrun itself
        args = args[nproc + 4:]
    elif args[0] != "geotranslate":
        pytest.fail(f"README line {line!r} is neither a geotranslate command nor in NOT_RUN")
    else:
        args = args[1:]
    expanded = []
    outputs = set()
    b2a = "b2a" in args
    for i, token in enumerate(args):
        if i and args[i - 1] in OUTPUT_OPTIONS:
            outputs.add(token)
            expanded.append(token)
            continue
        if token.startswith("-") or not (FILE_LIKE.search(token) or token in INPUTS):
            expanded.append(token)
            continue
        if token.startswith("map:"):
            expanded.append(token)
            continue
        _provide(token, work, ctx, assets, b2a)
        if "*" in token:
            matches = sorted(glob.glob(token, root_dir=work))
            assert matches, token
            expanded.extend(matches)
        else:
            expanded.append(_translate(token, ctx))
    if expanded[0] == "train":
        expanded += SPEED_RESUME if "--resume" in expanded else SPEED_TRAIN
    if expanded[0] in ("export-tiles", "predict-raster"):
        expanded.append("--no-progress")
    if expanded[0] == "predict-raster" and "--model" not in expanded:
        _provide("runs/latest", work, ctx, assets, b2a)  # the default --model
    return expanded


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The loopback HTTP server for data.example.com and the S3 server for my-bucket."""
    import boto3

    served = tmp_path_factory.mktemp("served")
    bucket_dir = tmp_path_factory.mktemp("bucket")
    with range_server(served) as http, s3_server() as endpoint:
        yield {"http": http.url, "served": served, "bucket_dir": bucket_dir,
               "s3": endpoint, "client": boto3.client("s3", endpoint_url=endpoint,
                                                      region_name="us-east-1",
                                                      aws_access_key_id="testing",
                                                      aws_secret_access_key="testing")}


LINES = readme_lines()


def test_readme_has_the_documented_examples():
    joined = "\n".join(LINES)
    assert "geotranslate export-tiles s1_*.tif --b s2_*.tif --val-fraction 0.1" in joined
    assert len(LINES) > 20


@pytest.mark.parametrize("line", LINES)
def test_readme_line_runs(line, assets, servers, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "sample_data").symlink_to(ROOT / "sample_data", target_is_directory=True)
    monkeypatch.chdir(work)
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    env = {**GDAL_TEST_ENV, **s3_env(servers["s3"]), "CPL_AWS_AUTODETECT_EC2": "NO",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = _command(line, work, servers, assets)
    client = servers["client"]
    if any(p.is_file() for p in servers["bucket_dir"].rglob("*")):
        if "my-bucket" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket="my-bucket")
        for path in servers["bucket_dir"].rglob("*.tif"):
            client.upload_file(str(path), "my-bucket",
                               str(path.relative_to(servers["bucket_dir"])))
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"{line}\n-> {argv}\n{err}"
    assert "error" not in err.lower(), err
    for i, token in enumerate(argv[:-1]):
        if token in OUTPUT_OPTIONS:
            assert (work / argv[i + 1]).exists(), f"{line}: no {argv[i + 1]}"


# ---- --b takes every raster after it ----------------------------------------------------------


def test_b_takes_every_following_raster_on_real_pairs(real_data, tmp_path, monkeypatch):
    pairs = real_data / "bigearthnet" / "pairs_stacked"
    s1 = sorted(str(p) for p in pairs.glob("*_S1_*.tif"))
    s2 = sorted(str(p) for p in pairs.glob("*_S2_*.tif"))
    assert len(s1) == len(s2) == 6
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export-tiles", *s1, "--b", *s2, "--tile-size", "60", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "chips" / "meta.json").read_text())
    # each S1 patch is paired with its own S2 patch, not with the other five
    assert sorted((p["a"], tuple(p["b"])) for p in meta["pairs"]) == [
        (a, (b,)) for a, b in zip(s1, s2, strict=True)]
    assert meta["domains"]["a"]["band_count"] == 2 and meta["domains"]["b"]["band_count"] == 4


def test_b_list_ends_at_the_next_option_and_may_repeat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        _sar(tmp_path / f"a{i}.tif", x0=500000 + 5000 * i)
        _optical(tmp_path / f"b{i}.tif", x0=500000 + 5000 * i)
    args = ["export-tiles", "a0.tif", "a1.tif", "a2.tif", "--b", "b0.tif", "b1.tif", "--tile-size",
            "64", "--no-progress", "--b", "b2.tif", "--out", "c"]
    assert cli_main(args) == 0
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert [Path(p["b"][0]).name for p in meta["pairs"]] == ["b0.tif", "b1.tif", "b2.tif"]
    assert len(list((tmp_path / "c" / "train_b").glob("*.tif"))) == 3 * 16


def test_title_takes_one_value_per_raster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _sar(tmp_path / "s.tif", size=64)
    _optical(tmp_path / "o.tif", size=64)
    assert cli_main(["preview", "s.tif", "o.tif", "--title", "SAR", "optical", "--out",
                     "p.png"]) == 0
    assert (tmp_path / "p.png").exists()
