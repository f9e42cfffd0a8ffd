"""``geotranslate export-tiles``; the code lives in the package geotranslate/chips/."""

from geotranslate.chips.export import ExportSummary, export_tiles

__all__ = ["ExportSummary", "export_tiles"]
