"""`python -m keras_digits.tune`."""

import sys

from keras_digits.cli import run_cli
from keras_digits.tune.cli import main

sys.exit(run_cli(main))
