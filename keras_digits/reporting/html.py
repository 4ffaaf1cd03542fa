"""`report.html`: one self-contained page per run, built only from what the run directory holds.

Images are embedded as base64 PNGs, styles are inline, there is no JavaScript and nothing is fetched,
so the page opens from disk in any browser. Sections: summary, dataset and config, learning curves,
confusion matrix (counts and row-normalised), per-class precision/recall/F1/support, one-vs-rest ROC
and precision-recall curves with their AUCs, galleries of the most confident mistakes and of correct
examples per class, explanations (`keras_digits.explain`), scores on other data, robustness under
corruptions, timings and software versions. `write_run_page` replaces the page atomically; a run that has
not finished gets none. A plot that cannot be drawn is a note on the page, never a missing page.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.reporting.predictions import load_npz
from keras_digits.reporting.result_files import read_collapse
from keras_digits.utils.io import read_json_object, write_text

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}.cm td{min-width:2.2em;text-align:center}
.grid{display:flex;flex-wrap:wrap;gap:.6em}.card{border:1px solid #ddd;padding:.3em;font-size:.75em;text-align:center;
width:92px}.card img{image-rendering:pixelated;width:84px;height:84px}.bad{color:#b00}.note{color:#666;font-size:.9em}
.kv td{text-align:left}.wrap{overflow-x:auto}.warn{border:2px solid #d08000;background:#fff6e0;padding:.2em 1em .6em}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    from keras_digits.reporting.plots import pyplot

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return buf.getvalue()


def image_png(img: np.ndarray) -> bytes:
    """A uint8 (H, W, C) image as PNG bytes."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def img_tag(png: bytes, alt: str, style: str = "max-width:100%") -> str:
    return f'<img src="{png_data_uri(png)}" alt="{esc(alt)}" style="{style}">'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<div class="wrap"><table class="{cls}"><tr>{head}</tr>{body}</table></div>'


def missing_plot(what: str, why: str) -> str:
    """The page's note in place of a plot that could not be drawn."""
    return f'<p class="note bad">The {esc(what)} plot could not be drawn ({esc(why)}); the numbers are unaffected.</p>'


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


# ---------------------------------------------------------------------------- sections
def summary_section(metrics: dict) -> str:
    rows = [
        [esc(s), fmt(m.get("n")), fmt(m.get("accuracy")), fmt(m.get("loss")), fmt(m.get("f1")), fmt(m.get("auc"))]
        for s, m in metrics.items()
        if isinstance(m, dict) and "accuracy" in m
    ]
    html = "<h2>Summary</h2>" + table(["split", "images", "accuracy", "loss", "macro F1", "AUC (one-vs-rest)"], rows)
    med = metrics.get("medmnist")
    if isinstance(med, dict):  # the benchmark's own ACC/AUC (keras_digits.evaluation.medmnist_protocol)
        med_rows = [
            [esc(s), fmt(med[s].get("ACC"), 3), fmt(med[s].get("AUC"), 3)]
            for s in ("val", "test")
            if isinstance(med.get(s), dict)
        ]
        html += (
            f"<p>MedMNIST protocol ({esc(med.get('subset', ''))}, {esc(med.get('size', ''))} px, task "
            f"{esc(med.get('task', ''))}): ACC and AUC as MedMNIST's evaluator computes them.</p>"
            + table(["split", "ACC", "AUC"], med_rows)
        )
    return html


def collapse_section(run_dir: Path, metrics: dict) -> str:
    """The collapse detector's warning (collapse.json), with the epochs it fired at and what to do."""
    record = read_collapse(run_dir)
    if not record or not record["epochs"]:
        return ""
    rows, signs = [], []
    for e in record["epochs"]:
        if not isinstance(e, dict):
            continue
        modes = e.get("modes") if isinstance(e.get("modes"), dict) else {}
        rows.append(
            [esc(e.get("epoch")), fmt(e.get("accuracy")), fmt(e.get("val_accuracy")), fmt(modes.get("agreement"), 2)]
        )
        signs.append(f"<li>epoch {esc(e.get('epoch'))}: {esc('; '.join(str(x) for x in e.get('signs') or []))}</li>")
    val, below = (metrics.get("val") or {}).get("accuracy"), record.get("near_chance_below")
    if not isinstance(val, (int, float)) or not isinstance(below, (int, float)):
        kept = "The kept model's validation accuracy is not recorded."
    elif val > below:
        kept = f"The kept model scores {val:.4f} on validation, above the near-chance level ({below:.4f})."
    else:
        kept = f"The kept model scores {val:.4f} on validation: still near chance ({below:.4f} or less)."
    return (
        '<div class="warn"><h2>Collapse warning</h2>'
        f"<p>The collapse detector fired at {len(rows)} epoch(s): {esc(record.get('advice', ''))}.</p>"
        f"<p>{esc(kept)}</p>"
        + table(["epoch", "train acc", "val acc", "inference/training modes agree"], rows, left=1)
        + f"<ul>{''.join(signs)}</ul></div>"
    )


