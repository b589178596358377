"""`torchrun --nproc-per-node N -m tokenweight.trainer --help`"""

import sys

from .train import main

sys.exit(main())
