"""Training: :func:`train` runs a Pix2Pix or CycleGAN training described by a TrainConfig."""

from geotranslate.train.config import TrainConfig
from geotranslate.train.trainer import train

__all__ = ["TrainConfig", "train"]