def data_section(dataset: dict, config: dict) -> str:
    sizes = dataset.get("sizes") or {}
    names = dataset.get("label_names") or []
    data_rows = [
        ["name", esc(dataset.get("name", ""))],
        ["source", esc(dataset.get("source", ""))],
        ["input shape", esc(dataset.get("input_shape", ""))],
        ["split sizes", esc(", ".join(f"{k} {v:,}" for k, v in sizes.items()))],
        ["labels", esc(", ".join(f"{i}: {n}" for i, n in enumerate(names)))],
    ]
    cfg_rows = [[esc(k), esc(json.dumps(v) if isinstance(v, (dict, list)) else v)] for k, v in config.items()]
    return (
        "<h2>Data and configuration</h2>"
        + table(["dataset", ""], data_rows, "kv")
        + "<details><summary>all training options</summary>"
        + table(["option", "value"], cfg_rows, "kv")
        + "</details>"
    )


def curves_section(run_dir: Path) -> str:
    from keras_digits.reporting.history import read_history
    from keras_digits.reporting.plots import plot_curves_figure, try_plot

    path = run_dir / "history.csv"
    if not path.is_file():
        return ""
    png, why = try_plot("learning curves", lambda: figure_png(plot_curves_figure(read_history(path))))
    return "<h2>Learning curves</h2>" + (
        img_tag(png, "loss and accuracy per epoch") if png is not None else missing_plot("learning curves", why)
    )


def confusion_section(m: dict, names: Sequence[str], split: str) -> str:
    cm = np.asarray(m.get("confusion_matrix") or [])
    if cm.size == 0:
        return ""
    norm = cm / cm.sum(axis=1, keepdims=True).clip(min=1)

    def cells(values, shade, as_int):
        out = []
        for v, s in zip(values, shade, strict=True):
            text = f"{int(v)}" if as_int else f"{v:.2f}"
            color = "#fff" if s > 0.55 else "#222"
            out.append(f'<span style="display:block;background:rgba(31,119,180,{s:.2f});color:{color}">{text}</span>')
        return out

    short = [esc(str(n)[:18]) for n in names]
    counts = [[short[i]] + cells(cm[i], norm[i], True) for i in range(len(cm))]
    rates = [[short[i]] + cells(norm[i], norm[i], False) for i in range(len(cm))]
    head = ["true \\ predicted", *[str(n)[:18] for n in names]]
    return (
        f"<h2>Confusion matrix ({esc(split)})</h2><p>Counts</p>"
        + table(head, counts, "cm")
        + "<p>Row-normalised (recall per true class on the diagonal)</p>"
        + table(head, rates, "cm")
    )


def per_class_section(m: dict) -> str:
    rows = [
        [esc(f"{c['class_id']}: {c['label']}"), fmt(c["precision"]), fmt(c["recall"]), fmt(c["f1"]), fmt(c["support"])]
        for c in m.get("per_class", [])
    ]
    return "<h2>Per class</h2>" + table(["class", "precision", "recall", "F1", "support"], rows)


def roc_section(pred: dict | None, names: Sequence[str], split: str) -> str:
    if pred is None:
        return ""
    from keras_digits.reporting.plots import plot_roc_pr_figure, try_plot

    def draw() -> tuple[bytes, list]:
        fig, aucs = plot_roc_pr_figure(pred["y"], pred["probs"], names)
        return figure_png(fig), aucs

    drawn, why = try_plot("ROC and precision-recall", draw)
    head = f"<h2>ROC and precision-recall curves ({esc(split)}, one-vs-rest)</h2>"
    if drawn is None:
        return head + missing_plot("ROC and precision-recall", why)
    png, aucs = drawn
    rows = [[esc(f"{i}: {n}"), fmt(aucs[i][0]), fmt(aucs[i][1])] for i, n in enumerate(names)]
    return (
        head + img_tag(png, "ROC and precision-recall curves") + table(["class", "ROC AUC", "average precision"], rows)
    )


