"""``RUN_DIR/checkpoints/last.pt``: everything needed to continue a run, loadable without pickle.

Only tensors and plain Python types go in, so ``torch.load(weights_only=True)`` reads it; it
is written to a temporary name and renamed, so a crash mid-write keeps the previous one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from geotranslate import schema as sc
from geotranslate.errors import InputError, StorageError, first_line
from geotranslate.files import atomic_path, write_failed

FORMAT = "geotranslate-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"

_TENSOR = sc.Type(torch.Tensor, "a tensor")
#: one entry per optimizer group of the method: "g" (generators), "d" (critics) where it has them
_PAIR = sc.Map(sc.Obj(), keys=("g", "d"), min_len=1)
#: what resuming reads of a checkpoint (other keys are allowed)
CHECKPOINT_SCHEMA = sc.Obj({
    "nets": sc.Map(sc.Map(_TENSOR), min_len=1),
    "optimizers": _PAIR,
    "schedulers": _PAIR,
    "pools": sc.Map(sc.Obj()),
    "specs": sc.Obj(),
    "epoch": sc.Int(min=0),
    "epoch_batch": sc.Int(min=0),
    "iteration": sc.Int(min=0),
    "rng": sc.Obj({
        "torch": _TENSOR,
        "numpy": sc.Obj({"keys": _TENSOR, "pos": sc.Int(), "has_gauss": sc.Int(),
                         "cached_gaussian": sc.Num()}),
        "python": sc.Obj({"version": sc.Int(), "state": sc.List(sc.Int(), 1),
                          "gauss_next": sc.Opt(sc.Num())}),
    }, optional={"cuda": sc.List(_TENSOR)}),
}, optional={"elapsed_s": sc.Num(min=0), "last_losses": sc.Map(sc.Num(finite=False)),
             "scaler": sc.Opt(sc.Obj()),
             # the best validation so far (model selection, --patience); "units" of its
             # PSNR: absent in checkpoints of earlier versions (the model's [-1, 1] units)
             "best": sc.Obj({"psnr": sc.Num(), "epoch": sc.Int(min=1),
                             "generators": sc.Map(sc.Map(_TENSOR), min_len=1)},
                            optional={"units": sc.Str()})})


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_NAME


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }


def set_rng_state(state: dict, source: str | Path = f"{CHECKPOINT_DIR}/{LAST_NAME}") -> None:
    """Restore :func:`rng_state`; a state that does not fit (``source``'s) is one line."""
    try:
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{source}: damaged random-number state ({first_line(e)})") \
            from None


def save_checkpoint(state: dict, run_dir: str | Path) -> Path:
    """Write ``state`` (tensors and plain types only) atomically to checkpoints/last.pt."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
        except RuntimeError as e:  # torch's zip writer turns a full disk into "unexpected pos"
            raise write_failed(path, first_line(e)) from None
    return path


def load_checkpoint(run_dir: str | Path) -> dict:
    """Read checkpoints/last.pt of a run, refusing a missing, corrupt or foreign file."""
    path = checkpoint_path(run_dir)
    if not Path(run_dir).is_dir():
        raise StorageError(f"{run_dir}: no such run directory to resume")
    if not path.exists():
        raise StorageError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle stream
        raise InputError(f"{path}: corrupt checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a geotranslate checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format version {state.get('format_version')} is not supported"
        )
    sc.validate(state, CHECKPOINT_SCHEMA, path)
    return state
