"""`python -m keras_digits.tune`."""

import sys

from keras_digits.tune.cli import main
from keras_digits.utils.cli import run_cli

sys.exit(run_cli(main))
