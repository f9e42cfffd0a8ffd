"""RUN_DIR: chosen (``--out``, ``--resume`` or runs/DATASET_TYPE-TIME), kept apart from the
chips and the inputs, pointed at by runs/latest, and cleared of what a failed fresh run added."""

from __future__ import annotations

import contextlib
import os
import shutil
from datetime import datetime
from pathlib import Path

from geotranslate.errors import StorageError
from geotranslate.files import check_output_dir
from geotranslate.train import distributed
from geotranslate.train.checkpoint import checkpoint_path, load_checkpoint
from geotranslate.train.config import TrainConfig


def choose_run_dir(config: TrainConfig, ctx: distributed.DistContext
                    ) -> tuple[Path, dict | None]:
    """RUN_DIR (rank 0 decides, every rank agrees) and, with --resume, its checkpoint."""
    if config.resume:
        run_dir = Path(config.resume)
        _check_separate(run_dir, config.data_dir, config.vgg_weights)
        checkpoint = load_checkpoint(run_dir)
    else:
        checkpoint = None
        run_dir = Path(config.out) if config.out else _default_run_dir(config.dataset_type)
        _check_separate(run_dir, config.data_dir, config.vgg_weights)
        if run_dir.exists() and (
                checkpoint_path(run_dir).parent.exists() or (run_dir / "model.json").exists()):
            raise StorageError(f"{run_dir}: already holds a run; continue it with "
                               "--resume or choose another --out")
    return Path(distributed.broadcast(str(run_dir), ctx)), checkpoint


def _default_run_dir(dataset_type: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{dataset_type}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _check_separate(run_dir: Path, data_dir: str, vgg_weights: str | None = None) -> None:
    """Refuse a run directory that is, holds or lies inside the chip folder, that is a file
    (or under one), or that holds the --vgg-weights file (an input it could write over)."""
    check_output_dir(run_dir, "run directory")
    if vgg_weights and run_dir.resolve() in Path(vgg_weights).resolve().parents:
        raise StorageError(
            f"{vgg_weights}: --vgg-weights lies in the run directory {run_dir}, whose files "
            "the run writes; keep it elsewhere")
    run, data = run_dir.resolve(), Path(data_dir).resolve()
    if run == data or data in run.parents or run in data.parents:
        raise StorageError(
            f"{run_dir}: the run directory would mix with the chips in {data_dir}; "
            "choose an --out outside the chip folder"
        )


def point_latest(run_dir: Path) -> None:
    """Make ``runs/latest`` name the newest run (a LATEST text file where symlinks fail)."""
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink() or not link.exists():
            tmp = run_dir.parent / f".latest.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(run_dir.name, target_is_directory=True)
            os.replace(tmp, link)
            return
    except OSError:
        pass
    (run_dir.parent / "LATEST").write_text(run_dir.name + "\n")


def remove_new(run_dir: Path, before: set[str], existed: bool) -> None:
    """Undo what a failed fresh run created in RUN_DIR (and runs/latest pointing at it)."""
    link = run_dir.parent / "latest"
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link) == run_dir.name:
            link.unlink()
    for name in (set(os.listdir(run_dir)) - before) if run_dir.is_dir() else ():
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    if not existed:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
