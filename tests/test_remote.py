"""Rasters where they live: export, predict and evaluate from a loopback HTTP server (byte
ranges) and a loopback S3 server (moto), windowed reads, and one-line errors for bad remotes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from builders import make_model, write_raster
from servers import GDAL_TEST_ENV, range_server, s3_env, s3_server

from geotranslate.cli import main as cli_main
from geotranslate.errors import GeotranslateError
from geotranslate.raster.io import open_raster, read_window
from geotranslate.raster.sources import parse_source

SIZE = 512


@pytest.fixture(autouse=True)
def gdal_test_env(monkeypatch):
    """Quick failures, no host AWS settings, no cloud metadata lookups."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in GDAL_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("CPL_AWS_AUTODETECT_EC2", "NO")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _cog(src: Path, dst: Path) -> Path:
    rasterio.shutil.copy(str(src), str(dst), driver="COG", BLOCKSIZE="128", COMPRESS="NONE")
    return dst


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A 2-band float32 A scene and a 3-band uint16 B scene on the same grid, as COGs."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    a = np.stack([np.sin(6 * xx) - 12, np.cos(5 * yy) - 18]) + rng.normal(0, 0.2, (2, SIZE, SIZE))
    b = (1000 + 800 * np.stack([xx, yy, xx * yy]) + rng.integers(0, 50, (3, SIZE, SIZE)))
    write_raster(root / "a_plain.tif", a.astype("float32"), descriptions=["VV", "VH"])
    write_raster(root / "b_plain.tif", b.astype("uint16"), descriptions=["red", "green", "blue"])
    _cog(root / "a_plain.tif", root / "a.tif")
    _cog(root / "b_plain.tif", root / "b.tif")
    return root


