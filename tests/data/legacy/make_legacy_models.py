"""Writes the model files of tests/test_legacy_models.py with the geotranslate of the time.

Run once with geotranslate at commit 4e86480 (before ``--upsample`` and ``--net-norm layer``),
from a checkout of that commit: ``PYTHONPATH=<that checkout> python make_legacy_models.py``.
It writes, beside itself: ``input.tif`` (a 2-band float32 raster), a Pix2Pix U-Net model and
a CycleGAN ResNet model (both with transposed-convolution decoders and instance norm, trained
for a few iterations on chips of the input), and each model's prediction of the input
(``<name>_prediction.tif``, fp32, the default tile size and scene statistics). The test loads
the models with today's code and checks that its predictions equal these, bit for bit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent


def write(path: Path, data: np.ndarray) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name, "crs": "EPSG:32633",
               "transform": from_origin(500000.0, 5300000.0, 10.0, 10.0), "nodata": None}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def main() -> None:
    import torch

    from geotranslate.chips.export import export_tiles
    from geotranslate.predict import predict_raster
    from geotranslate.train import TrainConfig, train

    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:96, 0:96]
    a = np.stack([np.sin(rows / 9.0) + 0.3 * rng.standard_normal((96, 96)),
                  np.cos(cols / 7.0) + 0.3 * rng.standard_normal((96, 96))]).astype("float32")
    b = np.stack([a[0] * 40 + a[1] * 10 + 100, a[1] * 25 + 60]).astype("float32")
    src_a, src_b = write(HERE / "input.tif", a), write(Path(tempfile.mkdtemp()) / "b.tif", b)
    work = Path(tempfile.mkdtemp())
    export_tiles([src_a], [src_b], work / "chips", tile_size=32, progress=False)
    for name, method, extra in [("pix2pix_unet", "Pix2Pix", {}),
                                ("cyclegan_resnet", "CycleGAN", {"n_blocks": 1})]:
        config = TrainConfig(method, data_dir=str(work / "chips"), out=str(work / name),
                             ngf=4, ndf=4, max_steps=3, preview=False, progress=False,
                             tensorboard=False, precision="fp32", augment="none", **extra)
        run = train(config)
        dst = HERE / name
        dst.mkdir(exist_ok=True)
        for f in ("model.json", "model.safetensors"):
            shutil.copy(run / f, dst / f)
        predict_raster(src_a, dst, HERE / f"{name}_prediction.tif", device="cpu",
                       precision="fp32", progress=False, overwrite=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
