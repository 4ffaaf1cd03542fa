"""`python -m keras_digits.explain --run RUN`: explain a trained run's predictions; `--model FILE --images PATH`:
explain any Keras 3 image classifier (a .keras/.h5 file or a SavedModel folder) on image files.

Writes to RUN/explain/ (or --out DIR; with --model, default ./explain-<model name>), replacing it as a whole
once everything succeeded (when that path is a symbolic link, the folder it points to is replaced and the
link kept):

    <method>.npy   (N, H, W) float32 maps at the input resolution (signed for ig/ig_blur/occlusion)
    inputs.npz     the images as the model saw them (uint8), true labels (-1 for files), predictions,
                   confidences, targets, contrasts
    grid.png       rows = images, columns = the input and each method's overlay
    explain.json   methods, target layer, targets, options, timings, and the --metrics / --sanity results

RUN/report.html gains an "Explanations" section when the output is RUN/explain.
Image files (--images) are read and fitted to the model as `predict` does, with the same --preprocess
(default auto: digit-normalised for models trained on MNIST-style centred digits); the grid shows
that input. Exit codes: 0 done; 1 done but some image files were skipped (named on stderr); 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.data.adapt import PREPROCESS, PREPROCESS_HELP, wants_digit
from keras_digits.errors import KerasDigitsError
from keras_digits.explain import METHODS, parse_methods
from keras_digits.explain.scorecard import METRICS, parse_metrics
from keras_digits.explain.session import check_out, output_folder, run_methods, write_outputs
from keras_digits.utils.cli import non_negative_int, positive_int, quiet_retracing_warnings, run_cli

EPILOG = (
    "methods:\n"
    + "\n".join(f"  {k:<15} {v[2]}" for k, v in METHODS.items())
    + "\n\nmetrics (--metrics LIST, default all):\n"
    + "\n".join(f"  {k:<15} {v}" for k, v in METRICS.items())
    + """

examples:
  python -m keras_digits.explain --run runs/simple_cnn-mnist --method gradcam,ig --n 8
  python -m keras_digits.explain --run RUN --errors --n 12 --metrics --sanity
  python -m keras_digits.explain --run RUN --images my_digits/ --target 4 --contrast 9
  python -m keras_digits.explain --model model.keras --images photos/ --input-range 0,1 --metrics
