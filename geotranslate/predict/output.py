"""The output: one interface (:class:`Output`), today a resumable GeoTIFF or COG
(:class:`GeoTiffOutput`); its profile, nodata rules, the COG conversion and the default name.

Nodata: the target domain's nodata; when the domain has none, 0 for unsigned integers, the
dtype's minimum for signed integers and NaN for floats. Valid outputs that would equal the
nodata value are moved one step away from it (e.g. 0 -> 1 for uint16 with nodata 0), so no
real pixel is lost as nodata.
"""

from __future__ import annotations

import contextlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.control import GroundControlPoint
from rasterio.errors import RasterioError
from rasterio.rpc import RPC
from rasterio.windows import Window

from geotranslate.errors import OptionError, StorageError, first_line
from geotranslate.files import atomic_path, check_file_output, check_not_input
from geotranslate.log import logger
from geotranslate.predict.grid import OUT_BLOCK, Strip
from geotranslate.predict.resume import (
    Checkpoint,
    keep_partial,
    open_partial,
    partial_paths,
    remaining_strips,
    remove_partial,
)
from geotranslate.raster.io import GDAL_CACHE_BYTES, colour_interpretation, verify_geotiff
from geotranslate.raster.sources import RasterSource, input_files

if TYPE_CHECKING:
    from geotranslate.predict.plan import PredictPlan


def output_nodata(dtype: str, declared: float | None) -> float:
    """The target domain's nodata, else 0 (unsigned), the minimum (signed) or NaN (floats)."""
    if declared is not None:
        return float(declared)
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.unsignedinteger):
        return 0.0
    if np.issubdtype(np_dtype, np.integer):
        return float(np.iinfo(np_dtype).min)
    return float("nan")


def apply_nodata(values: np.ndarray, valid: np.ndarray, nodata: float) -> np.ndarray:
    """Invalid pixels -> nodata; valid pixels that equal nodata are moved one step off it."""
    all_valid = bool(valid.all())
    if not math.isnan(nodata):
        fill = np.asarray(nodata).astype(values.dtype)
        clash = values == fill
        if not all_valid:
            clash &= valid
        if clash.any():
            if np.issubdtype(values.dtype, np.integer):
                step = -1 if fill == np.iinfo(values.dtype).max else 1
                values[clash] = fill + step
            else:
                values[clash] = np.nextafter(fill, np.asarray(np.inf, dtype=values.dtype))
    if not all_valid:  # copyto with a broadcast mask: several times faster than values[:, ~v]
        np.copyto(values, np.asarray(nodata).astype(values.dtype), where=~valid[None])
    return values


def georeference(ds, region: Window) -> dict:
    """The input's georeference for the output region: CRS + transform, or its GCPs / RPCs.

    A raster referenced only by GCPs or RPCs keeps them (shifted to the region), so it can
    still be warped or orthorectified afterwards.
    """
    row0, col0 = region.row_off, region.col_off
    gcps, gcp_crs = ds.gcps
    if ds.crs is None and gcps:
        shifted = [
            GroundControlPoint(row=g.row - row0, col=g.col - col0, x=g.x, y=g.y, z=g.z,
                               id=g.id, info=g.info)
            for g in gcps
        ]
        return {"gcps": shifted, "crs": gcp_crs}
    if ds.crs is None and ds.rpcs is not None:
        rpcs = ds.rpcs.to_dict()
        rpcs["line_off"] -= row0
        rpcs["samp_off"] -= col0
        return {"rpcs": RPC(**rpcs)}
    return {"crs": ds.crs, "transform": ds.window_transform(region)}


#: ``--compress`` codecs; zstd and deflate take a level as ``zstd:9``, ``deflate:6``
COMPRESS_CODECS = ("zstd", "deflate", "lzw", "none")
#: zstd at level 3 (9 in a COG)
DEFAULT_COMPRESS = "zstd"
_LEVELS = {"zstd": (1, 22), "deflate": (1, 12)}


