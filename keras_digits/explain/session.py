"""What both modes of the explain command share: the method settings from the flags, running the methods
and the checks (metrics, sanity) on one set of images, and writing the output folder atomically."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.explain import method_fn


def options_from(args, background=None):
    """explain.core.Options from the parsed flags."""
    from keras_digits.explain.core import Options

    return Options(
        batch_size=args.batch_size,
        steps=args.steps,
        samples=args.samples,
        noise=args.noise,
        masks=args.masks,
        patch=args.patch,
        stride=args.stride,
        scorecam_channels=args.scorecam_channels,
        segments=args.segments,
        coalitions=args.coalitions,
        seed=args.seed,
        value_range=tuple(args.input_range),
        background=background,
        head=args.head,
    )


def run_methods(ex, methods: Sequence[str], x, t, c, say) -> tuple[dict, dict]:
    """Each method's maps of float32 images `x`, and its timing."""
    maps, timings = {}, {}
    for name in methods:
        start = time.perf_counter()
        maps[name] = method_fn(name)(ex, x, t, c)
        secs = time.perf_counter() - start
        timings[name] = {"seconds": round(secs, 3), "images_per_s": round(len(x) / max(secs, 1e-9), 2)}
        say(f"{name:<15} {len(x)} images  {secs:7.2f} s  {timings[name]['images_per_s']:8.1f} img/s")
    return maps, timings


def run_metrics(ex, methods: Sequence[str], x, which: Sequence[str], args, say) -> dict:
    """The metrics `which` (explain.scorecard) of every method on float images `x`, for their predicted classes."""
    from keras_digits.explain import scorecard

    t = ex.predict(x).argmax(axis=1).astype(np.int32)
    c = np.full(len(x), -1, np.int32)
    say(f"metrics ({', '.join(which)}): {len(x)} images, {', '.join(methods)} and a random map")
    maps, _ = run_methods(ex, methods, x, t, c, say)
    result = scorecard.evaluate(
        ex,
        x,
        t,
        c,
        maps,
        list(which),
        lambda m, xs, ts, cs: method_fn(m)(ex, xs, ts, cs),
        seed=args.seed,
        sensitivity_n=args.sensitivity_n,
        say=say,
    )
    for line in summary_lines(result):
        say(line)
    return result


def summary_lines(result: dict) -> list[str]:
    """One line per method: the headline number of each metric computed."""
    lines = []
    names = list((result.get("methods") or {}).keys()) or list(
        next((result[k]["methods"] for k in ("mufidelity", "road", "complexity") if k in result), {})
    )
    for name in names:
        parts = []
        row = (result.get("methods") or {}).get(name)
        if row:
            parts.append(f"del {row['deletion']['mean']:.3f} ins {row['insertion']['mean']:.3f}")
        for key, field, short in (
            ("mufidelity", None, "mufid"),
            ("road", "gap", "road gap"),
            ("localisation", "relevance_mass", "ink mass"),
            ("complexity", "sparseness", "gini"),
            ("sensitivity", None, "max-sens"),
        ):
            value = ((result.get(key) or {}).get("methods") or {}).get(name)
            value = value.get(field) if (value and field) else value
            if value and value.get("mean") is not None:
                parts.append(f"{short} {value['mean']:.3f}")
        flag = "  (no better than random)" if row and row.get("flagged") else ""
        lines.append(f"  {name:<15} " + "  ".join(parts) + flag)
    low = (result.get("agreement") or {}).get("low")
    if low:
        lines.append(
            f"  methods disagree (mean rank correlation < {result['agreement']['low_below']}) on images {low[:10]}"
        )
    return lines


def foreground(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """(N, H, W) bool: pixels that differ from black by more than 1 % of the range in some channel."""
    return (np.abs(np.asarray(x, np.float64) - low) > 0.01 * (high - low)).any(axis=-1)


def run_sanity(model, ex, methods: Sequence[str], maps: dict, x, t, c, args, say) -> dict:
    from keras_digits.explain import sanity

    k = min(args.sanity_n, len(x))
    say(f"sanity: cascading randomization on {k} image(s)")
    originals = {m: maps[m][:k] for m in methods}
    result = sanity.run(
        model,
        lambda m: method_fn(m)(ex, x[:k], t[:k], c[:k]),
        list(methods),
        originals,
        steps=args.sanity_steps,
        seed=args.seed,
        foreground=foreground(x[:k], ex.low, ex.high),
    )
    for m, v in result["methods"].items():
        fg = v.get("final_spearman_foreground")
        fg_text = (
            "" if fg is None else f"; on the foreground {fg:.3f} {'passes' if v['passes_foreground'] else 'FAILS'}"
        )
        say(
            f"  {m:<15} spearman after full randomization {v['final_spearman']:.3f} "
            f"{'passes' if v['passes'] else 'FAILS'}{fg_text}"
        )
    return result


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


def check_out(out: Path, protected: Path, default: Path) -> None:
    """--out is replaced as a whole: refuse the run or model itself, a folder holding it, and a non-empty folder
    that explain did not write."""
    from keras_digits.utils.io import check_output_dir

    check_output_dir(out, "output folder")
    if out.resolve() == protected.resolve() or out.resolve() in protected.resolve().parents:
        raise KerasDigitsError(
            f"--out {out} would replace {protected} or a folder holding it; choose a new or empty folder "
            f"(default {default})"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "explain.json").is_file():
        raise KerasDigitsError(
            f"--out {out} is not empty and was not written by keras_digits.explain; it would be "
            "replaced: choose a new or empty folder"
        )


def write_outputs(out: Path, sel, probs, preds, t, c, maps, result, label_names, title: str, page_run=None) -> None:
    """Everything into a temporary folder, then moved onto `out` (the caller holds the lock); `page_run`: the run
    whose report.html to regenerate."""
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
        save_grid(tmp / "grid.png", sel.x, maps, rows, title)
        write_json(tmp / "explain.json", result)
    if page_run is not None:
        from keras_digits.reporting.html import write_run_page

        write_run_page(page_run)