"""
)


BACKGROUND = 32  # training images GradientSHAP draws its baselines from


def value_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0,255 or 0,1 or -1,1; got {text!r}") from None
    if not high > low:
        raise argparse.ArgumentTypeError(f"LOW must be below HIGH, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    from keras_digits.utils.cli import positive_float

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.explain",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain a trained run's predictions, or any Keras 3 image classifier's: attribution maps "
        "per method, a PNG grid, metrics of their quality and sanity checks.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory written by keras_digits.train")
    which.add_argument(
        "--model",
        metavar="FILE_OR_DIR",
        help="any Keras 3 image classifier: a .keras or .h5 file, or a SavedModel folder (needs --images)",
    )
    p.add_argument("--method", default="all", help="comma-separated methods, or all (default: all)")
    what = p.add_argument_group("which images")
    what.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to draw from (default test)"
    )
    what.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help="images to explain (default 16; with --per-class: per class, default 1)",
    )
    what.add_argument("--per-class", action="store_true", help="the first --n images of each class")
    what.add_argument("--errors", action="store_true", help="the --n most confident mistakes")
    what.add_argument(
        "--images",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="explain these image files instead (folders searched; unreadable files skipped; "
        "all of them, or the first --n when given)",
    )
    what.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="auto",
        help="--images only, as in predict: "
        + PREPROCESS_HELP.split("; never applied")[0]
        + "; split images are used as stored",
    )
    what.add_argument("--data-dir", help="override the run's data directory")
    what.add_argument(
        "--input-range",
        type=value_range,
        default=(0.0, 255.0),
        metavar="LOW,HIGH",
        help="--model: the pixel range the model takes (0,255 default; 0,1 or -1,1 for models that "
        "normalise outside); image files are scaled into it and black is LOW",
    )
    what.add_argument(
        "--head",
        choices=("auto", "probabilities", "logits"),
        default="auto",
        help="what the model outputs (auto: from its last layer, or from its outputs when that is opaque)",
    )
    tgt = p.add_argument_group("what to explain")
    tgt.add_argument("--target", default="pred", help="pred (default), true, or a class (index or label name)")
    tgt.add_argument("--contrast", metavar="CLASS", help="explain target minus CLASS: 'why a 4 rather than a 9'")
    tgt.add_argument(
        "--layer", help="target layer of the CAM methods (default: found automatically; a nested layer is base/NAME)"
    )
    opt = p.add_argument_group("method settings")
    opt.add_argument("--batch-size", type=positive_int, default=64, help="model inputs per call (default 64)")
    opt.add_argument("--steps", type=positive_int, default=32, help="Integrated Gradients path steps (default 32)")
    opt.add_argument("--samples", type=positive_int, default=25, help="SmoothGrad noisy copies (default 25)")
    opt.add_argument(
        "--noise",
        type=positive_float,
        default=0.15,
        help="SmoothGrad & co. noise std, a fraction of the input range (default 0.15)",
    )
    opt.add_argument("--masks", type=positive_int, default=1000, help="RISE masks (default 1000)")
    opt.add_argument("--patch", type=positive_int, help="occlusion patch side (default: image side / 7)")
    opt.add_argument("--stride", type=positive_int, help="occlusion stride (default: patch / 2)")
    opt.add_argument(
        "--scorecam-channels",
        type=non_negative_int,
        default=256,
        help="Score-CAM channels, highest variance first; 0 = all (default 256)",
    )
    opt.add_argument("--segments", type=positive_int, default=50, help="LIME/KernelSHAP superpixels (default 50)")
    opt.add_argument(
        "--coalitions",
        type=positive_int,
        default=1000,
        help="LIME/KernelSHAP perturbed images per image (default 1000)",
    )
    opt.add_argument("--seed", type=non_negative_int, default=0, help="seed of noise, masks and tie-breaks (default 0)")
    chk = p.add_argument_group("can the explanation be trusted?")
    chk.add_argument(
        "--metrics",
        nargs="?",
        const="all",
        metavar="LIST",
        help="score the methods: all (the default when given alone) or a comma-separated list of " + ", ".join(METRICS),
    )
    chk.add_argument(
        "--metrics-n",
        type=positive_int,
        default=100,
        help="images of the split for --metrics (a fixed subset; default 100); with --model the --images are used",
    )
    chk.add_argument(
        "--sensitivity-n",
        type=positive_int,
        default=8,
        help="images re-explained 5 times each for max-sensitivity (default 8)",
    )
    chk.add_argument("--sanity", action="store_true", help="model-parameter randomization test (Adebayo et al.)")
    chk.add_argument("--sanity-n", type=positive_int, default=8, help="images for --sanity (default 8)")
    chk.add_argument(
        "--sanity-steps", type=positive_int, default=6, help="points of the top-down randomization cascade (default 6)"
    )
    p.add_argument(
        "--out",
        help="output folder (default RUN/explain, the one RUN/report.html shows; with --model ./explain-<name>)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress or per-method lines")
    return p


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from keras_digits.serving.predictor import Progress

    return lambda label, total: Progress(total, label=label)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_retracing_warnings()  # every method, batch and image size traces the model anew
    methods = parse_methods(args.method)
    every = any(m.strip().lower() == "all" for m in args.method.split(","))
    which = parse_metrics(args.metrics) if args.metrics else []
    if args.per_class and args.errors:  # the one check: select.from_split takes a single mode
        raise KerasDigitsError("--per-class and --errors cannot be combined; choose one")
    if args.images and (args.per_class or args.errors):
        raise KerasDigitsError("--per-class and --errors choose images from a split; not with --images")
    if args.model and not args.images:
        raise KerasDigitsError("--model explains image files: give them with --images FILE_OR_DIR ...")
    if args.run and args.input_range != (0.0, 255.0):
        raise KerasDigitsError("--input-range is for --model; this package's runs take 0..255 pixels")
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, file=sys.stderr))

    from keras_digits.utils.lock import hold

    if args.model:
        from keras_digits.explain.loading import load_model

        model_path = Path(args.model)
        model, labels = load_model(model_path)
        default = Path(f"explain-{model_path.stem or model_path.resolve().name}")
        out = output_folder(Path(args.out) if args.out else default)
        check_out(out, model_path, default)
        with hold(out, "output folder"):
            return explain_model(args, methods, every, which, model_path, model, labels, out, say)

    from keras_digits.evaluation.runs import load_run

    run_dir = Path(args.run)
    cfg_dict, model = load_run(run_dir)
    out = output_folder(Path(args.out) if args.out else run_dir / "explain")
    check_out(out, run_dir, run_dir / "explain")
    own = out.resolve() == (run_dir / "explain").resolve()  # RUN/explain feeds the run's page
    with hold(run_dir, "run directory") if own else hold(out, "output folder"):
        return explain_run(args, methods, every, which, run_dir, cfg_dict, model, out, own, say)


def make_explainer(args, model, methods: list[str], every: bool, say, background=None):
    """(Explainer, the methods it can run): CAM methods are dropped from `all` for a model without a spatial
    map and refused when named; DeepLIFT's approximations are noted."""
    from keras_digits.explain.api import applicable
    from keras_digits.explain.core import Explainer
    from keras_digits.explain.session import options_from

    ex = Explainer(model, args.layer, options_from(args, background))
    ex.progress = _progress(args.quiet)
    methods, notes = applicable(ex, methods, every)
    for note in notes:
        say(f"note: {note}")
    return ex, methods


