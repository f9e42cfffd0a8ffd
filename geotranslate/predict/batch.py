"""Many rasters, many processes: ``predict-raster IN... --out-dir DIR``.

Every input gets one output in ``DIR`` named ``<stem>_translated.tif`` (two inputs with the same
stem are refused before anything runs). Inputs are paths or GDAL dataset names
(``/vsis3/...``, URLs).

Several processes (``torchrun``: RANK and WORLD_SIZE from the environment; a job array:
``--rank $SLURM_ARRAY_TASK_ID --world-size N``) share the work: every process makes the same
list of work units and takes every N-th. A unit is a whole input, or, for an input of at least
``split_pixels`` pixels, one of N bands of its rows (``predict_raster``'s ``rank``, on the
whole raster's tile grid). The parts of a split input are written to
``DIR/<stem>_translated.parts/``; each part leaves a done-marker, and the process that
completes the set joins them into ``DIR/<stem>_translated.vrt`` (and with ``cog``, one COG
``<stem>_translated.tif``), so the result has no gaps or doubled rows and equals a single
process's output. ``mosaic``: a VRT of all outputs, written by the process that finishes last.

An input that fails (unreadable, wrong band count, ...) is reported in one line; the others
go on, and the result lists the failures (the CLI then exits with status 1).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import unescape

from geotranslate.errors import GeotranslateError, OptionError, StorageError
from geotranslate.files import (
    atomic_path,
    check_file_output,
    check_not_input,
    check_output_dir,
    display_path,
    make_output_dir,
    resolved_path,
)
from geotranslate.log import logger
from geotranslate.modelfile import TranslationModel, load_model
from geotranslate.predict.api import PredictSummary, predict_raster
from geotranslate.predict.grid import OUT_BLOCK
from geotranslate.predict.output import to_cog
from geotranslate.raster.io import open_raster
from geotranslate.raster.sources import RasterSource, input_files, parse_source, safe_name
from geotranslate.raster.vrt import write_vrt

#: inputs of at least this many pixels are split over the processes by row bands.
SPLIT_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class WorkUnit:
    """One input, or one band of rows of it (``part`` of ``parts``)."""

    input: str
    #: parsed once (raster/sources.py); a name that cannot be parsed keeps its error, which
    #: the unit reports when it runs
    source: RasterSource | GeotranslateError
    output: Path  # the final output: the GeoTIFF, or for a split input its VRT
    part: int | None = None
    parts: int = 1


@dataclass
class BatchResult:
    """What this process did: its summaries, its failures (input, message), joined files."""

    summaries: list[PredictSummary] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    joined: list[Path] = field(default_factory=list)
    mosaic: Path | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        mpx = sum(s.width * s.height for s in self.summaries) / 1e6
        rate = mpx / max(self.seconds, 1e-9)
        text = (f"{len(self.summaries)} raster(s) or part(s) translated ({mpx:.1f} Mpx in "
                f"{self.seconds:.1f} s, {rate:.2f} Mpx/s)")
        if self.skipped:
            text += f", {len(self.skipped)} already done"
        if self.joined:
            text += f", {len(self.joined)} joined"
        return text + f", {len(self.failed)} failed"


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``rank`` / ``world_size`` as given, else RANK / WORLD_SIZE (torchrun), else 0 / 1."""
    if rank is None and world_size in (None, 1):
        env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if env_world is not None:
            try:
                rank, world_size = int(env_rank or 0), int(env_world)
            except ValueError:
                raise OptionError(
                    f"RANK={env_rank!r} / WORLD_SIZE={env_world!r}: expected integers") from None
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(f"rank {rank} / world size {world_size}: need 0 <= rank < size")
    return rank, world_size


def parse_input(name: str) -> RasterSource | GeotranslateError:
    """An input parsed (raster/sources.py), or the error that says why it cannot be."""
    try:
        return parse_source(name)
    except GeotranslateError as e:  # reported when its unit runs
        return e


def output_stem(name: str, source: RasterSource | GeotranslateError) -> str:
    """The stem of an input (a path, URL, GDAL name or band-file stack: raster/sources.py)."""
    if isinstance(source, RasterSource):
        return source.stem
    last = str(name).rstrip("/").replace("\\", "/").split("/")[-1].split("?")[0]
    return safe_name(Path(last).stem)