def gallery_section(ex: dict | None, names: Sequence[str], split: str) -> str:
    if ex is None:
        return ""
    n_wrong = int(ex["mistakes"])

    def card(i: int, wrong: bool) -> str:
        true, probs = int(ex["y"][i]), ex["probs"][i]
        pred = int(np.argmax(probs))
        label = (
            f'true {esc(names[true])}<br><span class="bad">pred {esc(names[pred])}</span>'
            if wrong
            else f"{esc(names[true])}"
        )
        number = int(ex["index"][i])
        thumb = img_tag(image_png(ex["images"][i]), f"image {number}", "")
        return f'<div class="card">{thumb}<br>{label}<br>p={probs[pred]:.3f} · #{number}</div>'

    wrong = "".join(card(i, True) for i in range(n_wrong)) or "<p>No mistakes.</p>"
    right = "".join(card(i, False) for i in range(n_wrong, len(ex["y"])))
    return (
        f'<h2>Most confident mistakes ({esc(split)})</h2><div class="grid">{wrong}</div>'
        f'<h2>Correctly classified examples per class ({esc(split)})</h2><div class="grid">{right}</div>'
    )


def other_data_section(run_dir: Path) -> str:
    """Every metrics-*.json (keras_digits.evaluate on other data, or with a label map or preprocessing), one
    row per file and split, each labelled by what was scored."""
    from keras_digits.reporting.markdown import label_map_text
    from keras_digits.reporting.result_files import result_files

    rows = []
    files, damaged = result_files(run_dir, "metrics")
    for path, m in files:
        data = " · ".join(str(v) for v in (m.get("dataset"), m.get("source")) if v)
        for split, s in m.items():
            if isinstance(s, dict) and "accuracy" in s:
                rows.append(
                    [
                        esc(path.name),
                        esc(data),
                        esc(split),
                        fmt(s.get("n")),
                        esc(m.get("preprocess", "none")),
                        esc(label_map_text(m.get("label_map"))),
                        fmt(s.get("accuracy")),
                        fmt(s.get("f1")),
                        fmt(s.get("auc")),
                    ]
                )
    if not rows and not damaged:
        return ""
    return (
        "<h2>Scores on other data</h2>"
        + (
            table(
                ["file", "data", "split", "images", "preprocessing", "label map", "accuracy", "macro F1", "AUC"],
                rows,
                left=6,
            )
            if rows
            else ""
        )
        + damaged_note(damaged)
    )


def damaged_note(damaged: Sequence[str]) -> str:
    """A note naming result files left out of a section because they are damaged."""
    if not damaged:
        return ""
    return f'<p class="note">left out, damaged: {esc("; ".join(damaged))}</p>'


def robustness_section(run_dir: Path) -> str:
    """One table per robustness-*.json (keras_digits.evaluate --perturb): clean first, then each corruption."""
    from keras_digits.reporting.markdown import label_map_text
    from keras_digits.reporting.result_files import result_files

    out = []
    files, damaged = result_files(run_dir, "robustness")
    for path, r in files:
        rows = [x for x in r.get("rows") or [] if isinstance(x, dict) and isinstance(x.get("accuracy"), (int, float))]
        clean = rows[0].get("accuracy", 0.0)
        body = [
            [
                esc(x.get("corruption")),
                "" if x.get("corruption") == "clean" else esc(x.get("severity")),
                fmt(x.get("accuracy")),
                "" if x.get("corruption") == "clean" else f"{x['accuracy'] - clean:+.4f}",
            ]
            for x in rows
        ]
        header = ["corruption", "severity", "accuracy", "change"]
        explained = [x.get("explain") for x in rows if isinstance(x.get("explain"), dict)]
        if explained:  # rows added by later runs may have been explained with another method: named per row
            header += ["explained with", "deletion AUC ↓", "random map's", "ink relevance ↑"]
            for line, x in zip(body, rows):
                e = x.get("explain") if isinstance(x.get("explain"), dict) else {}
                line += [
                    esc(e.get("method", "")),
                    fmt(e.get("deletion_auc")),
                    fmt(e.get("deletion_auc_random")),
                    fmt(e.get("ink_relevance")),
                ]
        mapped = label_map_text(r.get("label_map"))
        out.append(
            f"<h3>{esc(r.get('dataset'))} {esc(r.get('split'))} · {esc(r.get('preprocess'))} preprocessing · "
            f"{esc(r.get('n'))} images · seed {esc(r.get('seed'))}"
            + (f" · label map {esc(mapped)}" if mapped else "")
            + f" ({esc(path.name)})</h3>"
            + (f'<p class="note">data: {esc(r.get("source"))}</p>' if r.get("source") else "")
            + table(header, body)
        )
    return "<h2>Robustness</h2>" + "".join(out) + damaged_note(damaged) if out or damaged else ""


