"""The plan of a prediction (predict/plan.py): its windows cover the output exactly once, it is
decided from metadata (pixels are read by the scene pass and the tiles only), and every input
is parsed once."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from geotranslate.errors import GeotranslateError
from geotranslate.modelfile import DomainSpec, TranslationModel
from geotranslate.models import build_generator
from geotranslate.predict import predict_raster
from geotranslate.predict.batch import predict_rasters
from geotranslate.predict.blend import blend_weights
from geotranslate.predict.grid import parse_region
from geotranslate.predict.plan import Compute, make_layout, make_plan
from geotranslate.raster import sources
from geotranslate.raster.sources import parse_source
from geotranslate.stats import BandStats, Normalizer


def _model(norm: str = "instance") -> TranslationModel:
    torch.manual_seed(0)
    g_ab = build_generator("resnet", 2, 2, ngf=4, n_blocks=1, norm=norm, init=False)
    stats = [BandStats(-1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 100)] * 2
    domain = DomainSpec(2, "float32", ["x", "y"], None, Normalizer.from_stats(stats, "minmax"))
    spec = {"arch": "resnet", "in_channels": 2, "out_channels": 2,
            "kwargs": dict(g_ab.arch_kwargs)}
    return TranslationModel("Pix2Pix", {"a2b": g_ab}, {"a2b": spec},
                            {"a": domain, "b": domain}, chip_size=64)


def _field(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(height * width)
    return rng.uniform(-1, 1, (2, height, width)).astype("float32")


def _layout(path, model, **options):
    defaults = dict(direction="a2b", tile_size=None, overlap=None, blend="hann",
                    norm_stats="scene", window=None, rank=None, world_size=1, chunk_width=2048,
                    cog=False, compress="zstd", compress_threads=None)
    compute = Compute.resolve("cpu", "fp32", None, 2)
    return make_layout(parse_source(str(path)), model, compute, **{**defaults, **options})


def _coverage(layout) -> tuple[np.ndarray, np.ndarray]:
    """(how many strips finish each output pixel, the blend weight each one gets from the
    tiles), computed from the layout's strips alone."""
    start, stop = layout.out_rows
    finished = np.zeros((layout.region.height, layout.region.width), dtype=int)
    weight = np.zeros((layout.grid.height, layout.grid.width))
    tile_weights = blend_weights(layout.tile, layout.overlap, layout.blend)
    tiles = set()  # tiles at a chunk border are computed by both chunks, blended once
    for strip in layout.strips:
        (a, b), (first, stop) = strip.chunk_cols, strip.finish
        if stop > first:  # a tile row above the output's rows finishes none of them
            finished[first - start : stop - start, a:b] += 1
        tiles.update((strip.row, c) for c in strip.tile_cols)
    for row, col in tiles:
        r0, c0 = max(row, 0), max(col, 0)
        r1 = min(row + layout.tile, layout.grid.height)
        c1 = min(col + layout.tile, layout.grid.width)
        weight[r0:r1, c0:c1] += tile_weights[r0 - row : r1 - row, c0 - col : c1 - col]
    return finished, weight[start:stop]


@pytest.mark.parametrize("size, options", [
    ((300, 200), {}),
    ((300, 200), {"tile_size": 128, "overlap": 40, "chunk_width": 256}),
    ((700, 530), {"tile_size": 64, "overlap": 20, "chunk_width": 256, "blend": "none"}),
    ((700, 530), {"tile_size": 96, "overlap": 28, "blend": "linear", "window": "40,8,600,300"}),
    ((37, 23), {"tile_size": 64}),
])
def test_the_plans_windows_cover_every_output_pixel_once(tmp_path, make_raster, size, options):
    path = make_raster("in.tif", _field(*size))
    layout = _layout(path, _model(), **options)
    assert layout.region == layout.grid == (parse_region(options.get("window"))
                                            or Window(0, 0, size[1], size[0]))
    finished, weight = _coverage(layout)
    assert (finished == 1).all()  # every output pixel written once, by one strip
    assert (weight > 0).all()  # and blended from at least one tile with a positive weight
    rows = sorted({s.row for s in layout.strips})
    steps = set(np.diff(rows))
    assert rows[0] == -layout.overlap  # the margin beyond the edge, mirrored
    assert max(steps, default=0) <= layout.tile - layout.overlap  # tiles overlap by >= overlap


