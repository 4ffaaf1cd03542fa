"""`python -m keras_digits.explain --run RUN`: explain a trained run's predictions.

Writes to RUN/explain/ (or --out DIR), replacing it as a whole once everything succeeded (when that
path is a symbolic link, the folder it points to is replaced and the link kept):

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
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.data.adapt import PREPROCESS, PREPROCESS_HELP, wants_digit
from keras_digits.errors import KerasDigitsError
from keras_digits.explain import CAM_METHODS, METHODS, method_fn, parse_methods
from keras_digits.utils.cli import non_negative_int, positive_int, quiet_retracing_warnings, run_cli

EPILOG = (
    "methods:\n"
    + "\n".join(f"  {k:<11} {v[2]}" for k, v in METHODS.items())
    + """

examples:
  python -m keras_digits.explain --run runs/simple_cnn-mnist --method gradcam,ig --n 8
  python -m keras_digits.explain --run RUN --errors --n 12 --metrics --sanity
  python -m keras_digits.explain --run RUN --images my_digits/ --target 4 --contrast 9
"""
)


def build_parser() -> argparse.ArgumentParser:
    from keras_digits.utils.cli import positive_float

    p = argparse.ArgumentParser(
        prog="python -m keras_digits.explain",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain a trained run's predictions: attribution maps per method, "
        "a PNG grid, faithfulness metrics and sanity checks.",
    )
    p.add_argument("--run", required=True, help="run directory written by keras_digits.train")
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
    opt.add_argument("--noise", type=positive_float, default=0.15, help="SmoothGrad noise std / 255 (default 0.15)")
    opt.add_argument("--masks", type=positive_int, default=1000, help="RISE masks (default 1000)")
    opt.add_argument("--patch", type=positive_int, help="occlusion patch side (default: image side / 7)")
    opt.add_argument("--stride", type=positive_int, help="occlusion stride (default: patch / 2)")
    opt.add_argument(
        "--scorecam-channels",
        type=non_negative_int,
        default=256,
        help="Score-CAM channels, highest variance first; 0 = all (default 256)",
    )
    opt.add_argument("--seed", type=non_negative_int, default=0, help="seed of noise, masks and tie-breaks (default 0)")
    chk = p.add_argument_group("can the explanation be trusted?")
    chk.add_argument("--metrics", action="store_true", help="deletion/insertion AUC against a random map")
    chk.add_argument(
        "--metrics-n",
        type=positive_int,
        default=100,
        help="images of the split for --metrics (a fixed subset; default 100)",
    )
    chk.add_argument("--sanity", action="store_true", help="model-parameter randomization test (Adebayo et al.)")
    chk.add_argument("--sanity-n", type=positive_int, default=8, help="images for --sanity (default 8)")
    chk.add_argument(
        "--sanity-steps", type=positive_int, default=6, help="points of the top-down randomization cascade (default 6)"
    )
    p.add_argument("--out", help="output folder (default RUN/explain; only that one feeds RUN/report.html)")
    p.add_argument("--quiet", action="store_true", help="no progress or per-method lines")
    return p


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from keras_digits.serving.predictor import Progress

    return lambda label, total: Progress(total, label=label)


def run_methods(ex, methods: Sequence[str], x, t, c, say) -> tuple[dict, dict]:
    """Each method's maps of float32 images `x`, and its timing."""
    maps, timings = {}, {}
    for name in methods:
        start = time.perf_counter()
        maps[name] = method_fn(name)(ex, x, t, c)
        secs = time.perf_counter() - start
        timings[name] = {"seconds": round(secs, 3), "images_per_s": round(len(x) / max(secs, 1e-9), 2)}
        say(f"{name:<11} {len(x)} images  {secs:7.2f} s  {timings[name]['images_per_s']:8.1f} img/s")
    return maps, timings


def row_label(name: str, label: int, pred: int, conf: float, t: int, c: int, names: Sequence[str]) -> str:
    true = f"true {names[label]}\n" if label >= 0 else ""
    target = f"\nwhy {names[t]}" + (f" not {names[c]}" if c >= 0 else "") if t != pred or c >= 0 else ""
    return f"{name}\n{true}pred {names[pred]} ({conf:.2f}){target}"


def output_folder(out: Path) -> Path:
    """`out`, or the folder it points to when it is a symbolic link (replacing that folder keeps the link, and
    no moved-aside link is left behind)."""
    if not out.is_symlink():
        return out
    try:
        return out.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise KerasDigitsError(f"output folder {out} is a symbolic link that cannot be followed: {exc}") from None


