"""`torchrun --nproc-per-node N -m tokenweight.trainer --help`"""

import logging
import os
import sys

from .train import main

code = main()
# After destroy_process_group() Gloo's worker threads can still abort the interpreter's
# teardown (std::terminate on a joinable thread, seen now and then on CPU runs), turning a
# finished run into a SIGABRT. Everything is written and closed by now, so leave without it.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
