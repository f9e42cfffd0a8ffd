"""Chip datasets for training: the ``train_a``/``train_b`` (and ``val_*``) folders of export-tiles.

Every random choice (crop, flips, rotations, the B chip of an unpaired sample) is a pure
function of ``(seed, epoch, index)``: the sampler hands ``(epoch, index)`` keys to the
dataset. Data order therefore does not depend on worker processes or on RNG state, which
is what makes ``--resume`` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset, Sampler

from geotranslate.augment import DEFAULT_AUGMENT, augment_mode, draw_transform
from geotranslate.chips.meta import DOMAINS, META_NAME, ChipMeta, read_chip_meta
from geotranslate.dirlock import LOCK_NAME, lock_state
from geotranslate.errors import GeotranslateError, InputError, OptionError, StorageError
from geotranslate.inputs import (
    DEFAULT_NORM_SCOPE,
    check_norm_scope,
    chip_stem,
    matched_stats,
    reference_of,
    scene_normalizer,
    scene_stats_of,
)
from geotranslate.raster.io import open_raster, read_window
from geotranslate.raster.opening import spectral_bands
from geotranslate.stats import DEFAULT_NORM_METHOD, Normalizer

CHIP_SUFFIXES = (".tif", ".tiff")
#: what a dataset item holds: the chips of A and B, each with its validity mask
BATCH_KEYS = ("a", "b", "valid_a", "valid_b")
#: default ceiling of the in-memory cache (normalized float32 + masks).
CACHE_LIMIT_BYTES = 2 * 1024**3

def read_meta(data_dir: str | Path) -> ChipMeta:
    """The chip folder's meta.json, checked for what training needs: both domains, and no
    export-tiles run writing into the folder or interrupted there."""
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise StorageError(f"{root}: is a file; give the chip directory made by export-tiles")
    if not root.is_dir():
        raise StorageError(f"{root}: no such chip directory (make one with export-tiles)")
    state, holder = lock_state(root)
    if state == "held":
        raise StorageError(
            f"{root}: export-tiles ({holder}) is writing into it now; wait for it to finish"
        )
    if state == "unfinished":
        raise InputError(
            f"{root}: an export-tiles run into it did not finish ({holder}; {LOCK_NAME} is left), "
            "so meta.json does not describe all its chips; re-run the same export-tiles "
            "command to complete it"
        )
    path = root / META_NAME
    if not path.exists():
        raise StorageError(f"{path}: missing (is {root} a folder written by export-tiles?)")
    return read_chip_meta(path)


def chip_paths(folder: Path) -> list[Path]:
    """The chip GeoTIFFs of one ``{split}_{domain}`` folder, by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in CHIP_SUFFIXES)


def read_chip(path: Path, check=None) -> tuple[np.ndarray, np.ndarray]:
    """A whole chip's spectral bands and validity, as export-tiles wrote them.

    ``check(ds)``, when given, vets the open dataset first (one open per chip).
    """
    with open_raster(path, allow_no_crs=True) as ds:
        if check is not None:
            check(ds)
        return read_window(ds, Window(0, 0, ds.width, ds.height), spectral_bands(ds))


def has_split(data_dir: str | Path, split: str) -> bool:
    root = Path(data_dir)
    return all((root / f"{split}_{d}").is_dir() and chip_paths(root / f"{split}_{d}")
               for d in DOMAINS)


def normalizers(meta: ChipMeta, method: str) -> dict[str, Normalizer]:
    return {d: Normalizer.from_stats(meta.domains[d].band_stats, method) for d in DOMAINS}


