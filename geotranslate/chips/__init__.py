"""The chip stage: rasters cut into training chips (``geotranslate export-tiles``).

sources.py (options, each domain's bands and metadata), grid.py (jobs: a grid per source and
its readers, B warped onto A's grid when paired), split.py (spatial validation), writer.py
(chips, atomic), meta.py (meta.json), index.py (index.gpkg), export.py (export_tiles: the
pass over the windows, its workers, rollback).
"""