def method_notes(model, methods: Sequence[str]) -> list[str]:
    if "deeplift" not in methods:
        return []
    from keras_digits.explain.modified import linear_check

    approximate = linear_check(model)
    if not approximate:
        return []
    return [
        "deeplift: these layers pass their plain gradient, so its attributions add up to the score change only "
        "approximately: " + ", ".join(approximate[:8]) + (" ..." if len(approximate) > 8 else "")
    ]


def base_result(args, ex, methods, sel, probs, preds, t, c, plain, timings) -> dict:
    from keras_digits.explain.perturbation import occlusion_geometry

    options = {k: getattr(ex.options, k) for k in ex.options.__dataclass_fields__ if k != "background"}
    options["value_range"] = list(options["value_range"])
    return {
        "methods": list(methods),
        "layer": None
        if ex.layer is None
        else {
            "path": ex.layer.path,
            "shape": list(ex.layer.shape),
            "chosen": "--layer" if args.layer else "automatically",
        },
        "logits": ex.head_kind,
        "images": sel.how,
        "notes": [{"file": f, "note": note} for f, note in sel.notes],
        "contrast_dropped": plain,
        "rows": [
            {
                "name": sel.names[i],
                "label": int(sel.labels[i]),
                "pred": int(preds[i]),
                "confidence": float(probs[i, preds[i]]),
                "target": int(t[i]),
                "contrast": int(c[i]),
            }
            for i in range(len(sel.x))
        ],
        "options": {**options, **dict(zip(("patch", "stride"), occlusion_geometry(ex)[:2]))},
        "timings": timings,
        "files": {m: f"{m}.npy" for m in methods},
        "grid": "grid.png",
        "skipped": [{"file": f, "reason": why} for f, why in sel.skipped],
    }


def targets_for(args, sel, preds, label_names):
    from keras_digits.explain import select

    t, c = select.targets(args.target, args.contrast, sel, preds, label_names)
    plain = [sel.names[i] for i in np.flatnonzero(c < 0)] if args.contrast is not None else []
    if plain:
        print(
            f"note: --contrast {args.contrast}: {len(plain)} image(s) whose target is that class itself are "
            f"explained without the contrast (contrast -1 in explain.json): {', '.join(plain[:5])}"
            + (" ..." if len(plain) > 5 else ""),
            file=sys.stderr,
        )
    return t, c, plain


def read_files(args, ex, digit: bool):
    from keras_digits.explain import select
    from keras_digits.serving.predictor import print_read_notes

    sel = select.from_files(args.images, ex.input_shape, limit=args.n, digit=digit)
    for f, why in sel.skipped:
        print(f"skipped {f}: {why}", file=sys.stderr)
    print_read_notes(sel.notes, sel.inkless)
    return sel