def plan_units(inputs: list[str], out_dir: Path, world_size: int,
               split_pixels: int = SPLIT_PIXELS) -> list[WorkUnit]:
    """Every process's work, in one order: whole inputs, and big inputs by row bands; each
    input parsed once."""
    sources = [(name, parse_input(name)) for name in inputs]
    seen: dict[str, str] = {}
    for name, source in sources:
        stem = output_stem(name, source)
        if stem in seen:
            raise OptionError(
                f"{name} and {seen[stem]}: both would be written to {stem}_translated.tif in "
                f"{out_dir}; rename one or run them into different --out-dir")
        seen[stem] = name
    units = []
    for name, source in sources:
        stem = output_stem(name, source)
        parts = 1
        if world_size > 1 and isinstance(source, RasterSource):
            with contextlib.suppress(GeotranslateError):  # unreadable: fails as a unit later
                with open_raster(source, allow_no_crs=True) as ds:
                    if ds.width * ds.height >= split_pixels:
                        parts = min(world_size, math.ceil(ds.height / OUT_BLOCK))
        if parts > 1:
            vrt = out_dir / f"{stem}_translated.vrt"
            units += [WorkUnit(name, source, vrt, p, parts) for p in range(parts)]
        else:
            units.append(WorkUnit(name, source, out_dir / f"{stem}_translated.tif"))
    return units


