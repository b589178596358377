"""Build the demo checkpoint: python examples/demo_model.py DIR"""

import sys

from tokenweight.demo import build_demo_checkpoint

if __name__ == "__main__":
    print(build_demo_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "demo-model"))
