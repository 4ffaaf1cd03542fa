"""`python -m keras_digits.report --run RUN`: (re)write the run's report.html and the results part of its
report.md from what its directory holds, under the run's lock (the page: keras_digits.reporting.html)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from keras_digits.errors import KerasDigitsError
    from keras_digits.reporting.html import write_run_page
    from keras_digits.reporting.result_files import damaged_results
    from keras_digits.utils.io import read_json_object
    from keras_digits.utils.lock import hold

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.report",
        description="(Re)write a finished run's self-contained report.html from its directory.",
    )
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise KerasDigitsError(f"{run} is not a run directory (no config.json)")
    if (run / "metrics.json").exists():
        read_json_object(run / "metrics.json", "run metrics")  # a damaged file is its own error, not "unfinished"
    with hold(run, "run directory"):  # explain, evaluate and train write into it under this lock
        path = write_run_page(run)
        damaged = damaged_results(run)
    for line in damaged:
        print(f"warning: left out of the report, damaged: {run / line}", file=sys.stderr)
    if path is None:
        raise KerasDigitsError(f"{run} has not finished (or diverged): no report; run its train command again")
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    import sys

    from keras_digits.utils.cli import run_cli

    sys.exit(run_cli(main))