def parse_compress(compress: str) -> tuple[str, int | None]:
    """``zstd``, ``zstd:LEVEL``, ``deflate[:LEVEL]``, ``lzw`` or ``none`` -> (codec, level)."""
    codec, _, level = compress.lower().partition(":")
    if codec not in COMPRESS_CODECS or (level and codec not in _LEVELS):
        raise OptionError(f"compress {compress!r}: choose from zstd[:1-22], "
                          "deflate[:1-12], lzw, none")
    if not level:
        return codec, None
    low, high = _LEVELS[codec]
    if not level.isdigit() or not low <= int(level) <= high:
        raise OptionError(f"compress {compress!r}: the {codec} level is {low} to {high}")
    return codec, int(level)


def parse_threads(threads: int | str | None) -> str | None:
    """GDAL's NUM_THREADS for compression: None or 1 (none), a count, or ``all`` (ALL_CPUS)."""
    if threads is None or str(threads) == "1":
        return None
    if str(threads).lower() == "all":
        return "ALL_CPUS"
    if not str(threads).isdigit() or int(threads) < 1:
        raise OptionError(f"compress threads {threads!r}: a count >= 1 or 'all'")
    return str(int(threads))


def compression_options(compress: str, floating: bool, cog: bool,
                        threads: int | str | None = None) -> dict:
    """GTiff creation options of ``compress`` (:func:`parse_compress`) for the written file:
    the codec, its level, a predictor (3 for floats, 2 for integers) and NUM_THREADS.

    The file a COG is re-encoded from is written with LZW: resume checkpoints reopen it in
    update mode, where GDAL keeps the codec but not its level (zstd falls back to level 9,
    which costs 6x level 1); LZW has no level to lose (2.6x zstd level 1's CPU, for all of
    the file instead of a part; measured in docs/benchmarks.md)."""
    codec, level = parse_compress(compress)
    options: dict = {}
    if codec != "none":
        options = {"compress": "lzw" if cog else codec, "predictor": 3 if floating else 2}
    if codec == "zstd" and not cog:
        options["zstd_level"] = level or 3
    elif codec == "deflate" and level and not cog:
        options["zlevel"] = level
    if (num_threads := parse_threads(threads)) is not None and codec != "none":
        options["num_threads"] = num_threads
    return options


def update_options(profile: dict) -> dict:
    """Open options for reopening a file written with ``profile`` in update mode: GDAL reads
    the codec and predictor back from the file, NUM_THREADS must be given again (the codec's
    level cannot: GDAL keeps none on update, and encodes at the codec's default level)."""
    return {"num_threads": profile["num_threads"]} if "num_threads" in profile else {}


def output_profile(ds, region: Window, target, nodata: float, cog: bool,
                   compress: str = DEFAULT_COMPRESS, threads: int | str | None = None) -> dict:
    """GeoTIFF creation options of ``region`` of ``ds``: tiled, ``compress`` (ZSTD with a
    predictor by default), GDAL's NUM_THREADS from ``threads``, BIGTIFF when needed."""
    dtype = target.dtype
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    return {
        "driver": "GTiff",
        "width": region.width,
        "height": region.height,
        "count": target.band_count,
        "dtype": dtype,
        **georeference(ds, region),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": OUT_BLOCK,
        "blockysize": OUT_BLOCK,
        **compression_options(compress, floating, cog, threads),
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }


def to_cog(src: Path, dst: Path, profile: dict, compress: str = DEFAULT_COMPRESS) -> None:
    """Re-encode the finished GeoTIFF as a Cloud-Optimized GeoTIFF with overviews
    (``compress``: zstd at level 9 by default)."""
    codec, level = parse_compress(compress)
    options: dict = {"compress": codec.upper(), "predictor": "NO" if codec == "none" else "YES"}
    if codec == "zstd" or (codec == "deflate" and level):
        options["level"] = level or 9
    if "num_threads" in profile:
        options["num_threads"] = profile["num_threads"]
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            rasterio.shutil.copy(
                str(src), str(dst), driver="COG", **options, blocksize=OUT_BLOCK,
                overviews="AUTO", overview_resampling="AVERAGE", bigtiff="IF_SAFER",
            )
    except RasterioError as e:
        raise StorageError(f"{dst}: writing the COG failed ({first_line(e)})") from None


