"""`python -m keras_digits.explain`: see keras_digits.explain.cli."""

import sys

from keras_digits.cli import run_cli
from keras_digits.explain.cli import main

sys.exit(run_cli(main))
