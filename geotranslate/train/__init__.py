"""Training: :func:`train` runs the training a TrainConfig describes (loop.py: the loop,
run.py: the run directory and what is written there, methods/: the update rules)."""

from geotranslate.train.config import TrainConfig
from geotranslate.train.loop import train

__all__ = ["TrainConfig", "train"]
