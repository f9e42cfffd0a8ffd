"""Stream a raster of any size through a generator into a seamless, georeferenced GeoTIFF.

Plan -> pipeline -> output. :func:`predict_raster` (api.py) parses the source once, builds the
plan once (plan.py: tile grid as Windows, overlap, blend, scene statistics, provenance, resume
key, output profile), runs it through the threaded pipeline (pipeline.py) and writes into an
output (output.py: today a resumable GeoTIFF or COG). Many rasters and processes: batch.py.

How it works. The raster (or ``window``) is cut into overlapping square tiles on one grid
(:func:`geotranslate.raster.windows.tile_offsets`, with a margin of ``overlap`` pixels beyond the
edges so that edge pixels lie in well-weighted tile interiors; outside the raster the input is
mirrored). The grid is processed in column chunks of at most :data:`CHUNK_WIDTH` pixels and,
inside a chunk, tile row by tile row:

* a reader thread reads the strip of rows of the next tile row (one read per strip, not per
  tile), mirrors it at the raster edges and normalizes it with the model's statistics;
* the calling thread runs batches of tiles through the generator (``torch.inference_mode``,
  optional bf16/fp16 autocast, channels_last on CUDA); tiles without any valid pixel are
  skipped;
* a blending thread adds each output, weighted by a 2-D blending window, into a float32
  accumulator covering the tile row;
* rows that no later tile touches are divided by their summed weights and handed to a writer
  thread, which de-normalizes, casts and writes them.

The summary reports how long the generator waited for reading and for writing (both near zero
when I/O keeps up). Reader and writer each open their own rasterio dataset (datasets are not
thread-safe). Memory is one accumulator of ``tile_size x CHUNK_WIDTH`` plus a few strips in
flight, whatever the raster's height and width (GDAL's block cache is capped too). Tiles at a
chunk border are computed by both chunks, so the result is exactly that of one pass over the
whole width.

Blending. A tile's outermost ``overlap // 4`` pixels get weight 0: there the network saw its
own padding instead of real neighbours, and a neighbouring tile covers them with real context.
Inside, ``hann`` (default) and ``linear`` windows cross-fade neighbouring tiles; ``none`` gives
each pixel to the tile whose centre is nearest (hard seams, for comparison). With a model
without normalization layers and a tile stride that is a multiple of its total stride, the
blended result equals one forward pass over the whole (mirrored) image.

Tile independence. Instance norm would normalize each tile by its own statistics, so the
result would change with the tiling; by default its layers get the statistics of a bounded
sample of tiles spread over the whole region, computed once before the tiled pass
(:mod:`geotranslate.predict.scene`). The default overlap is the generator's receptive field
(:func:`geotranslate.predict.grid.default_overlap`), so blended pixels saw their whole field.
The output's tags record the normalization statistics, tile size, overlap and receptive field.

Nodata. Pixels invalid in the input (nodata, NaN, alpha 0, masked) are nodata in the output.
The output's nodata is the target domain's nodata; when the domain has none, 0 for unsigned
integers, the dtype's minimum for signed integers and NaN for floats. Valid outputs that would
equal the nodata value are moved one step away from it (e.g. 0 -> 1 for uint16 with nodata 0).

Scaling out. One command handles one part of a raster, so several GPUs or machines split the
work by running the same command with different part options:

* ``--rank R --world-size N`` translates the R-th of N horizontal bands of rows (aligned to the
  output's 256-row blocks) into its own file (default ``<stem>_translated.partRofN.tif``). The
  parts use the whole run's tile grid (tiles straddling a part border are computed by both
  parts), so joined they are exactly the single-process result, seams and all absent;
* ``--window ROW_OFF,COL_OFF,HEIGHT,WIDTH`` translates any rectangle on its own tile grid; tiles
  at its edge read real context from outside it. Use it for an area of interest; to split a
  raster prefer ``--rank``, whose parts need no blending across their borders.

Join the parts with ``gdalbuildvrt out.vrt IN_translated.part*.tif`` (then, if one file is
wanted, ``gdal_translate -of COG out.vrt out.tif``). Many rasters: give each process its own
list of inputs.
"""

from geotranslate.predict.api import PredictSummary, predict_raster

__all__ = ["PredictSummary", "predict_raster"]