def _echo(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _part_path(unit: WorkUnit) -> Path:
    folder = unit.output.with_suffix(".parts")
    return folder / f"part{unit.part}of{unit.parts}.tif"


def _complete_set(folder: Path, marker: str, count: int) -> bool:
    """Mark ``marker`` done; True for the one process that completes the set of ``count``."""
    (folder / f"{marker}.done").write_text(str(os.getpid()))
    if len(list(folder.glob("*.done"))) < count:
        return False
    try:
        fd = os.open(folder / "join.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False  # another process completed it at the same moment and joins
    os.close(fd)
    return True


def _join(unit: WorkUnit, cog: bool, overwrite: bool) -> Path:
    """Join a split input's parts into its VRT (and COG); the parts stay for the VRT."""
    folder = _part_path(unit).parent
    parts = [folder / f"part{p}of{unit.parts}.tif" for p in range(unit.parts)]
    import rasterio

    with rasterio.open(parts[0]) as ds:
        tags = ds.tags()
    write_vrt(parts, unit.output, tags=tags, overwrite=overwrite)
    for marker in [*folder.glob("*.done"), folder / "join.lock"]:
        marker.unlink(missing_ok=True)
    if cog:
        cog_out = unit.output.with_suffix(".tif")
        with atomic_path(cog_out, overwrite=overwrite) as tmp:
            to_cog(unit.output, tmp, {})
        return cog_out
    return unit.output


def predict_rasters(
    inputs: list[str | os.PathLike],
    model: TranslationModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mosaic: str | os.PathLike | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    split_pixels: int = SPLIT_PIXELS,
    cog: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    device: str = "auto",
    echo=None,
    **options,
) -> BatchResult:
    """Translate every input into ``out_dir``; this process's share when several run.

    ``options`` go to :func:`predict_raster` (direction, tile_size, overlap, blend, ...).
    With ``resume``, outputs that exist are kept (done by an earlier run) and partial ones
    continue.
    """
    started = time.perf_counter()
    rank, world_size = resolve_rank(rank, world_size)
    if split_pixels < 1:
        raise OptionError(f"split size {split_pixels} px: must be positive "
                          "(--split-mpx above 0)")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "--out-dir")
    inputs = [os.fspath(i) for i in inputs]
    if not inputs:
        raise OptionError("no input rasters given")
    units = plan_units(inputs, out_dir, world_size, split_pixels)
    if mosaic is not None:
        check_file_output(mosaic)  # "DIR/" names a directory: before Path drops the slash
        mosaic = Path(mosaic)
    _check_outputs(units, mosaic, model, cog)
    replace_mosaic = _check_mosaic(mosaic, out_dir, units, overwrite, resume)
    make_output_dir(out_dir, "--out-dir")  # only once every check passed
    if isinstance(model, (str, os.PathLike)):
        from geotranslate.device import resolve_device

        model = load_model(model, device=resolve_device(device))
    echo = echo or _echo
    result = BatchResult()
    who = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    for unit in units[rank::world_size]:
        _run_unit(unit, model, result, echo, who, cog=cog, overwrite=overwrite, resume=resume,
                  options={**options, "device": device})
    if mosaic is not None:
        result.mosaic = _mosaic(units, mosaic, rank, world_size, echo, replace_mosaic)
    result.seconds = time.perf_counter() - started
    return result


def _run_unit(unit: WorkUnit, model: TranslationModel, result: BatchResult, echo, who: str, *,
              cog: bool, overwrite: bool, resume: bool, options: dict) -> None:
    """Translate one unit into ``result`` (with ``resume``, an output that exists is kept);
    the process that finishes a split input's last part joins its parts."""
    final = unit.output if unit.part is None else _part_path(unit)
    if unit.part is not None:
        final.parent.mkdir(exist_ok=True)
    if resume and final.exists():
        result.skipped.append(unit.input)
        echo(f"{who}{display_path(final)}: exists, kept")
    else:
        try:
            if isinstance(unit.source, GeotranslateError):
                raise unit.source
            summary = predict_raster(
                unit.source, model, final, rank=unit.part, world_size=unit.parts,
                cog=cog and unit.part is None, overwrite=overwrite, resume=resume, **options)
        except GeotranslateError as e:
            result.failed.append((unit.input, str(e)))
            echo(f"geotranslate: error: {e}", err=True)
            return
        result.summaries.append(summary)
        echo(f"{who}{summary}")
    if unit.part is not None and _complete_set(final.parent, final.stem, unit.parts):
        joined = _join(unit, cog, overwrite)
        result.joined.append(joined)
        echo(f"{who}joined {unit.parts} parts of {unit.input} into {joined}")


def _check_outputs(units: list[WorkUnit], mosaic: Path | None, model, cog: bool) -> None:
    """Before any work: no output (a raster, a split input's parts, VRT and COG, the mosaic)
    may be an input (any file of a ``stack:`` or STAC item, the model), with or without
    --overwrite; nor may the mosaic be one of the outputs."""
    from geotranslate.modelfile import model_files

    files = []
    for unit in units:
        if unit.part in (None, 0):  # each input once
            # an input that cannot be parsed fails as a unit; its own name still counts
            files += (input_files([unit.source]) if isinstance(unit.source, RasterSource)
                      else [Path(unit.input)])
    if isinstance(model, (str, os.PathLike)):
        files += model_files(model)
    outputs = []
    for unit in units:
        outputs.append(unit.output)
        if unit.part is not None:
            outputs.append(_part_path(unit))
            if cog:
                outputs.append(unit.output.with_suffix(".tif"))
    for out in dict.fromkeys(outputs):
        check_not_input(out, files)
    if mosaic is not None:
        check_not_input(mosaic, files, "--mosaic")
        if resolved_path(mosaic) in {resolved_path(out) for out in outputs}:
            raise StorageError(f"{mosaic}: --mosaic would overwrite one of the outputs; "
                               "choose another name")


def _check_mosaic(mosaic: Path | None, out_dir: Path, units, overwrite: bool,
                  resume: bool) -> bool:
    """Check where the mosaic goes, before any work; whether an existing file may be replaced
    (--overwrite, or --resume over a VRT mosaic of the same outputs)."""
    if mosaic is None:
        return False
    parent = mosaic.parent if str(mosaic.parent) else Path(".")
    if resolved_path(parent) == resolved_path(out_dir) and not out_dir.exists():
        return False  # in the --out-dir this run creates
    if not parent.is_dir():
        raise StorageError(f"{parent}: --mosaic's directory does not exist")
    if not os.access(parent, os.W_OK):
        raise StorageError(f"{parent}: --mosaic's directory is not writable")
    if not mosaic.exists() or overwrite:
        return overwrite
    if resume and _is_mosaic_of(mosaic, units):
        return True  # this command's own mosaic, written again
    raise StorageError(f"{mosaic}: already exists (pass --overwrite to replace it)")


def _is_mosaic_of(path: Path, units) -> bool:
    """Whether ``path`` is a VRT whose sources are all outputs of ``units``."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if not head.lstrip().startswith(b"<VRTDataset"):
        return False
    names = re.findall(rb"<SourceFilename[^>]*>([^<]+)</SourceFilename>", head)
    outputs = {unit.output.resolve() for unit in units}
    return bool(names) and all(
        (path.parent / unescape(n.decode("utf-8", "surrogateescape"))).resolve() in outputs
        for n in names)


def _mosaic(units, mosaic: Path, rank, world_size, echo, replace: bool) -> Path | None:
    """The mosaic VRT of all outputs, by the process that finishes last."""
    folder = mosaic.with_name(f".{mosaic.name}.ranks")
    folder.mkdir(exist_ok=True)
    if not _complete_set(folder, f"rank{rank}of{world_size}", world_size):
        return None
    outputs = []
    for unit in units:
        if unit.output not in outputs:
            outputs.append(unit.output)
    present = [p for p in outputs if p.exists()]
    shutil.rmtree(folder, ignore_errors=True)
    if len(present) < len(outputs):
        missing = ", ".join(p.name for p in outputs if not p.exists())
        logger.warning(f"{mosaic}: leaves out what failed ({missing})")
    if not present:
        raise GeotranslateError(f"{mosaic}: no outputs to join")
    write_vrt(present, mosaic, overwrite=replace)
    echo(f"wrote mosaic {mosaic} of {len(present)} raster(s)")
    return mosaic