def explain_section(run_dir: Path) -> str:
    """RUN/explain (written by keras_digits.explain): the grid, the target layer, the faithfulness and
    sanity tables when they were computed."""
    folder = run_dir / "explain"
    info = read_json_object(folder / "explain.json", lenient=True)
    if not info:
        return ""
    layer = info.get("layer") or {}
    where = (
        f"target layer <code>{esc(layer.get('path'))}</code> {esc(tuple(layer.get('shape', [])))}, chosen "
        f"{esc(layer.get('chosen', ''))}"
        if layer
        else "no spatial layer (CAM methods not available)"
    )
    out = [
        f"<h2>Explanations</h2><p class='note'>{esc(info.get('images', ''))}; {where}; "
        "regenerate with <code>python -m keras_digits.explain --run DIR</code></p>"
    ]
    grid = folder / "grid.png"
    if grid.is_file():
        out.append(img_tag(grid.read_bytes(), "attribution maps per method"))
    timings = info.get("timings") or {}
    if timings:
        rows = [[esc(m), fmt(v.get("seconds"), 2), fmt(v.get("images_per_s"), 1)] for m, v in timings.items()]
        out.append("<h3>Time per method</h3>" + table(["method", "seconds", "images/s"], rows))
    out += metrics_tables(info.get("metrics") or {})
    sanity = info.get("sanity")
    if sanity:
        steps = sanity.get("steps", [])
        header = ["method"] + [f"top {s['randomized']} ({s['down_to']})" for s in steps] + ["verdict"]
        fg = bool(sanity.get("foreground"))
        if fg:
            header += ["on the foreground", "verdict there"]

        def verdict(ok) -> str:
            return "passes" if ok else '<span class="bad">fails</span>'

        rows = [
            [esc(m)]
            + [fmt(s["spearman"].get(m), 3) for s in steps]
            + [verdict(v.get("passes"))]
            + ([fmt(v.get("final_spearman_foreground"), 3), verdict(v.get("passes_foreground"))] if fg else [])
            for m, v in sanity.get("methods", {}).items()
        ]
        out.append(
            f"<h3>Sanity: Spearman correlation with the maps of a model randomized from the top "
            f"(pass: within ±{sanity.get('pass_below')} once every layer is randomized)</h3>"
            + table(header, rows)
            + (
                '<p class="note">on the foreground: the same correlation over the pixels that are not black only '
                "(black pixels are 0 by construction for IG from black, Gradient x Input and DeepLIFT, and for "
                "occlusion where every patch covering them is black)</p>"
                if fg
                else ""
            )
        )
    return "".join(out)


def _mean(section: dict, method: str, field: str | None = None) -> str:
    row = ((section or {}).get("methods") or {}).get(method) or {}
    value = row.get(field) if field else row
    return fmt((value or {}).get("mean"), 3) if isinstance(value, dict) else ""


METRIC_COLUMNS = (  # (section, field, header)
    ("mufidelity", None, "MuFidelity ↑"),
    ("road", "morf", "ROAD MoRF ↓"),
    ("road", "lerf", "ROAD LeRF ↑"),
    ("localisation", "relevance_mass", "relevance mass ↑"),
    ("localisation", "pointing", "pointing game ↑"),
    ("complexity", "complexity", "complexity ↓"),
    ("complexity", "sparseness", "sparseness ↑"),
    ("sensitivity", None, "max-sensitivity ↓"),
)