def test_rank_parts_are_the_whole_plans_rows_once_each(tmp_path, make_raster):
    path = make_raster("in.tif", _field(700, 130))
    model = _model()
    whole = _layout(path, model, tile_size=64, overlap=24)
    covered = np.zeros((whole.grid.height, whole.grid.width), dtype=int)
    for rank in range(3):
        part = _layout(path, model, tile_size=64, overlap=24, rank=rank, world_size=3)
        assert part.grid == whole.grid and part.region.row_off % 256 == 0
        # the whole run's tiles (so the parts join into exactly its result), its own rows
        assert {(s.row, s.tile_cols) for s in part.strips} <= {
            (s.row, s.tile_cols) for s in whole.strips}
        finished, _ = _coverage(part)
        covered[part.region.row_off : part.region.row_off + part.region.height] += finished
    assert (covered == 1).all()


def _corrupt_pixels(path) -> None:
    """Overwrite every compressed block of ``path``: its metadata still reads, its pixels not."""
    with rasterio.open(path) as ds:
        blocks = [(int(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)),
                   int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)))
                  for x in range(-(-ds.width // 64)) for y in range(-(-ds.height // 64))]
    data = bytearray(path.read_bytes())
    for offset, size in blocks:
        data[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(data))


def test_the_layout_reads_no_pixel_and_a_finished_resume_reads_none(tmp_path):
    src = tmp_path / "in.tif"
    model = _model()
    with rasterio.open(src, "w", driver="GTiff", width=150, height=130, count=2,
                       dtype="float32", crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0),
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(_field(130, 150))  # compressed blocks, to corrupt below
    out = tmp_path / "out.tif"
    predict_raster(src, model, out, device="cpu", progress=False)
    finished = out.read_bytes()
    _corrupt_pixels(src)
    layout = _layout(src, model)  # metadata only: the corrupt pixels are not read
    assert layout.region == Window(0, 0, 150, 130)
    with pytest.raises(GeotranslateError, match="in.tif: read failed"):
        make_plan(layout)  # the scene pass reads a sample of the pixels
    summary = predict_raster(src, model, out, device="cpu", progress=False, resume=True)
    assert summary.complete_already and out.read_bytes() == finished
    with pytest.raises(GeotranslateError, match="in.tif: read failed"):
        predict_raster(src, model, out, device="cpu", progress=False, overwrite=True)
    assert out.read_bytes() == finished


def test_every_input_is_parsed_once(tmp_path, make_raster, monkeypatch):
    small = make_raster("small.tif", _field(60, 70))
    big = make_raster("big.tif", _field(600, 90))
    stack = make_raster("b1.tif", _field(60, 70)[:1]), make_raster("b2.tif", _field(60, 70)[1:])
    parsed: list[str] = []
    real = sources.single_source

    def counting(text: str):
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(sources, "single_source", counting)
    model = _model("none")
    predict_raster(str(small), model, tmp_path / "one.tif", device="cpu", progress=False)
    assert parsed == [str(small)]
    inputs = [str(small), str(big), f"stack:{stack[0]},{stack[1]}", str(tmp_path / "nope.tif")]
    failed = []
    for rank in range(2):  # two processes; the big input is split between them
        parsed.clear()
        result = predict_rasters(inputs, model, tmp_path / "out", rank=rank, world_size=2,
                                 split_pixels=50_000, device="cpu", progress=False,
                                 echo=lambda *a, **k: None)
        assert sorted(parsed) == sorted([str(small), str(big), str(stack[0]), str(stack[1]),
                                         str(tmp_path / "nope.tif")])
        failed += [name for name, _ in result.failed]
    assert failed == [str(tmp_path / "nope.tif")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "b1_stack_translated.tif", "big_translated.parts", "big_translated.vrt",
        "small_translated.tif"]
