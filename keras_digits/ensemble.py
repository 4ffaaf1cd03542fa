"""`python -m keras_digits.ensemble --runs DIR DIR ... [--split test]`: average members' softmax outputs.

Each member is scored on the same split, which none of them trained or selected on (test by
default; members must share dataset, data and validation split so that their test sets coincide).
The ensemble's metrics are written in the run metrics format beside each member's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keras_digits.evaluation.ensemble import ensemble_runs
from keras_digits.utils.cli import run_cli
from keras_digits.utils.io import check_output_dir, write_json, write_text
from keras_digits.utils.lock import hold


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_digits.ensemble",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", nargs="+", required=True, help="two or more run directories")
    p.add_argument(
        "--split",
        default="test",
        choices=("test",),
        help="split to score on: test (every member chose its checkpoint on val)",
    )
    p.add_argument("--data-dir", help="override the members' data directory")
    p.add_argument("--out", help="output folder (default: runs/ensemble-<member names>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else Path("runs") / ("ensemble-" + "+".join(Path(r).name for r in args.runs))[:120]
    check_output_dir(out, "--out folder")
    result = ensemble_runs(args.runs, args.split, args.data_dir)
    from keras_digits.reporting.html import ensemble_page

    with hold(out, "ensemble folder"):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", result)
        write_text(out / "report.html", ensemble_page(result, out))
    for m in result["members"]:
        print(f"member {m['run']}: {args.split} accuracy {m['accuracy']:.4f}")
    ens = result[args.split]
    print(
        f"ensemble of {len(result['members'])}: {args.split} accuracy {ens['accuracy']:.4f} "
        f"(loss {ens['loss']:.4f}); metrics in {out / 'metrics.json'}, page {out / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