def default_output(source: RasterSource, rank: int | None = None, world: int = 1) -> Path:
    """``<IN stem>_translated.tif`` beside the input, or in the working directory for a URL or
    band files (``.partRofN`` added for a rank)."""
    part = f".part{rank}of{world}" if rank is not None and world > 1 else ""
    name = f"{source.stem}_translated{part}.tif"
    return Path(source.name).with_name(name) if source.local else Path(name)


# ---- the output: one interface, a resumable GeoTIFF (or COG) ----------------------------------


class RowWriter(Protocol):
    """An output open for writing in the pipeline's writer thread."""

    def write(self, values: np.ndarray, window: Window) -> None:
        """Write finished rows ``values`` (bands, rows, cols) at ``window`` of the output;
        windows come in grid order, column chunk by column chunk, top to bottom."""

    def close(self) -> None:
        """Flush and close, after the last window (or on an error)."""


class Output(ABC):
    """Where a prediction goes.

    The runner asks :meth:`complete_already` first (``--resume`` after a finished run); then,
    inside :meth:`writing`, the pipeline computes the strips it yields, and its writer thread
    opens :meth:`open_rows` and hands it every finished window of rows.
    """

    name: Path  # the final name, for messages

    @abstractmethod
    def complete_already(self) -> bool:
        """Whether an earlier run finished this output, leaving nothing to do."""

    @abstractmethod
    def writing(self, plan: PredictPlan) -> AbstractContextManager[list[Strip]]:
        """Get ready to write ``plan``'s result and yield the strips still to compute (all of
        them, or what an interrupted run left); publish the result when the block ends, or
        drop what was written on an error (Ctrl-C keeps it for ``--resume``)."""

    @abstractmethod
    def open_rows(self) -> RowWriter:
        """Open for writing, in the pipeline's writer thread (once, inside :meth:`writing`)."""


class GeoTiffOutput(Output):
    """A tiled GeoTIFF (or a COG), written under a hidden name beside ``path`` and renamed into
    place when complete and verified; an interrupted run continues with ``resume``
    (predict/resume.py). Refuses a ``path`` that is one of ``inputs`` (the raster's files,
    the model's)."""

    def __init__(self, path: str | os.PathLike, inputs: Sequence, *, cog: bool = False,
                 overwrite: bool = False, resume: bool = False):
        check_file_output(path)  # "DIR/" names a directory: before Path drops the slash
        self.name = Path(path)
        check_not_input(self.name, input_files(inputs))
        self.cog, self.overwrite, self.resume = cog, overwrite, resume
        self._plan: PredictPlan | None = None
        self._partial: Path | None = None
        self._checkpoint: Checkpoint | None = None

    def complete_already(self) -> bool:
        if not (self.resume and not self.overwrite and self.name.exists()
                and not partial_paths(self.name)[1].exists()):
            return False
        logger.info(f"{self.name}: already complete, nothing to resume (left as it is)")
        return True

    @contextlib.contextmanager
    def writing(self, plan: PredictPlan) -> Iterator[list[Strip]]:
        with atomic_path(self.name, overwrite=self.overwrite) as final:
            self._plan = plan
            self._partial, self._checkpoint = open_partial(
                self.name, plan.resume_key, plan.profile, resume=self.resume,
                overwrite=self.overwrite)
            start = self._checkpoint and self._checkpoint.start
            strips = remaining_strips(list(plan.strips), start, plan.tile, *plan.out_rows)
            try:
                yield strips
                self._publish(final)
            except (KeyboardInterrupt, SystemExit):
                keep_partial(self._partial, self._checkpoint)  # stays for --resume
                raise
            except BaseException:
                remove_partial(self.name, self._partial, self._checkpoint)
                raise
            remove_partial(self.name, self._partial, self._checkpoint)

    def _publish(self, final: Path) -> None:
        """Check every block of the written file, then give it its name (as a COG if asked)."""
        verify_geotiff(self._partial, self.name)
        if self.cog:
            to_cog(self._partial, final, self._plan.profile, self._plan.compress)
            verify_geotiff(final, self.name)
        else:
            os.replace(self._partial, final)

    def open_rows(self) -> GeoTiffRows:
        plan = self._plan
        return GeoTiffRows(self._partial, plan.profile, plan.domain_out.band_descriptions,
                           plan.tags, self._checkpoint)