def image_name(metrics: dict, i: int) -> str:
    """The i-th image of the metrics subset as its split and index there ("test #1234"), or its position."""
    idx = metrics.get("indices")
    if isinstance(idx, list) and 0 <= i < len(idx) and metrics.get("split"):
        return f"{metrics['split']} #{idx[i]}"
    return f"image {i}"


def metrics_tables(metrics: dict) -> list[str]:
    """explain.json's "metrics": deletion/insertion, then one table of every other metric, then the agreement matrix."""
    if not metrics:
        return []
    out = []
    where = f"{metrics.get('n')} images" + (f" of the {esc(metrics['split'])} split" if metrics.get("split") else "")
    if metrics.get("methods"):
        rows = []
        for m, v in metrics["methods"].items():
            verdict = (
                ""
                if m == "random"
                else ('<span class="bad">no better than random</span>' if v.get("flagged") else "beats random")
            )
            rows.append(
                [
                    esc(m),
                    f"{v['deletion']['mean']:.4f} ± {v['deletion']['se']:.4f}",
                    f"{v['insertion']['mean']:.4f} ± {v['insertion']['se']:.4f}",
                    verdict,
                ]
            )
        out.append(
            f"<h3>Faithfulness: deletion and insertion AUC on {where}</h3>"
            + table(["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)", ""], rows)
            + '<p class="note">'
            + esc("; ".join(f"{k}: {v}" for k, v in metrics.get("protocol", {}).items()))
            + "</p>"
        )
    columns = [c for c in METRIC_COLUMNS if (metrics.get(c[0]) or {}).get("methods")]
    if columns:
        names = list(dict.fromkeys(n for c in columns for n in metrics[c[0]]["methods"]))
        rows = [[esc(n)] + [_mean(metrics[sec], n, field) for sec, field, _ in columns] for n in names]
        notes = [esc(metrics[sec].get("protocol", "")) for sec in dict.fromkeys(c[0] for c in columns)]
        skipped = (metrics.get("localisation") or {}).get("skipped")
        out.append(
            f"<h3>More metrics on {where} (↑ higher is better, ↓ lower)</h3>"
            + table(["method"] + [h for *_, h in columns], rows)
            + "".join(f'<p class="note">{n}</p>' for n in notes)
            + (f'<p class="note">localisation: {esc(skipped)}</p>' if skipped else "")
        )
    agree = metrics.get("agreement")
    if agree and agree.get("methods"):
        names = agree["methods"]
        rows = [[esc(a)] + [fmt(v, 2) for v in row] for a, row in zip(names, agree.get("matrix", []))]
        low = agree.get("low") or []
        out.append(
            "<h3>Agreement between methods (mean Spearman correlation of |map| per image)</h3>"
            + '<div class="wrap">'
            + table(["", *[esc(n) for n in names]], rows)
            + "</div>"
            + f'<p class="note">{len(low)} image(s) where the methods disagree (mean pairwise correlation under '
            f"{esc(agree.get('low_below'))})"
            + (f": {esc(', '.join(image_name(metrics, i) for i in low[:20]))}" if low else "")
            + (
                f"; the least agreement, {min(per):.2f}, on {esc(image_name(metrics, per.index(min(per))))}"
                if (per := [v for v in agree.get("per_image") or [] if isinstance(v, (int, float))])
                else ""
            )
            + "</p>"
        )
    return out


def timing_section(run_dir: Path, metrics: dict) -> str:
    env = read_json_object(run_dir / "environment.json", lenient=True)
    rows = [["training time", f"{metrics.get('train_seconds', 0):.0f} s"], ["epochs", fmt(metrics.get("epochs_run"))]]
    rows += [[esc(k), esc(v)] for k, v in env.items()]
    if not env:
        rows.append(["software versions", "not recorded (run trained before they were)"])
    return "<h2>Timings and software</h2>" + table(["", ""], rows, "kv")


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n"
    )


