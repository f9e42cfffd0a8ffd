"""Geometric augmentation modes: which flips and rotations training may apply to a sample.

Flipping or rotating A and B together is label-preserving only when the mapping does not
depend on directions: a hillshade depends on the sun's azimuth, optical shadows on the sun,
SAR layover and shadow on the look direction. A rotated pair teaches the opposite light and
the network learns the average, so the default is ``none``. Rotations are safe for
rotation-invariant mappings (land-cover style maps, e.g. a classification of surface
materials). A flip is safe when the mapping has no direction across its axis: ``hflip``
for a sun due north or south, ``vflip`` for a sun due east or west, or for SAR that looks
east or west (its look direction survives an up-down flip).

A transform is ``(flip, rotations)``: a horizontal flip (columns reversed) when ``flip``,
then ``rotations`` quarter turns (``numpy.rot90``). The 8 combinations are the 8 symmetries
of the square (the dihedral group D4).
"""

from __future__ import annotations

import numpy as np

#: mode -> what it does (shown by ``train --help``).
AUGMENTS = {
    "none": "geometry kept (direction-dependent mappings: hillshade, shadows, SAR)",
    "hflip": "random left-right flip",
    "vflip": "random up-down flip",
    "rot180": "random half turn",
    "d4": "all 8 flips and 90-degree rotations (rotation-invariant mappings only)",
}
DEFAULT_AUGMENT = "none"
#: what runs made before ``--augment MODE`` did: random flips and 90° rotations (``augment:
#: true`` in their config.json, also the default when the field is absent), or nothing.
LEGACY_AUGMENT = {True: "d4", False: "none"}


def augment_mode(value) -> str:
    """A mode name from a name or a legacy boolean; ValueError for anything else."""
    if isinstance(value, bool):
        return LEGACY_AUGMENT[value]
    if value not in AUGMENTS:
        raise ValueError(f"augment {value!r}: choose from {', '.join(AUGMENTS)}")
    return value


def draw_transform(mode: str, rng: np.random.Generator) -> tuple[bool, int]:
    """One random ``(flip, rotations)`` of ``mode``, each of its transforms equally likely."""
    if mode == "d4":  # the draws of the former augment=True: resumed old runs see the same
        return bool(rng.integers(2)), int(rng.integers(4))
    if mode == "hflip":
        return bool(rng.integers(2)), 0
    if mode == "vflip":  # an up-down flip is a left-right flip then a half turn
        flip = bool(rng.integers(2))
        return flip, 2 if flip else 0
    if mode == "rot180":
        return False, 2 * int(rng.integers(2))
    return False, 0
