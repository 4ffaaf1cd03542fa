"""`python -m keras_digits.evaluate --run DIR [--split test]`: re-score a saved run (the metrics:
keras_digits.evaluation.metrics); with
--dataset/--perturb/--preprocess/--label-map it scores it elsewhere (keras_digits.evaluation.crossdata)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keras_digits.errors import KerasDigitsError
from keras_digits.evaluation.runs import rescore_run
from keras_digits.utils.cli import quiet_retracing_warnings, quiet_tensorflow, run_cli


def build_parser() -> argparse.ArgumentParser:
    from keras_digits.data.adapt import PREPROCESS
    from keras_digits.data.corrupt import LEVELS

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.evaluate",
        description="Re-score a saved run on its own splits, on another dataset (--dataset), or under "
        "corruptions (--perturb).",
        epilog="corruptions (severity 1..5 unless noted): "
        + ", ".join(f"{k}" + ("" if len(v) > 1 else " (one level, colour only)") for k, v in LEVELS.items())
        + "; NAME alone runs every severity, all runs every corruption.",
    )
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
    p.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="split(s) to score (repeatable; default test)",
    )
    p.add_argument("--data-dir", help="override the run's data directory (or the --dataset's)")
    p.add_argument(
        "--dataset",
        help="score on this dataset instead (writes metrics-<dataset>-<data fingerprint>"
        "[-map-<hash>][-digit].json: one file per data, label map and preprocessing)",
    )
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        help="digit-normalise the images first (MNIST-style); auto (the default with --dataset): "
        "digit for models trained on mnist; none is the default otherwise. Given alone, the "
        "run's own split is scored this way into metrics-<dataset>-<fingerprint>[-digit].json",
    )
    p.add_argument(
        "--label-map",
        metavar="FILE.json",
        help='JSON object renaming the dataset\'s labels to the model\'s ({"zero": "0", ...})',
    )
    p.add_argument(
        "--perturb",
        nargs="+",
        metavar="NAME[:SEVERITY]",
        help="score under corruptions (adds rows to robustness-<dataset>-<split>-<fingerprint>"
        "[-digit]-seed<N>.json; progress on stderr)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions (default 0)")
    p.add_argument(
        "--explain",
        metavar="METHOD",
        help="with --perturb/--dataset: also explain a fixed subset with METHOD (e.g. gradcam, ig) and record its "
        "deletion AUC (and a random map's) and, for light digits on black, the relevance on the ink",
    )
    p.add_argument(
        "--explain-n", type=int, default=100, help="images explained per scoring with --explain (default 100)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    quiet_retracing_warnings()  # each corruption and dataset is a new input signature
    splits = list(dict.fromkeys(args.split or ["test"]))
    if args.explain_n != 100 and not args.explain:
        raise KerasDigitsError("--explain-n sets how many images --explain explains; give --explain METHOD too")
    if args.explain and not (args.dataset or args.perturb):
        raise KerasDigitsError("--explain records explanations under shift: give --perturb and/or --dataset")
    if args.dataset or args.perturb or args.preprocess or args.label_map:
        return score_elsewhere_cli(args, splits)
    metrics, path = rescore_run(args.run, splits, args.data_dir)
    if path.name != "metrics.json":
        print(
            f"note: {metrics['source']} is not the data this run was trained and tested on; "
            f"its scores go to {path}, not metrics.json",
            file=sys.stderr,
        )
    for split in splits:
        m = metrics[split]
        auc = "" if m["auc"] is None else f"  auc {m['auc']:.4f}"
        print(f"{split}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['f1']:.4f}{auc}")
    return 0


def score_elsewhere_cli(args, splits: Sequence[str]) -> int:
    from keras_digits.evaluation.crossdata import robustness_markdown, score_elsewhere

    if args.seed < 0:
        raise KerasDigitsError(f"--seed must be 0 or more, got {args.seed}")
    hook = None
    if args.explain:
        from keras_digits.explain.shift import scorer

        if args.explain_n < 1:
            raise KerasDigitsError(f"--explain-n must be 1 or more, got {args.explain_n}")
        hook = scorer(args.explain, args.explain_n, args.seed)
    if len(splits) != 1:
        raise KerasDigitsError("--dataset/--perturb score one split at a time; give one --split")
    # default: auto on another dataset; none for the run's own data (so the clean row is its own score)
    preprocess = args.preprocess or ("auto" if args.dataset else "none")
    result, path = score_elsewhere(
        args.run,
        args.dataset,
        args.data_dir,
        splits[0],
        preprocess,
        args.label_map,
        args.perturb,
        args.seed,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        explain_hook=hook,
    )
    what = f"{result['dataset']} {splits[0]} ({result['preprocess']} preprocessing)"
    if "rows" in result:
        print(f"robustness on {what}, {result['n']} images:\n{robustness_markdown(result)}")
    else:
        m = result[splits[0]]
        print(f"{what}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  macro-F1 {m['f1']:.4f}")
        e = m.get("explain")
        if e:
            ink = f"  ink relevance {e['ink_relevance']:.4f}" if e.get("ink_relevance") is not None else ""
            print(
                f"{e['method']} on {e['n']} images: deletion AUC {e['deletion_auc']:.4f} "
                f"(random map {e['deletion_auc_random']:.4f}){ink}"
            )
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