def check_out(out: Path, run_dir: Path) -> None:
    """--out is replaced as a whole: refuse the run itself, a folder holding it, and a non-empty folder
    that explain did not write."""
    from keras_digits.utils.io import check_output_dir

    check_output_dir(out, "output folder")
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise KerasDigitsError(
            f"--out {out} would replace the run directory {run_dir} or a folder holding it; "
            f"choose a new or empty folder (default {run_dir / 'explain'})"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "explain.json").is_file():
        raise KerasDigitsError(
            f"--out {out} is not empty and was not written by keras_digits.explain; it would be "
            "replaced: choose a new or empty folder"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_retracing_warnings()  # every method, batch and image size traces the model anew
    methods = parse_methods(args.method)
    every = any(m.strip().lower() == "all" for m in args.method.split(","))
    if args.per_class and args.errors:  # the one check: select.from_split takes a single mode
        raise KerasDigitsError("--per-class and --errors cannot be combined; choose one")
    if args.images and (args.per_class or args.errors):
        raise KerasDigitsError("--per-class and --errors choose images from a split; not with --images")
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, file=sys.stderr))

    from keras_digits.evaluation.runs import load_run
    from keras_digits.utils.lock import hold

    run_dir = Path(args.run)
    cfg_dict, model = load_run(run_dir)
    out = output_folder(Path(args.out) if args.out else run_dir / "explain")
    check_out(out, run_dir)
    own = out.resolve() == (run_dir / "explain").resolve()  # RUN/explain feeds the run's page
    with hold(run_dir, "run directory") if own else hold(out, "output folder"):
        return explain(args, methods, every, run_dir, cfg_dict, model, out, own, say)