class ChipDataset(Dataset):
    """Normalized chips of domains A and B; items are dicts of (C,H,W) float32 tensors.

    ``paired``: A and B chips share names and are returned together (Pix2Pix). Otherwise the
    B chip is drawn at random (CycleGAN). ``augment``: a mode of
    :data:`geotranslate.augment.AUGMENTS` (a legacy boolean: True = d4, False = none).
    Items: ``a``, ``b`` in [-1, 1] (invalid pixels 0), ``valid_a``, ``valid_b`` (1,H,W;
    1 = valid), ``name_a``, ``name_b``.
    Index the dataset with an int or an ``(epoch, index)`` key (what :class:`EpochSampler`
    yields) so augmentations change per epoch.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        *,
        paired: bool,
        norm_method: str = DEFAULT_NORM_METHOD,
        crop_size: int | None = None,
        augment: str | bool = DEFAULT_AUGMENT,
        random_crop: bool = True,
        cache: bool | None = None,
        seed: int = 0,
        meta: ChipMeta | None = None,
        norm_scope: str = DEFAULT_NORM_SCOPE,
    ):
        self.root = Path(data_dir)
        self.meta = meta if meta is not None else read_meta(self.root)
        self.split = split
        self.paired = paired
        try:
            self.augment = augment_mode(augment)
        except ValueError as e:
            raise OptionError(str(e)) from None
        self.random_crop = random_crop
        self.seed = int(seed)
        self.norm = normalizers(self.meta, norm_method)
        self.norm_scope = check_norm_scope(norm_scope)
        self.reference: dict[str, dict] = {}
        self.scene_norm: dict[str, dict[str, Normalizer]] = {}
        if self.norm_scope == "scene":
            self._scene_normalizers(norm_method)
        if paired and self.meta.pairing == "unpaired":
            raise OptionError(
                f"{self.root / META_NAME}: the chips are unpaired (exported without a common "
                "grid); Pix2Pix needs paired chips: use --dataset-type CycleGAN"
            )
        self.paths: dict[str, list[Path]] = {}
        for d in DOMAINS:
            folder = self.root / f"{split}_{d}"
            if not folder.is_dir():
                raise StorageError(f"{folder}: missing (expected {split}_a/ and {split}_b/)")
            self.paths[d] = chip_paths(folder)
            if not self.paths[d]:
                raise InputError(f"{folder}: no chips (*.tif) — domain {d.upper()} is empty")
            self._check_described(folder, d)
        if paired:
            self._check_pairs()
        with open_raster(self.paths["a"][0], allow_no_crs=True) as ds:
            self.chip_size = int(ds.width)
        if crop_size is not None and crop_size > self.chip_size:
            raise OptionError(
                f"crop size {crop_size} is larger than the chips ({self.chip_size} px in "
                f"{self.root}); use --crop-size <= {self.chip_size}"
            )
        self.crop_size = crop_size if crop_size is not None else self.chip_size
        self._cache: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None
        if cache is None:
            cache = self.cache_bytes() <= CACHE_LIMIT_BYTES
        if cache:  # check each chip while loading it: one open per chip
            self._cache = {d: [self._load(d, i, check=True) for i in range(len(self.paths[d]))]
                           for d in DOMAINS}
        else:
            for d in DOMAINS:
                for path in self.paths[d]:
                    with open_raster(path, allow_no_crs=True) as ds:
                        self._check_chip(ds, d)

    def _scene_normalizers(self, norm_method: str) -> None:
        """Per-scene normalization (inputs.py): the domain's normalizer from its scenes matched
        to the reference, and one normalizer per scene (chip name stem)."""
        for d in DOMAINS:
            dom = self.meta.domains[d]
            scenes = scene_stats_of(dom.scene_stats,
                                    f"{self.root / META_NAME} (domain {d.upper()})")
            stats = list(dom.band_stats)
            self.reference[d] = reference_of(stats)
            self.norm[d] = Normalizer.from_stats(matched_stats(list(scenes.values()), stats),
                                                 norm_method)
            self.scene_norm[d] = {stem: scene_normalizer(self.norm[d], s, self.reference[d])
                                  for stem, s in scenes.items()}

    def normalizer_of(self, domain: str, path: Path) -> Normalizer:
        """The normalizer of a chip: its domain's, or with the scene scope its scene's."""
        if self.norm_scope != "scene":
            return self.norm[domain]
        norm = self.scene_norm[domain].get(chip_stem(path.name))
        if norm is None:
            raise InputError(
                f"{path}: meta.json has no scene statistics for {chip_stem(path.name)!r}; "
                "re-export the chips with this version of export-tiles"
            )
        return norm

    # -- checks -------------------------------------------------------------------------------
    def _check_described(self, folder: Path, domain: str) -> None:
        """Refuse more chips than meta.json counts: they come from a run that did not finish,
        so the statistics and counts in meta.json do not cover them (fewer is fine: chips the
        user deleted)."""
        described = self.meta.chip_count(self.split, domain)
        if described is None:
            return
        found = len(self.paths[domain])
        if found > described:
            raise InputError(
                f"{folder}: {found} chips, but {self.root / META_NAME} describes {described}; "
                "the others come from an export-tiles run that did not finish: re-run that "
                "export-tiles command to complete the dataset"
            )

    def _check_pairs(self) -> None:
        names_a = {p.name for p in self.paths["a"]}
        names_b = {p.name for p in self.paths["b"]}
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        if only_a or only_b:
            parts = []
            if only_a:
                parts.append(f"{len(only_a)} chips only in {self.split}_a (e.g. {only_a[0]})")
            if only_b:
                parts.append(f"{len(only_b)} chips only in {self.split}_b (e.g. {only_b[0]})")
            raise InputError(
                f"{self.root}: Pix2Pix needs paired chips with the same names, but "
                f"{' and '.join(parts)}; use --dataset-type CycleGAN for unpaired data"
            )
        self.paths["b"] = [self.root / f"{self.split}_b" / p.name for p in self.paths["a"]]

    def _check_chip(self, ds, domain: str) -> None:
        """A chip's band count, dtype and size against meta.json and the other chips."""
        want_count = self.meta.domains[domain].band_count
        want_dtype = self.meta.domains[domain].dtype
        count = len(spectral_bands(ds))
        if count != want_count:
            raise InputError(
                f"{ds.name}: {count} bands, but meta.json says domain {domain.upper()} has "
                f"{want_count}"
            )
        if ds.dtypes[0] != want_dtype:
            raise InputError(
                f"{ds.name}: dtype {ds.dtypes[0]}, but meta.json says domain "
                f"{domain.upper()} is {want_dtype}"
            )
        if ds.width != ds.height or ds.width != self.chip_size:
            raise InputError(
                f"{ds.name}: {ds.width}x{ds.height} px, but the other chips are "
                f"{self.chip_size}x{self.chip_size} (chips must be square and of one size)"
            )

    # -- reading ------------------------------------------------------------------------------
    def cache_bytes(self) -> int:
        """Memory the in-memory cache would take (normalized float32 + bool masks)."""
        px = self.chip_size**2
        return sum(len(self.paths[d]) * px * (4 * self.meta.domains[d].band_count + 1)
                   for d in DOMAINS)

    def _load(self, domain: str, index: int, check: bool = False) -> tuple[np.ndarray, np.ndarray]:
        vet = (lambda ds: self._check_chip(ds, domain)) if check else None
        data, valid = read_chip(self.paths[domain][index], vet)
        path = self.paths[domain][index]
        return self.normalizer_of(domain, path).to_model(data, valid), valid

    def _get(self, domain: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None:
            return self._cache[domain][index]
        return self._load(domain, index)

    def chip_data(self, domain: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Chip ``index`` of ``domain`` in its data units (as export-tiles wrote it) and its
        validity, cropped at the centre as the items of a set without random crops are."""
        data, valid = read_chip(self.paths[domain][index])
        offset = (self.chip_size - self.crop_size) // 2
        return _apply(data, valid, (offset, offset, False, 0), self.crop_size)

    def __len__(self) -> int:
        return max(len(self.paths["a"]), len(self.paths["b"]))

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        ia = index % len(self.paths["a"])
        ib = ia if self.paired else int(rng.integers(len(self.paths["b"])))
        a, valid_a = self._get("a", ia)
        b, valid_b = self._get("b", ib)
        geometry_a = self._draw_geometry(rng)
        geometry_b = geometry_a if self.paired else self._draw_geometry(rng)
        a, valid_a = _apply(a, valid_a, geometry_a, self.crop_size)
        b, valid_b = _apply(b, valid_b, geometry_b, self.crop_size)
        return {
            "a": torch.from_numpy(a),
            "b": torch.from_numpy(b),
            "valid_a": torch.from_numpy(valid_a[None].astype(np.float32)),
            "valid_b": torch.from_numpy(valid_b[None].astype(np.float32)),
            "name_a": self.paths["a"][ia].name,
            "name_b": self.paths["b"][ib].name,
        }

    def _draw_geometry(self, rng: np.random.Generator) -> tuple[int, int, bool, int]:
        """(row, col) of the crop, horizontal flip, number of 90° rotations (after the flip)."""
        slack = self.chip_size - self.crop_size
        if self.random_crop and slack > 0:
            row, col = (int(v) for v in rng.integers(0, slack + 1, size=2))
        else:
            row = col = slack // 2
        return (row, col, *draw_transform(self.augment, rng))


def _apply(data: np.ndarray, valid: np.ndarray, geometry: tuple[int, int, bool, int],
           size: int) -> tuple[np.ndarray, np.ndarray]:
    row, col, flip, rotations = geometry
    data = data[:, row:row + size, col:col + size]
    valid = valid[row:row + size, col:col + size]
    if flip:
        data, valid = data[:, :, ::-1], valid[:, ::-1]
    if rotations:
        data, valid = np.rot90(data, rotations, axes=(1, 2)), np.rot90(valid, rotations)
    return np.ascontiguousarray(data), np.ascontiguousarray(valid)


class ErrorsAsItems(Dataset):
    """``dataset[key]``, with a GeotranslateError returned as the item instead of raised.

    A DataLoader worker turns a raised error into a message holding the worker's whole
    traceback; returned, the error reaches the main process intact (the caller raises it).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except GeotranslateError as e:
            return e


def ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is the main process's to handle (at step end)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a permutation that is a pure function of (seed, epoch).

    Sharded across ``world_size`` ranks like DistributedSampler (padded to equal length);
    ``start`` skips the first samples of this rank's share (to resume mid-epoch).
    """

    def __init__(self, length: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(length / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.length))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices()[self.start:]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        return self.per_rank - self.start