def run_page(run_dir: str | Path) -> str | None:
    """The report of a finished run as one HTML string (None for an unfinished or diverged run)."""
    run_dir = Path(run_dir)
    metrics = read_json_object(run_dir / "metrics.json", lenient=True)
    if not metrics or metrics.get("status") == "diverged":
        return None
    config = read_json_object(run_dir / "config.json", lenient=True)
    dataset = read_json_object(run_dir / "dataset.json", lenient=True)
    split = "test" if "test" in metrics else "val"
    final = metrics.get(split) or {}
    names = [str(n) for n in dataset.get("label_names") or [c["label"] for c in final.get("per_class", [])]]
    body = [
        f'<p class="note">{esc(run_dir.name)} · {esc(config.get("arch", ""))} on {esc(dataset.get("name", ""))}'
        " · regenerate with <code>python -m keras_digits.report --run DIR</code></p>",
        summary_section(metrics),
        collapse_section(run_dir, metrics),
        data_section(dataset, config),
        curves_section(run_dir),
        confusion_section(final, names, split),
        per_class_section(final),
        roc_section(load_npz(run_dir / f"predictions-{split}.npz"), names, split),
        gallery_section(load_npz(run_dir / f"examples-{split}.npz"), names, split),
        explain_section(run_dir),
        other_data_section(run_dir),
        robustness_section(run_dir),
        timing_section(run_dir, metrics),
    ]
    return page(f"{config.get('arch', 'run')} on {dataset.get('name', '')}", "".join(body))


def write_run_page(run_dir: str | Path) -> Path | None:
    """Write (atomically replace) RUN/report.html; None for a run that has not finished."""
    text = run_page(run_dir)
    if text is None:
        return None
    path = Path(run_dir) / "report.html"
    write_text(path, text)
    from keras_digits.reporting.markdown import update_results_markdown

    update_results_markdown(run_dir)  # report.md lists the same scores on other data and robustness rows
    return path


# ---------------------------------------------------------------------------- ensembles and grids
def _link(from_dir: Path, run_dir: Path, text: str) -> str:
    import os

    page_path = run_dir / "report.html"
    if not page_path.is_file():
        return esc(text)
    href = os.path.relpath(page_path, from_dir)
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def ensemble_page(result: dict, out_dir: str | Path) -> str:
    """The ensemble's page: its members side by side (each linked to its own page) and the ensemble's
    confusion matrix and per-class scores."""
    out_dir = Path(out_dir)
    split = result["split"]
    ens = result[split]
    rows = [
        [
            _link(out_dir, Path(m["run"]), Path(m["run"]).name),
            esc(m["arch"]),
            fmt(m["accuracy"]),
            fmt(m["loss"]),
            fmt(m["f1"]),
            fmt(m.get("auc")),
        ]
        for m in result["members"]
    ]
    rows.append(
        [
            "<b>ensemble (mean of softmax outputs)</b>",
            "",
            f"<b>{fmt(ens['accuracy'])}</b>",
            fmt(ens["loss"]),
            fmt(ens["f1"]),
            fmt(ens.get("auc")),
        ]
    )
    names = [c["label"] for c in ens.get("per_class", [])]
    body = (
        f'<p class="note">{len(result["members"])} members on the {esc(split)} split of '
        f"{esc(result['dataset'])}</p><h2>Members side by side</h2>"
        + table(["run", "arch", "accuracy", "loss", "macro F1", "AUC"], rows, left=2)
        + confusion_section(ens, names, split)
        + per_class_section(ens)
    )
    return page(f"Ensemble on {result['dataset']}", body)


def grid_page(
    out_dir: str | Path, title: str, summary_md: str, figure: Path | None, runs: Sequence[tuple[str, Path]]
) -> str:
    """A sweep's or study's page: its table, its figure, and a link to each run's page."""
    out_dir = Path(out_dir)
    lines = [line.strip().strip("|").split("|") for line in summary_md.strip().splitlines()]
    header, body_rows = [c.strip() for c in lines[0]], [[c.strip() for c in r] for r in lines[2:]]
    import re

    cells = [[re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(c)) for c in r] for r in body_rows]
    parts = [
        "<h2>Settings</h2>",
        table(header, cells, left=2),
        '<p class="note">Bold: the best setting of each factor by validation accuracy, the only thing used to '
        "choose (test accuracy is reported, never used to choose).</p>",
    ]
    if figure is not None and figure.is_file():
        parts += ["<h2>Accuracy per setting</h2>", img_tag(figure.read_bytes(), "accuracy per setting")]
    links = [[_link(out_dir, run_dir, name)] for name, run_dir in runs]
    parts += ["<h2>Runs</h2>", table(["run (its report)"], links)]
    return page(title, "".join(parts))
