"""Chip datasets: pairing, per-(seed, epoch, index) augmentation, masks, and bad chip folders."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import NODATA, known_mapping, make_chips, write_raster

from geotranslate.data import ChipDataset, EpochSampler
from geotranslate.errors import GeotranslateError


def test_paired_items_share_augmentation_and_follow_the_mapping(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=6)
    ds = ChipDataset(root, paired=True, augment=True, crop_size=24, cache=False)
    raw = ChipDataset(root, paired=True, augment=False, cache=False)
    assert ds.chip_size == 32 and ds.crop_size == 24 and len(ds) == 6
    seen_geometries = set()
    for epoch in range(4):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            assert item["name_a"] == item["name_b"]
            assert item["a"].shape == (2, 24, 24) and item["b"].shape == (3, 24, 24)
            assert item["valid_a"].shape == (1, 24, 24)
            # undo the normalization and check B = mapping(A) pixel by pixel: A and B were
            # cropped, flipped and rotated the same way
            a = ds.norm["a"].from_model(item["a"].numpy())
            b = ds.norm["b"].from_model(item["b"].numpy())
            inside = (item["b"].abs() < 0.999).all(0).numpy() & \
                (item["a"].abs() < 0.999).all(0).numpy()  # unclipped pixels
            assert inside.mean() > 0.5
            np.testing.assert_allclose(known_mapping(a)[:, inside], b[:, inside], atol=1e-3)
            seen_geometries.add(tuple(item["a"][0, 0, :3].tolist()))
    assert len(seen_geometries) > 6  # augmentation changes between epochs
    # the same key gives the same sample; the raw dataset returns the chip unchanged
    torch.testing.assert_close(ds[(2, 3)]["a"], ds[(2, 3)]["a"])
    assert raw[0]["a"].shape == (2, 32, 32)
    assert float(raw[0]["a"].min()) >= -1 and float(raw[0]["a"].max()) <= 1


def test_cache_gives_the_same_items(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=3, nodata_holes=True)
    cached = ChipDataset(root, paired=True, cache=True)
    uncached = ChipDataset(root, paired=True, cache=False)
    assert cached.cached and not uncached.cached
    for key in [(0, 0), (1, 2), (5, 1)]:
        for k in ("a", "b", "valid_a", "valid_b"):
            torch.testing.assert_close(cached[key][k], uncached[key][k])


def test_meta_json_without_the_new_percentiles_still_loads(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=2)
    new = ChipDataset(root, paired=True, norm_method="robust")
    meta = json.loads((root / "meta.json").read_text())
    for domain in meta["domains"].values():
        for band in domain["stats"]["bands"]:
            assert {"p0_1", "p99_9"} <= band.keys()
            del band["p0_1"], band["p99_9"]  # as written by earlier versions
    (root / "meta.json").write_text(json.dumps(meta))
    old = ChipDataset(root, paired=True, norm_method="robust")
    for d in ("a", "b"):  # smooth fields have no far tails: min/max either way
        assert old.norm[d] == new.norm[d]
    torch.testing.assert_close(old[(0, 0)]["a"], new[(0, 0)]["a"])


def test_nodata_pixels_are_invalid_and_zero(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=2, nodata_holes=True)
    item = ChipDataset(root, paired=True, augment=False)[0]
    valid_a, valid_b = item["valid_a"][0], item["valid_b"][0]
    assert valid_a[:4, :6].sum() == 0 and valid_a.sum() == 32 * 32 - 24
    assert valid_b[-5:, -3:].sum() == 0 and valid_b.sum() == 32 * 32 - 15
    assert (item["a"][:, :4, :6] == 0).all() and (item["b"][:, -5:, -3:] == 0).all()


def test_unpaired_draws_b_independently_and_reproducibly(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=6, paired=False, mapping=None)
    ds = ChipDataset(root, paired=False, seed=3)
    again = ChipDataset(root, paired=False, seed=3)
    other_seed = ChipDataset(root, paired=False, seed=4)
    picks = [ds[(e, i)]["name_b"] for e in range(3) for i in range(6)]
    assert picks == [again[(e, i)]["name_b"] for e in range(3) for i in range(6)]
    assert picks != [other_seed[(e, i)]["name_b"] for e in range(3) for i in range(6)]
    assert len(set(picks)) > 3
    # a Pix2Pix dataset on these chips is refused: their names do not pair up
    with pytest.raises(GeotranslateError, match=r"6 chips only in train_a \(e.g. src_0_0.tif\)"):
        ChipDataset(root, paired=True, meta=dataclasses.replace(ds.meta, pairing="paired"))


def test_sampler_is_a_function_of_seed_and_epoch_and_shards(tmp_path):
    s = EpochSampler(10, seed=1)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first and sorted(i for _, i in first) == list(range(10))
    s.set_epoch(3)
    assert list(s) != first
    s.set_epoch(2, start=4)
    assert list(s) == first[4:] and len(s) == 6
    ranks = [EpochSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(0)
    shares = [[i for _, i in r] for r in ranks]
    assert all(len(x) == 4 for x in shares)
    assert set().union(*shares) == set(range(10))


def test_bad_chip_folders(tmp_path):
    with pytest.raises(GeotranslateError, match="no such chip directory"):
        ChipDataset(tmp_path / "nothing", paired=True)
    root = make_chips(tmp_path / "chips", n_train=3)
    with pytest.raises(GeotranslateError, match="crop size 48 is larger than the chips"):
        ChipDataset(root, paired=True, crop_size=48)
    # a chip with the wrong band count / dtype is named
    bad = root / "train_b" / "src_32_0.tif"
    write_raster(bad, np.zeros((2, 32, 32), np.float32), nodata=NODATA)
    with pytest.raises(GeotranslateError, match=r"src_32_0.tif: 2 bands, but meta.json says "
                                                r"domain B has 3"):
        ChipDataset(root, paired=True)
    write_raster(bad, np.zeros((3, 32, 32), np.uint16))
    with pytest.raises(GeotranslateError, match=r"src_32_0.tif: dtype uint16, but meta.json"):
        ChipDataset(root, paired=True)
    # an empty domain, and a missing one
    for p in (root / "train_b").iterdir():
        p.unlink()
    with pytest.raises(GeotranslateError, match="no chips"):
        ChipDataset(root, paired=True)
    (root / "train_b").rmdir()
    with pytest.raises(GeotranslateError, match="train_b: missing"):
        ChipDataset(root, paired=True)
    (root / "meta.json").unlink()
    with pytest.raises(GeotranslateError, match="meta.json: missing"):
        ChipDataset(root, paired=True)


def test_pix2pix_refuses_chips_marked_unpaired(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=2)
    meta = json.loads((root / "meta.json").read_text())
    meta["dataset_type"] = "unpaired"
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GeotranslateError, match="use --dataset-type CycleGAN"):
        ChipDataset(root, paired=True)
    assert len(ChipDataset(root, paired=False)) == 2


# ---- geometric augmentation (--augment) ---------------------------------------------------------

def _symmetries() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The 8 symmetries of the square on (..., rows, cols) arrays, written out independently."""
    return {
        "identity": lambda x: x,
        "left-right": lambda x: x[..., ::-1],
        "up-down": lambda x: x[..., ::-1, :],
        "half turn": lambda x: x[..., ::-1, ::-1],
        "transpose": lambda x: np.swapaxes(x, -1, -2),
        "anti-transpose": lambda x: np.swapaxes(x, -1, -2)[..., ::-1, ::-1],
        "quarter turn left": lambda x: np.swapaxes(x, -1, -2)[..., ::-1, :],
        "quarter turn right": lambda x: np.swapaxes(x, -1, -2)[..., :, ::-1],
    }


