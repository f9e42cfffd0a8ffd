"""Where the networks run and in which precision: one answer for train, predict and evaluate.

``--device auto`` picks CUDA, then Apple MPS, then the CPU. ``--precision auto`` picks bf16 on
a CUDA GPU that supports it and on a CPU with native bf16 instructions (AVX512-BF16 or AMX),
fp32 elsewhere. There bf16 autocast with channels_last trains 1.85x faster than fp32 at the
same quality (DEM -> hillshade, 200 iterations: 16.8 vs 16.5 dB, docs/benchmarks.md), and a
prediction in bf16 lands within 0.1 dB PSNR of the fp32 one (docs/benchmarks.md, issue 18).
``--precision bf16`` on a CPU turns channels_last on.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from geotranslate.choices import PRECISIONS
from geotranslate.errors import GeotranslateError, OptionError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def check_device_name(name: str) -> None:
    """Refuse a name other than auto, cpu, cuda, cuda:N or mps, before any work is done."""
    if name == "auto":
        return
    try:
        device_type = torch.device(name).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a torch device, or a clear error.

    ``local_rank`` (a distributed run) picks this process's GPU for a bare ``cuda``.
    """
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GeotranslateError(
                f"device {name!r}: no CUDA GPU is available on this machine (try --device cpu)"
            )
        if device.index is None:
            index = local_rank if local_rank is not None else torch.cuda.current_device()
            device = torch.device("cuda", index)
        elif local_rank is not None:
            raise OptionError(
                f"device {name!r}: under torchrun give --device cuda, so that each process "
                "takes its own GPU (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if device.index >= torch.cuda.device_count():
            raise GeotranslateError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0"
            )
    if device.type == "mps" and not _mps_available():
        raise GeotranslateError(f"device {name!r}: Apple MPS is not available (try --device cpu)")
    return device


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag).

    Read from ``/proc/cpuinfo``; False where it does not exist (macOS, Windows), which keeps
    fp32 there.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """``auto`` -> bf16 on a bf16-capable CUDA GPU and on a CPU with native bf16; else fp32.
    fp16 is refused off CUDA. (``training`` is kept for callers; both answer alike.)"""
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise OptionError(
            f"--precision fp16 needs a CUDA GPU; use bf16 or fp32 on {device.type}"
        )
    return precision


def default_channels_last(device: torch.device, precision: str) -> bool:
    """channels_last when not asked: on CUDA, and on a CPU in bf16 (oneDNN's fast layout)."""
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A fresh autocast context for a resolved precision (fp32: no autocast at all)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