class GeoTiffRows:
    """The partial GeoTIFF open in the writer thread; with a checkpoint (resume.py), written in
    whole block rows and checkpointed at the rows it names."""

    def __init__(self, path: Path, profile: dict, descriptions, tags: dict,
                 checkpoint: Checkpoint | None):
        self.path, self.profile, self.checkpoint = path, profile, checkpoint
        self._pending: list | None = None  # (chunk column, block row, its rows, rows filled)
        if checkpoint is not None and checkpoint.start is not None:
            self.dst = self._reopen()
            return
        self.dst = rasterio.open(path, "w", **profile)
        for i, d in enumerate(descriptions):
            if d:
                self.dst.set_band_description(i + 1, d)
        self.dst.colorinterp = colour_interpretation(descriptions)
        self.dst.update_tags(**tags)

    def _reopen(self):
        # GDAL keeps the codec and predictor, not the codec's level
        return rasterio.open(self.path, "r+", **update_options(self.profile))

    def write(self, values: np.ndarray, window: Window) -> None:
        if self.checkpoint is None:
            self.dst.write(values, window=window)
        else:
            self._write_block_rows(values, window)

    def close(self) -> None:
        self.dst.close()

    def _write_block_rows(self, values: np.ndarray, window: Window) -> None:
        """Gather ``values`` into whole block rows; write each one block at a time and, at the
        rows :meth:`Checkpoint.due` names (a function of the grid only), checkpoint.

        Every block is written once, complete and in one call, in the same order in every run,
        so GDAL appends the same bytes in the same order: the file's layout is a function of
        the grid, whatever the timing of the other threads (and of evictions from GDAL's
        shared block cache).
        """
        row0, stop, height = window.row_off, window.row_off + window.height, self.dst.height
        col0, width = window.col_off, window.width
        pending = self._pending
        if pending is None or pending[0] != col0:
            band = row0 // OUT_BLOCK * OUT_BLOCK
            rows = min(OUT_BLOCK, height - band)
            pending = self._pending = [col0, band, np.empty(
                (values.shape[0], rows, width), dtype=values.dtype), row0]
        start = row0
        while start < stop:
            _, band, buf, filled = pending
            if start != filled:
                raise RuntimeError(f"writer: rows {start}.. arrive before {filled}")
            cut = min(stop, band + buf.shape[1])
            buf[:, start - band : cut - band] = values[:, start - row0 : cut - row0]
            pending[3] = start = cut
            if cut == band + buf.shape[1]:  # a whole block row
                for c in range(0, width, OUT_BLOCK):
                    w = min(OUT_BLOCK, width - c)
                    self.dst.write(buf[:, :, c : c + w],
                                   window=Window(col0 + c, band, w, buf.shape[1]))
                if self.checkpoint.due(cut, height, width):
                    self.dst.close()  # the file's directory now lists every block written
                    self.checkpoint.record(self.path, col0, cut)
                    self.dst = self._reopen()
                if cut < height:
                    pending[1:] = [cut, np.empty((values.shape[0], min(OUT_BLOCK, height - cut),
                                                  width), dtype=values.dtype), cut]
                else:
                    self._pending = None  # the chunk is done