def _raw_items(root: Path, split: str = "train") -> list[dict[str, np.ndarray]]:
    """The chips as files hold them, normalized by hand (percentile range), with validity.

    Datasets compared with these items are built with ``norm_method="percentile"``."""
    meta = json.loads((root / "meta.json").read_text())
    out = []
    for path in sorted((root / f"{split}_a").glob("*.tif")):
        item = {}
        for d in ("a", "b"):
            with rasterio.open(root / f"{split}_{d}" / path.name) as ds:
                data = ds.read().astype(np.float64)
            valid = (data != NODATA).all(axis=0)
            bands = meta["domains"][d]["stats"]["bands"]
            low = np.array([b["p2"] for b in bands])[:, None, None]
            high = np.array([b["p98"] for b in bands])[:, None, None]
            item[d] = np.clip((data - low) / (high - low) * 2 - 1, -1, 1) * valid
            item["valid_" + d] = valid.astype(np.float64)[None]
        out.append(item)
    return out


def test_default_augment_keeps_every_chip_pixel_for_pixel(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=4, nodata_holes=True)
    raw = _raw_items(root)
    ds = ChipDataset(root, paired=True, cache=False, norm_method="percentile")
    assert ds.augment == "none"
    for epoch in range(5):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            for key in ("a", "b", "valid_a", "valid_b"):
                np.testing.assert_allclose(item[key].numpy(), raw[index][key], atol=2e-6)