def explain(args, methods, every, run_dir, cfg_dict, model, out, own, say) -> int:
    from keras_digits.config import TrainConfig
    from keras_digits.evaluation.records import dataset_record, model_label_names
    from keras_digits.explain.core import Explainer, Options
    from keras_digits.explain.perturbation import occlusion_geometry

    options = Options(
        batch_size=args.batch_size,
        steps=args.steps,
        samples=args.samples,
        noise=args.noise,
        masks=args.masks,
        patch=args.patch,
        stride=args.stride,
        scorecam_channels=args.scorecam_channels,
        seed=args.seed,
    )
    ex = Explainer(model, args.layer, options)
    ex.progress = _progress(args.quiet)
    if ex.layer is None and any(m in CAM_METHODS for m in methods):
        cams = [m for m in methods if m in CAM_METHODS]
        if not every:
            ex.require_layer(cams[0])
        methods = [m for m in methods if m not in CAM_METHODS]
        say(f"note: {', '.join(cams)} skipped: {model.name} has no spatial feature map")
    record = dataset_record(run_dir)
    label_names = model_label_names(record, ex.num_classes)

    bundle = None

    def split_data():
        nonlocal bundle
        if bundle is None:
            from keras_digits.data import load_for
            from keras_digits.evaluation.runs import check_compatible

            bundle = load_for(TrainConfig.from_dict(cfg_dict), args.data_dir)
            check_compatible(model, record, bundle, f"cannot explain {run_dir} on {bundle.name}")
        return bundle.split(args.split)

    from keras_digits.explain import select
    from keras_digits.serving.predictor import print_read_notes

    n = args.n or (1 if args.per_class else 16)
    preprocess = None
    if args.images:
        digit = wants_digit(args.preprocess, str(cfg_dict.get("dataset", "")))
        preprocess = "digit" if digit else "none"
        sel = select.from_files(args.images, ex.input_shape, limit=args.n, digit=digit)
        for f, why in sel.skipped:
            print(f"skipped {f}: {why}", file=sys.stderr)
        print_read_notes(sel.notes, sel.inkless)
    else:
        if args.preprocess == "digit":
            print(
                "note: --preprocess digit applies to --images files; split images are used as stored", file=sys.stderr
            )
        mode = "per_class" if args.per_class else "errors" if args.errors else "first"
        sel = select.from_split(*split_data(), args.split, n, mode, ex.predict, ex.num_classes)
    probs = ex.predict(sel.x)
    preds = probs.argmax(axis=1)
    t, c = select.targets(args.target, args.contrast, sel, preds, label_names)
    plain = [sel.names[i] for i in np.flatnonzero(c < 0)] if args.contrast is not None else []
    if plain:
        print(
            f"note: --contrast {args.contrast}: {len(plain)} image(s) whose target is that class itself are "
            f"explained without the contrast (contrast -1 in explain.json): {', '.join(plain[:5])}"
            + (" ..." if len(plain) > 5 else ""),
            file=sys.stderr,
        )
    layer_text = f"{ex.layer.path} {tuple(ex.layer.shape)}" if ex.layer is not None else "none"
    say(f"explaining {len(sel.x)} image(s) ({sel.how}) with {', '.join(methods)}; target layer {layer_text}")
    x = sel.x.astype(np.float32)
    maps, timings = run_methods(ex, methods, x, t, c, say)

    result = {
        "run": str(run_dir),
        "arch": cfg_dict.get("arch"),
        "dataset": record.get("name"),
        "methods": methods,
        "layer": None
        if ex.layer is None
        else {
            "path": ex.layer.path,
            "shape": list(ex.layer.shape),
            "chosen": "--layer" if args.layer else "automatically",
        },
        "logits": ex.head_kind,
        "images": sel.how,
        "split": None if args.images else args.split,
        "preprocess": preprocess,
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
        "options": {
            **{k: getattr(options, k) for k in options.__dataclass_fields__},
            **dict(zip(("patch", "stride"), occlusion_geometry(ex)[:2])),
        },
        "timings": timings,
        "files": {m: f"{m}.npy" for m in methods},
        "grid": "grid.png",
        "skipped": [{"file": f, "reason": why} for f, why in sel.skipped],
    }
    if args.metrics:
        from keras_digits.explain import faithfulness

        xs, _ = split_data()
        k = min(args.metrics_n, len(xs))
        idx = np.sort(np.random.default_rng(0).permutation(len(xs))[:k])
        xm = xs[idx].astype(np.float32)
        tm = ex.predict(xm).argmax(axis=1).astype(np.int32)
        cm = np.full(k, -1, np.int32)
        say(f"faithfulness: {k} images of the {args.split} split, {', '.join(methods)} and a random map")
        mm, _ = run_methods(ex, methods, xm, tm, cm, say)
        result["metrics"] = {
            **faithfulness.evaluate(ex, xm, tm, cm, mm, seed=args.seed),
            "split": args.split,
            "indices": idx.tolist(),
        }
        for name, row in result["metrics"]["methods"].items():
            flag = "  (no better than random)" if row.get("flagged") else ""
            say(f"  {name:<11} deletion {row['deletion']['mean']:.4f}  insertion {row['insertion']['mean']:.4f}{flag}")
    if args.sanity:
        from keras_digits.explain import sanity

        k = min(args.sanity_n, len(x))
        say(f"sanity: cascading randomization on {k} image(s)")
        originals = {m: maps[m][:k] for m in methods}
        result["sanity"] = sanity.run(
            model,
            lambda m: method_fn(m)(ex, x[:k], t[:k], c[:k]),
            methods,
            originals,
            steps=args.sanity_steps,
            seed=args.seed,
        )
        for m, v in result["sanity"]["methods"].items():
            say(
                f"  {m:<11} spearman after full randomization {v['final_spearman']:.3f}  "
                f"{'passes' if v['passes'] else 'FAILS'}"
            )
    write_outputs(run_dir, out, own, sel, probs, preds, t, c, maps, result, label_names, cfg_dict)
    print(f"explanations written to {out}")
    return 1 if sel.skipped else 0


def write_outputs(
    run_dir: Path, out: Path, own: bool, sel, probs, preds, t, c, maps, result, label_names, cfg_dict
) -> None:
    """Everything into a temporary folder, then moved onto `out` (the caller holds the lock)."""
    from keras_digits.explain.figures import save_grid
    from keras_digits.utils.io import atomic_dir, write_json

    rows = [
        row_label(
            sel.names[i],
            int(sel.labels[i]),
            int(preds[i]),
            float(probs[i, preds[i]]),
            int(t[i]),
            int(c[i]),
            label_names,
        )
        for i in range(len(sel.x))
    ]
    with atomic_dir(out) as tmp:
        for name, m in maps.items():
            np.save(tmp / f"{name}.npy", m.astype(np.float32))
        np.savez_compressed(
            tmp / "inputs.npz",
            images=sel.x,
            labels=sel.labels,
            preds=preds,
            confidence=probs[np.arange(len(preds)), preds],
            targets=t,
            contrasts=c,
        )
        title = f"{cfg_dict.get('arch', '')} · {result['images']}"
        save_grid(tmp / "grid.png", sel.x, maps, rows, title)
        write_json(tmp / "explain.json", result)
    if own:
        from keras_digits.reporting.html import write_run_page

        write_run_page(run_dir)


if __name__ == "__main__":
    sys.exit(run_cli(main))
