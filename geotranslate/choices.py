"""Names of the choices that several layers share, in a module that imports nothing heavy.

The owners (models/norms.py, models/generators.py, methods/base.py) take their choice lists
and defaults from here, and so does the CLI, which must start without importing torch.
"""

from __future__ import annotations

#: normalization layers of the networks. ``layer``: each pixel's feature vector normalized
#: over its channels (a LayerNorm per pixel, as ConvNeXt and NAFNet use): its output at a
#: pixel depends on that pixel alone, so training chips and prediction tiles of any size see
#: the same normalization and no scene pass is needed; ``instance``: each chip's (or at
#: prediction, a scene sample's) statistics; ``batch``: running statistics; ``none``
NORM_KINDS: tuple[str, ...] = ("layer", "instance", "batch", "none")

#: how decoders double the resolution. ``resize``: nearest-neighbour x2, then a 3x3
#: convolution; ``bilinear``: bilinear x2, then a 3x3 convolution; neither paints a
#: checkerboard (Odena, Dumoulin and Olah 2016); ``transpose``: a stride-2 transposed
#: convolution, whose uneven kernel overlap paints a pattern at the decoder's stride (the
#: papers' networks, and every model file written before ``upsample`` existed). Measured at
#: the default budget (docs/benchmarks.md): nearest is within 0.6 dB of transposed
#: convolutions on DEM -> hillshade, Sen1Floods11 and NAIP, 3.2 dB above bilinear on hillshade;
#: transposed convolutions score 4.5 dB above nearest on SEN12MS-CR and 3 dB on drone
#: DSM -> ortho, with a pattern of 1.6 grey levels on a constant input
UPSAMPLE_KINDS: tuple[str, ...] = ("resize", "bilinear", "transpose")
DEFAULT_UPSAMPLE = "resize"
LEGACY_UPSAMPLE = "transpose"

#: what every method trains its generators with unless told otherwise: instance norm, with a
#: scene pass at prediction (predict/scene.py). No candidate won every real task: instance norm
#: leads DEM -> hillshade by 3.6 dB and more; no norm at all leads drone DSM -> ortho and
#: Sen1Floods11, where the scene pass costs instance norm its tone (docs/benchmarks.md,
#: "Decoders and generator normalization")
DEFAULT_NET_NORM = "instance"
#: pix2pix's dropout rate in its U-Net decoder, which a model file's ``"dropout": true`` means
PIX2PIX_DROPOUT = 0.5
#: the U-Net's default dropout rate (in its decoder blocks next to the innermost; the ResNet
#: has none): pix2pix's. A quarter scored 1.3 dB higher on DEM -> hillshade with one thread
#: but 0.5 dB lower with two (the thread count changes the sums' order and with it the run),
#: and within +-0.9 dB of it on the other tasks: no better beyond the noise. None at all
#: learns more per chip but leans harder on each chip's own statistics, which a scene's do not
#: match at prediction: -4.4 dB on hillshade, +1.6 on SEN12MS-CR (docs/benchmarks.md,
#: "Dropout")
UNET_DROPOUT = PIX2PIX_DROPOUT
#: the discriminators' normalization (the PatchGAN papers')
DEFAULT_D_NORM = "instance"
#: paired methods: iterations with the adversarial term off, then iterations of its ramp
DEFAULT_GAN_WARMUP = 0
DEFAULT_GAN_RAMP = 0

#: adversarial losses (models/losses.py)
GAN_MODES: tuple[str, ...] = ("lsgan", "vanilla", "hinge")
#: autocast precisions (device.py); auto: bf16 where the hardware has it, else fp32
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: translation directions of a trained model; b2a only for methods with two generators
DIRECTIONS: tuple[str, ...] = ("a2b", "b2a")
#: how overlapping prediction tiles are weighted (predict/blend.py)
BLEND_MODES: tuple[str, ...] = ("hann", "linear", "none")
#: where an instance-norm generator takes its statistics at prediction (models/norms.py)
NORM_STATS_MODES: tuple[str, ...] = ("scene", "tile")
