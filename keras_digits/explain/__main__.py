"""`python -m keras_digits.explain`: see keras_digits.explain.cli."""

import sys

from keras_digits.explain.cli import main
from keras_digits.utils.cli import run_cli

sys.exit(run_cli(main))