def explain_model(args, methods, every, which, model_path, model, labels, out, say) -> int:
    """--model: any Keras 3 classifier, on image files scaled into --input-range."""
    from keras_digits.explain.session import run_metrics, run_sanity

    ex, methods = make_explainer(args, model, methods, every, say)
    sel = read_files(args, ex, digit=args.preprocess == "digit")
    x = (ex.low + sel.x.astype(np.float32) / 255.0 * ex.span).astype(np.float32)
    head_note = ex.check_head(x)
    if head_note:
        say(f"note: {head_note}")
    label_names = labels if labels and len(labels) == ex.num_classes else [str(i) for i in range(ex.num_classes)]
    probs = ex.predict(x)
    preds = probs.argmax(axis=1)
    t, c, plain = targets_for(args, sel, preds, label_names)
    layer_text = f"{ex.layer.path} {tuple(ex.layer.shape)}" if ex.layer is not None else "none"
    say(f"explaining {len(x)} image(s) with {', '.join(methods)}; target layer {layer_text}")
    maps, timings = run_methods(ex, methods, x, t, c, say)
    result = {
        "model": str(model_path),
        "dataset": None,
        **base_result(args, ex, methods, sel, probs, preds, t, c, plain, timings),
        "preprocess": "digit" if args.preprocess == "digit" else "none",
        "method_notes": method_notes(model, methods) + ([head_note] if head_note else []),
    }
    if which:
        result["metrics"] = {**run_metrics(ex, methods, x, which, args, say), "split": None, "images": "the --images"}
    if args.sanity:
        result["sanity"] = run_sanity(model, ex, methods, maps, x, t, c, args, say)
    write_outputs(out, sel, probs, preds, t, c, maps, result, label_names, f"{model.name} · {sel.how}")
    print(f"explanations written to {out}")
    return 1 if sel.skipped else 0


def explain_run(args, methods, every, which, run_dir, cfg_dict, model, out, own, say) -> int:
    from keras_digits.config import TrainConfig
    from keras_digits.evaluation.records import dataset_record, model_label_names
    from keras_digits.explain import select
    from keras_digits.explain.session import run_metrics, run_sanity

    record = dataset_record(run_dir)
    bundle = None

    def split_data(split: str):
        nonlocal bundle
        if bundle is None:
            from keras_digits.data import load_for
            from keras_digits.evaluation.runs import check_compatible

            bundle = load_for(TrainConfig.from_dict(cfg_dict), args.data_dir)
            check_compatible(model, record, bundle, f"cannot explain {run_dir} on {bundle.name}")
        return bundle.split(split)

    background = None
    if "gradshap" in methods:  # expected gradients: baselines from the training data
        try:
            xs = split_data("train")[0]
            pick = np.sort(np.random.default_rng([args.seed, 53]).permutation(len(xs))[:BACKGROUND])
            background = xs[pick].astype(np.float32)
        except KerasDigitsError as exc:
            say(f"note: gradshap uses black and blurred baselines: the training data is not readable ({exc})")
    ex, methods = make_explainer(args, model, methods, every, say, background)
    label_names = model_label_names(record, ex.num_classes)
    n = args.n or (1 if args.per_class else 16)
    preprocess = None
    if args.images:
        digit = wants_digit(args.preprocess, str(cfg_dict.get("dataset", "")))
        preprocess = "digit" if digit else "none"
        sel = read_files(args, ex, digit)
    else:
        if args.preprocess == "digit":
            print(
                "note: --preprocess digit applies to --images files; split images are used as stored", file=sys.stderr
            )
        mode = "per_class" if args.per_class else "errors" if args.errors else "first"
        sel = select.from_split(*split_data(args.split), args.split, n, mode, ex.predict, ex.num_classes)
    probs = ex.predict(sel.x)
    preds = probs.argmax(axis=1)
    t, c, plain = targets_for(args, sel, preds, label_names)
    layer_text = f"{ex.layer.path} {tuple(ex.layer.shape)}" if ex.layer is not None else "none"
    say(f"explaining {len(sel.x)} image(s) ({sel.how}) with {', '.join(methods)}; target layer {layer_text}")
    x = sel.x.astype(np.float32)
    maps, timings = run_methods(ex, methods, x, t, c, say)
    result = {
        "run": str(run_dir),
        "arch": cfg_dict.get("arch"),
        "dataset": record.get("name"),
        "split": None if args.images else args.split,
        "preprocess": preprocess,
        **base_result(args, ex, methods, sel, probs, preds, t, c, plain, timings),
        "method_notes": method_notes(model, methods),
        "gradshap_background": None if background is None else f"{len(background)} training images",
    }
    if which:
        xs, _ = split_data(args.split)
        k = min(args.metrics_n, len(xs))
        idx = np.sort(np.random.default_rng(0).permutation(len(xs))[:k])
        result["metrics"] = {
            **run_metrics(ex, methods, xs[idx].astype(np.float32), which, args, say),
            "split": args.split,
            "indices": idx.tolist(),
        }
    if args.sanity:
        result["sanity"] = run_sanity(model, ex, methods, maps, x, t, c, args, say)
    title = f"{cfg_dict.get('arch', '')} · {result['images']}"
    write_outputs(out, sel, probs, preds, t, c, maps, result, label_names, title, page_run=run_dir if own else None)
    print(f"explanations written to {out}")
    return 1 if sel.skipped else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