@pytest.mark.parametrize("mode, expected", [
    ("none", {"identity"}),
    ("hflip", {"identity", "left-right"}),
    ("vflip", {"identity", "up-down"}),
    ("rot180", {"identity", "half turn"}),
    ("d4", set(_symmetries())),
])
def test_augment_modes_give_exactly_their_symmetries_to_a_b_and_masks(tmp_path, mode, expected):
    root = make_chips(tmp_path / "chips", n_train=6, nodata_holes=True)
    raw = _raw_items(root)
    symmetries = _symmetries()
    # the chips and their masks (holes in one corner) change under each of the 8 symmetries
    for key in ("a", "valid_a", "valid_b"):
        images = [f(raw[0][key]) for f in symmetries.values()]
        assert all(not np.array_equal(images[i], images[j])
                   for i in range(8) for j in range(i + 1, 8))
    ds = ChipDataset(root, paired=True, augment=mode, cache=False, seed=3,
                     norm_method="percentile")
    seen = set()
    for epoch in range(12):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            found = {}
            for key in ("a", "b", "valid_a", "valid_b"):
                got = item[key].numpy()
                found[key] = {name for name, f in symmetries.items()
                              if np.allclose(got, f(raw[index][key]), atol=2e-6)}
            # one transform, the same for A, B and both validity masks (masks without a
            # hole are symmetric: they fit every transform)
            assert len(found["a"]) == 1 and found["a"] == found["b"], found
            masks = found["valid_a"] & found["valid_b"]
            holes = not raw[index]["valid_a"].all()
            assert masks == found["a"] if holes else found["a"] <= masks, found
            seen |= found["a"]
    assert seen == expected
    if mode == "d4":  # the draws of the former augment=True: old runs resume identically
        legacy = ChipDataset(root, paired=True, augment=True, cache=False, seed=3,
                             norm_method="percentile")
        for key in [(0, 0), (3, 5), (11, 2)]:
            torch.testing.assert_close(legacy[key]["a"], ds[key]["a"])


def test_augment_with_random_crops_and_bad_mode(tmp_path):
    root = make_chips(tmp_path / "chips", n_train=2)
    raw = _raw_items(root)
    ds = ChipDataset(root, paired=True, crop_size=20, cache=False,  # crops, geometry kept
                     norm_method="percentile")
    offsets = set()
    for epoch in range(6):
        item = ds[(epoch, 1)]
        hits = [(r, c) for r in range(13) for c in range(13)
                if np.allclose(item["b"].numpy(), raw[1]["b"][:, r:r + 20, c:c + 20], atol=2e-6)]
        assert len(hits) == 1
        np.testing.assert_allclose(item["a"].numpy(),
                                   raw[1]["a"][:, hits[0][0]:hits[0][0] + 20,
                                               hits[0][1]:hits[0][1] + 20], atol=2e-6)
        offsets.add(hits[0])
    assert len(offsets) > 1  # random crops stay available
    with pytest.raises(GeotranslateError, match="augment 'rot90': choose from none, hflip"):
        ChipDataset(root, paired=True, augment="rot90")
