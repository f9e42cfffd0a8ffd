"""The chip stage: rasters cut into training chips (``geotranslate export-tiles``).

sources.py (options, each domain's bands and metadata), checks.py (the checks before anything
is written: --workers, --out, inputs among the outputs, memory), grid.py (jobs: a grid per
source and its readers, B warped onto A's grid when paired), reader.py (windows read in worker
threads, in order), band_stats.py (band and scene statistics), split.py (spatial validation),
writer.py (chips, atomic, written in threads with rollback), meta.py (meta.json), index.py
(index.gpkg), summary.py (what a run did), export.py (export_tiles: its steps and the pass
over the windows).
"""