def _chips(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted(out.glob("*_*/*.tif")):
        with rasterio.open(path) as ds:
            found[f"{path.parent.name}/{path.name}"] = ds.read()
    return found


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _export_predict_evaluate(a: str, b: str, work: Path, model: Path, capsys,
                             tile: int = 64) -> dict:
    """The three commands on sources a and b; returns what they produced."""
    rc, _, err = _run(["export-tiles", a, "--b", b, "--out", str(work / "chips"),
                       "--tile-size", str(tile), "--no-progress"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["predict-raster", a, "--model", str(model), "--out",
                       str(work / "pred.tif"), "--window", "0,0,256,256", "--no-progress",
                       "--device", "cpu"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["evaluate", str(work / "pred.tif"), b, "--json", str(work / "eval.json")],
                      capsys)
    assert rc == 0, err
    with rasterio.open(work / "pred.tif") as ds:
        pred = ds.read()
    return {
        "chips": _chips(work / "chips"),
        "meta": json.loads((work / "chips" / "meta.json").read_text()),
        "pred": pred,
        "eval": json.loads((work / "eval.json").read_text()),
    }


def test_export_predict_evaluate_over_http_equal_local_files(scenes, tmp_path, capsys):
    model = make_model(tmp_path, bands_a=2, bands_b=3, range_a=(-20.0, -10.0),
                       range_b=(1000.0, 2000.0), dtype_b="uint16")
    (tmp_path / "local").mkdir()
    local = _export_predict_evaluate(str(scenes / "a.tif"), str(scenes / "b.tif"),
                                     tmp_path / "local", model, capsys)
    (tmp_path / "http").mkdir()
    with range_server(scenes) as server:
        a_url, b_url = f"{server.url}/a.tif", f"/vsicurl/{server.url}/b.tif"
        remote = _export_predict_evaluate(a_url, b_url, tmp_path / "http", model, capsys)
        served = dict(server.bytes_served)
    assert len(local["chips"]) == 2 * 64  # 8 x 8 windows, A and B
    assert remote["chips"].keys() == local["chips"].keys()
    for name, data in local["chips"].items():
        np.testing.assert_array_equal(remote["chips"][name], data, err_msg=name)
    np.testing.assert_array_equal(remote["pred"], local["pred"])
    assert remote["eval"]["metrics"] == local["eval"]["metrics"]
    # meta.json records the sources as given, not as local paths
    assert remote["meta"]["domains"]["a"]["sources"] == [a_url]
    assert remote["meta"]["pairs"] == [{"a": a_url, "b": [b_url]}]
    assert local["meta"]["domains"]["a"]["sources"] == [str((scenes / "a.tif").resolve())]
    # export reads each full-resolution byte about once (its statistics need every pixel),
    # and not the COG's overviews
    size, pixels = (scenes / "a.tif").stat().st_size, 2 * SIZE * SIZE * 4
    print(f"export fetched {served['a.tif']} bytes of a {size}-byte COG ({pixels} of pixels)")
    assert pixels * 0.95 < served["a.tif"] < min(size, pixels * 1.25), (served, size)


def test_windowed_read_of_a_served_cog_fetches_a_fraction(scenes, tmp_path, capsys):
    model = make_model(tmp_path, bands_a=2, bands_b=3)
    size = (scenes / "a.tif").stat().st_size
    with range_server(scenes) as server:
        url = f"{server.url}/a.tif"
        with open_raster(url) as ds:
            assert ds.name == url
            data, valid = read_window(ds, rasterio.windows.Window(128, 128, 64, 64), [1, 2])
        one_window = server.bytes_served["a.tif"]
        rc, _, err = _run(["predict-raster", url, "--model", str(model), "--out",
                           str(tmp_path / "w.tif"), "--window", "0,0,64,64", "--no-progress",
                           "--device", "cpu"], capsys)
        assert rc == 0, err
        predicted = server.bytes_served["a.tif"] - one_window
    with rasterio.open(scenes / "a.tif") as ds:
        np.testing.assert_array_equal(data, ds.read([1, 2], window=((128, 192), (128, 192))))
    assert valid.all()
    print(f"one 64-px window: {one_window} of {size} bytes; predict --window 0,0,64,64: "
          f"{predicted} bytes")
    assert one_window < size / 8
    assert predicted < size / 4


@pytest.fixture
def bucket(scenes, monkeypatch):
    """A moto S3 server with bucket 'scenes' holding a.tif and b.tif; the user's env set."""
    import boto3

    with s3_server() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="scenes")
        for name in ("a.tif", "b.tif"):
            client.upload_file(str(scenes / name), "scenes", f"s2/{name}")
        yield endpoint


def test_export_predict_evaluate_from_s3_equal_local_files(scenes, bucket, tmp_path, capsys):
    model = make_model(tmp_path, bands_a=2, bands_b=3, range_a=(-20.0, -10.0),
                       range_b=(1000.0, 2000.0), dtype_b="uint16")
    (tmp_path / "local").mkdir()
    (tmp_path / "s3").mkdir()
    # 128-px chips: with AWS variables set and boto3 installed, rasterio makes a boto3 session
    # for every rasterio.Env (each chip written), about 20 ms each
    local = _export_predict_evaluate(str(scenes / "a.tif"), str(scenes / "b.tif"),
                                     tmp_path / "local", model, capsys, tile=128)
    remote = _export_predict_evaluate("s3://scenes/s2/a.tif", "/vsis3/scenes/s2/b.tif",
                                      tmp_path / "s3", model, capsys, tile=128)
    assert remote["chips"].keys() == local["chips"].keys()
    for name, data in local["chips"].items():
        np.testing.assert_array_equal(remote["chips"][name], data, err_msg=name)
    np.testing.assert_array_equal(remote["pred"], local["pred"])
    assert remote["eval"]["metrics"] == local["eval"]["metrics"]
    assert remote["meta"]["pairs"] == [{"a": "s3://scenes/s2/a.tif",
                                        "b": ["/vsis3/scenes/s2/b.tif"]}]


def test_s3_errors_are_one_line(bucket, tmp_path, monkeypatch, capsys):
    out = tmp_path / "chips"
    cases = [
        ("s3://nobucket/s2/a.tif", "no such bucket"),
        ("s3://scenes/s2/missing.tif", "not found"),
    ]
    for source, expected in cases:
        rc, _, err = _run(["export-tiles", source, "--out", str(out), "--no-progress"], capsys)
        assert rc == 1
        assert err.strip() == f"geotranslate: error: {source}: cannot open: {expected}" or (
            err.count("\n") == 1 and expected in err and source in err), err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    rc, _, err = _run(["predict-raster", "s3://scenes/s2/a.tif", "--model", str(tmp_path),
                       "--out", str(tmp_path / "p.tif")], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert "access denied: check AWS credentials" in err
    assert not out.exists() and not list(tmp_path.glob("*p.tif*"))


def test_http_errors_are_one_line_and_write_nothing(scenes, tmp_path, capsys):
    model = make_model(tmp_path, bands_a=2, bands_b=3)
    data = (scenes / "a.tif").read_bytes()
    served = tmp_path / "served"
    served.mkdir()
    (served / "truncated.tif").write_bytes(data[: len(data) // 2])
    with range_server(served) as server:
        server.status["forbidden.tif"] = 403
        server.slow.add("slow.tif")
        cases = {
            f"{server.url}/missing.tif": "cannot open: HTTP 404",
            f"{server.url}/forbidden.tif": "cannot open: HTTP 403",
            f"{server.url}/slow.tif": "cannot open: timed out",
            "http://127.0.0.1:9/closed.tif": "cannot open: unreachable",
        }
        for url, expected in cases.items():
            rc, _, err = _run(["predict-raster", url, "--model", str(model), "--out",
                               str(tmp_path / "out.tif")], capsys)
            assert rc == 1
            assert err.startswith(f"geotranslate: error: {url}: {expected}"), err
            assert err.count("\n") == 1, err
        # the header arrives, the second half does not: a read fails mid-run
        url = f"{server.url}/truncated.tif"
        rc, _, err = _run(["predict-raster", url, "--model", str(model), "--out",
                           str(tmp_path / "out.tif"), "--no-progress", "--device", "cpu"],
                          capsys)
        assert rc == 1 and err.count("\n") == 1, err
        assert err.startswith(f"geotranslate: error: {url}: read failed"), err
        rc, _, err = _run(["evaluate", url, str(scenes / "a.tif")], capsys)
        assert rc == 1 and err.count("\n") == 1 and "read failed" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "served"]


def test_zipped_raster_is_read_in_place(scenes, tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "product.zip", "w") as z:
        z.write(scenes / "a.tif", "GRANULE/IMG/a.tif")
    name = f"/vsizip/{tmp_path / 'product.zip'}/GRANULE/IMG/a.tif"
    rc, _, err = _run(["export-tiles", name, "--out", str(tmp_path / "chips"), "--tile-size",
                       "256", "--no-progress"], capsys)
    assert rc == 0, err
    with rasterio.open(tmp_path / "chips" / "train_a" / "a_256_0.tif") as chip, \
            rasterio.open(scenes / "a.tif") as src:
        np.testing.assert_array_equal(chip.read(), src.read(window=((256, 512), (0, 256))))


def test_source_names():
    assert parse_source("https://h.example/x/B04.tif?sig=1").gdal_name == (
        "/vsicurl/https://h.example/x/B04.tif?sig=1")
    assert parse_source("https://h.example/x/B04.tif?sig=1").stem == "B04"
    assert parse_source("s3://bkt/a/scene.tif").gdal_name == "/vsis3/bkt/a/scene.tif"
    zipped = parse_source("/vsizip/product.zip/GRANULE/B02.jp2")
    assert (zipped.gdal_name, zipped.stem, zipped.local) == (zipped.name, "B02", False)
    assert parse_source("local/scene.tif").local
    with pytest.raises(GeotranslateError, match="no such file"):
        open_raster("missing_scene.tif")


def test_aws_endpoint_url_becomes_gdal_settings_unless_the_user_gave_them():
    from geotranslate.raster.opening import remote_config

    assert remote_config({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert remote_config({"AWS_ENDPOINT_URL": "https://s3.example.org",
                          "AWS_VIRTUAL_HOSTING": "TRUE"}) == {
        "AWS_S3_ENDPOINT": "s3.example.org", "AWS_HTTPS": "YES"}
    assert remote_config({"AWS_ENDPOINT_URL": "http://a:1", "AWS_S3_ENDPOINT": "b:2"}) == {}
    assert remote_config({}) == {}


def test_default_output_of_a_url_is_in_the_working_directory(scenes, tmp_path, monkeypatch,
                                                             capsys):
    model = make_model(tmp_path, bands_a=2, bands_b=3)
    monkeypatch.chdir(tmp_path)
    with range_server(scenes) as server:
        rc, out, err = _run(["predict-raster", f"{server.url}/a.tif", "--model", str(model),
                             "--window", "0,0,64,64", "--no-progress", "--device", "cpu"],
                            capsys)
    assert rc == 0, err
    with rasterio.open(tmp_path / "a_translated.tif") as ds:
        assert ds.shape == (64, 64) and ds.tags()["GEOTRANSLATE_SOURCE"] == f"{server.url}/a.tif"


def test_vrt_file_over_served_files(scenes, tmp_path):
    with range_server(scenes) as server:
        a, b = f"{server.url}/a_plain.tif", f"{server.url}/b_plain.tif"
        xml = (f'<VRTDataset rasterXSize="{SIZE}" rasterYSize="{SIZE}">'
               f"{_vrt_band(1, '/vsicurl/' + a, 1, 'Float32')}"
               f"{_vrt_band(2, '/vsicurl/' + b, 3, 'Float32')}</VRTDataset>")
        (tmp_path / "mix.vrt").write_text(xml)
        with open_raster(tmp_path / "mix.vrt", allow_no_crs=True) as ds, \
                rasterio.open(scenes / "a_plain.tif") as da, \
                rasterio.open(scenes / "b_plain.tif") as db:
            np.testing.assert_array_equal(ds.read(1), da.read(1))
            np.testing.assert_array_equal(ds.read(2), db.read(3).astype("float32"))
        assert server.bytes_served["b_plain.tif"] > 0


def _vrt_band(index: int, name: str, band: int, dtype: str) -> str:
    return (f'<VRTRasterBand dataType="{dtype}" band="{index}"><SimpleSource>'
            f"<SourceFilename>{name}</SourceFilename><SourceBand>{band}</SourceBand>"
            "</SimpleSource></VRTRasterBand>")
