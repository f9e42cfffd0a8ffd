"""``python -m geotranslate`` (and ``torchrun -m geotranslate train …`` for several GPUs)."""

import sys

from geotranslate.cli import main

sys.exit(main())
