"""Memory a run needs against memory the machine has: refuse what cannot fit, in one line.

A tile size is the one option that makes memory grow without bound (``--tile-size 100000``
asks for tens of GiB per window); export-tiles and predict-raster estimate their working set
for it and call :func:`check_memory` before allocating anything.
"""

from __future__ import annotations

from pathlib import Path

from geotranslate.errors import GeotranslateError

MEMINFO = Path("/proc/meminfo")


def available_memory() -> int | None:
    """Bytes the system can give a new allocation without swapping (MemAvailable); None if
    unknown (no psutil and no /proc/meminfo)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse ``what`` (e.g. ``"--tile-size 100000"``) when ``needed`` bytes exceed the memory
    available now; ``hint`` says what to change."""
    available = available_memory()
    if available is not None and needed > available:
        raise GeotranslateError(
            f"{what}: needs about {format_bytes(needed)} of memory, but {format_bytes(available)} "
            f"is available; {hint}"
        )
