"""Where a prediction came from: the output GeoTIFF's tags.

The tags say which model (the SHA-256 of the generator's weights), of which dataset type, in
which direction, with which normalization and tiling, and which geotranslate wrote a file, so a
translated raster found in an archive can be traced back (``gdalinfo`` shows them).
"""

from __future__ import annotations

from geotranslate import __version__


def provenance_tags(model, direction: str, source_name: str, *, digest: str, tile: int,
                    overlap: int, blend: str) -> dict[str, str]:
    """The GEOTRANSLATE_* tags of an output GeoTIFF."""
    source, target = model.source_domain(direction), model.target_domain(direction)
    return {
        "GEOTRANSLATE_SOURCE": source_name,
        "GEOTRANSLATE_DIRECTION": direction,
        "GEOTRANSLATE_DATASET_TYPE": model.dataset_type,
        "GEOTRANSLATE_WEIGHTS_SHA256": digest,
        "GEOTRANSLATE_NORMALIZATION": (
            f"input {source.normalizer.method}, output {target.normalizer.method}"),
        "GEOTRANSLATE_TILING": f"tile {tile} px, overlap {overlap} px, {blend} blend",
        "GEOTRANSLATE_VERSION": __version__,
    }
