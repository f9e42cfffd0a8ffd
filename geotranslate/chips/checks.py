"""The checks an export makes before it writes anything: --workers, the output folder, that no
file it writes is one of its inputs, and the memory its windows take."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geotranslate.chips.index import INDEX_NAME
from geotranslate.chips.meta import DOMAINS, META_NAME, SPLITS
from geotranslate.dirlock import LOCK_NAME
from geotranslate.errors import OptionError, StorageError
from geotranslate.files import check_not_input, check_output_dir, display_path, resolved_path
from geotranslate.log import logger
from geotranslate.memory import check_memory
from geotranslate.raster.sources import input_files

#: reading threads per usable core at most (more wait on each other; remote reads that wait
#: on the network gain up to a few per core): a larger --workers is lowered to this, with a note
MAX_WORKERS_PER_CORE = 4


def bounded_workers(workers: int | None, cores: int) -> int:
    """--workers (default: ``cores``), lowered with a note to MAX_WORKERS_PER_CORE per core."""
    workers = cores if workers is None else workers
    if workers < 1:
        raise OptionError(f"--workers {workers}: must be at least 1")
    if workers > MAX_WORKERS_PER_CORE * cores:
        bound = MAX_WORKERS_PER_CORE * cores
        logger.warning(f"--workers {workers}: more than {MAX_WORKERS_PER_CORE} threads per "
                       f"usable core ({cores}) gain nothing; using {bound}")
        workers = bound
    return workers


def check_out_dir(out: Path) -> None:
    """--out is a directory, or can become one (see :func:`check_output_dir`)."""
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out}: exists and is not a directory")
    check_output_dir(out, "--out")


def check_not_inputs(out: Path, sources: list, vectors: list) -> None:
    """No file the export writes (meta.json, index.gpkg, the lock, chips) may be one of its
    inputs: the rasters (every file of a stack: or STAC item, a /vsizip/ archive) and the
    --aoi / --exclude files; none of them may lie among the chip folders."""
    inputs = input_files(sources) + [Path(v) for v in vectors]
    for name in (META_NAME, INDEX_NAME, LOCK_NAME):
        check_not_input(out / name, inputs)
    chip_folders = [resolved_path(out / f"{split}_{d}") for split in SPLITS for d in DOMAINS]
    for path in inputs:
        resolved = resolved_path(path)
        for folder in chip_folders:
            if folder in resolved.parents:
                raise StorageError(
                    f"{display_path(path)}: an input lies among the chips of --out {out} "
                    f"({folder.name}), which the export writes; move it or choose another --out")


def check_window_memory(tile_size: int, domain_meta: dict, workers: int, in_flight: int) -> None:
    """Refuses a tile size whose ``in_flight`` windows (see :func:`check_memory`) cannot fit."""
    with_workers = f" with --workers {workers}" if workers > 1 else ""
    check_memory(_window_bytes(tile_size, domain_meta) * in_flight,
                 f"--tile-size {tile_size}{with_workers}",
                 "use a smaller --tile-size" + (" or fewer --workers" if workers > 1 else ""))


def _window_bytes(tile_size: int, domain_meta: dict) -> int:
    """Memory of one window read in every domain (data and validity)."""
    per_pixel = sum(
        m["band_count"] * np.dtype(m["dtype"]).itemsize + 1 for m in domain_meta.values()
    )
    return tile_size * tile_size * per_pixel
