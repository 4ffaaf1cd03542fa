"""Scoring a finished run away from its own test split: on another dataset (labels matched by name or
through a label map), with or without MNIST-style digit normalisation, and under corruptions.

    evaluate --run RUN --dataset NAME [--data-dir D] [--preprocess auto|digit|none] [--label-map FILE.json]
    evaluate --run RUN --perturb noise blur:3 ... [--dataset NAME]

Writes, beside the run's own metrics.json (never replaced by these), files named by what was scored:
    metrics-<dataset>[-<folder>]-<fp>[-map-<h>][-digit].json
        scores on a dataset, one entry per split scored;
    robustness-<dataset>-<split>[-<folder>]-<fp>[-map-<h>][-digit]-seed<N>.json
        accuracy per corruption and severity, clean first; later corruptions are added to the same file
where <folder> is a folder tree's name, <fp> the first 8 hex digits of the data's test-split fingerprint,
<h> a hash of the --label-map and -digit marks digit normalisation. Scoring the same thing again
replaces its own entry (or row); a file that holds another scoring (an older name, a hash collision) is
never replaced: the result goes to <name>-2.json, -3... Regenerates the run's report.html.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.evaluation.results import class_mapping, merge_rows, read_label_map, result_path, scoring_name


def score_elsewhere(
    run_dir: str | Path,
    dataset: str | None,
    data_dir: str | None,
    split: str,
    preprocess: str,
    label_map_path: str | None,
    perturb: Sequence[str] | None,
    seed: int = 0,
    progress: Callable[[str], Any] | None = None,
    explain_hook: Callable[..., dict] | None = None,
) -> tuple[dict, Path]:
    """Score the run on `dataset` (None: its own) and/or under corruptions; returns (this scoring's result,
    file written). `progress(line)` hears of each corruption and severity as it finishes. `explain_hook(model,
    fitted images, same_geometry)` adds an "explain" entry to each scoring (explain.shift.scorer)."""
    from keras_digits.config import TrainConfig
    from keras_digits.data import corrupt, get_spec, load_dataset, load_for
    from keras_digits.data.adapt import fit_array, wants_digit
    from keras_digits.data.fingerprint import split_fingerprint
    from keras_digits.evaluation.metrics import classification_metrics, predict_probs
    from keras_digits.evaluation.records import dataset_record, model_label_names
    from keras_digits.evaluation.runs import load_run
    from keras_digits.reporting.html import write_run_page
    from keras_digits.utils.io import check_output_dir, write_json
    from keras_digits.utils.lock import hold

    run_dir = Path(run_dir)
    label_map = read_label_map(label_map_path) if label_map_path else None
    if dataset:
        get_spec(dataset)  # an unknown name is an error before the (slow) model load
    if perturb:
        corrupt.parse(list(perturb), 3)  # names and severities now; the data's channels once it is loaded
    cfg_dict, model = load_run(run_dir)
    check_output_dir(run_dir, "run directory")
    cfg = TrainConfig.from_dict(cfg_dict)
    record = dataset_record(run_dir)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    model_names = model_label_names(record, int(model.outputs[0].shape[-1]))
    name = dataset or cfg.dataset
    digit = wants_digit(preprocess, cfg.dataset)
    if name == cfg.dataset:  # its own data: split exactly as the run was (its data_dir unless overridden)
        bundle = load_for(cfg, data_dir)
    else:  # a folder of photos is loaded at 4x the model's side, so normalisation has pixels to work with
        bundle = load_dataset(name, data_dir, image_size=4 * shape[0] if name == "folder" and digit else None)
    mapping = class_mapping(model_names, bundle.label_names, label_map, name)
    x, y = bundle.split(split)
    y = mapping[np.asarray(y).astype(int)]
    settings = corrupt.parse(list(perturb), int(x.shape[-1])) if perturb else []

    inkless = [0]

    def score(images: np.ndarray, moved: bool = False) -> dict:
        fitted, blank = fit_array(images, shape, digit)
        inkless[0] = max(inkless[0], blank)
        out = classification_metrics(y, predict_probs(model, fitted), model_names)
        if explain_hook is not None:  # the clean images' masks fit when nothing moved the content
            out["explain"] = explain_hook(model, fitted, not digit and not moved)
        return out

    what = scoring_name(name, bundle.source, split_fingerprint(*bundle.test), label_map, digit)
    head = {
        "dataset": name,
        "source": bundle.source,
        "split": split,
        "preprocess": "digit" if digit else "none",
        "trained_on": cfg.dataset,
        "label_map": label_map,
        "fingerprints": {split: split_fingerprint(*bundle.split(split))},
    }
    if not label_map:
        del head["label_map"]
    say = progress or (lambda line: None)
    with hold(run_dir, "run directory"):
        start = time.perf_counter()
        clean = score(x)
        if settings:
            say(f"clean: accuracy {clean['accuracy']:.4f} ({time.perf_counter() - start:.1f} s)")
            rows = [{"corruption": "clean", "severity": 0, "accuracy": clean["accuracy"], "f1": clean["f1"]}]
            if "explain" in clean:
                rows[0]["explain"] = clean["explain"]
            for i, (cname, sev) in enumerate(settings, start=1):
                start = time.perf_counter()
                m = score(corrupt.apply(x, cname, sev, seed), moved=cname in corrupt.MOVES)
                rows.append({"corruption": cname, "severity": sev, "accuracy": m["accuracy"], "f1": m["f1"]})
                if "explain" in m:
                    rows[-1]["explain"] = m["explain"]
                say(
                    f"[{i}/{len(settings)}] {cname}:{sev}: accuracy {m['accuracy']:.4f} "
                    f"({time.perf_counter() - start:.1f} s)"
                )
            result = {**head, "seed": seed, "n": int(len(y)), "rows": rows}
            path, old = result_path(
                run_dir, f"robustness-{name}-{split}-{what}-seed{seed}", result, ("split", "seed", "n")
            )
            saved = {**result, "rows": merge_rows(old.get("rows") or [], rows)}
        else:
            path, old = result_path(run_dir, f"metrics-{name}-{what}", head)
            result = {
                **old,
                **head,
                "fingerprints": {**(old.get("fingerprints") or {}), **head["fingerprints"]},
                split: clean,
            }
            result.pop("split", None)  # one file holds every split scored on this data
            saved = result
        if inkless[0]:
            for holder in (result, saved) if settings else (clean,):  # a metrics file: per split
                holder["images_without_ink"] = inkless[0]
            print(
                f"warning: {inkless[0]} image(s) had no ink to normalise; they were only grey-scaled and resized",
                file=sys.stderr,
            )
        write_json(path, saved)
        write_run_page(run_dir)
    return result, path


def robustness_markdown(result: dict) -> str:
    """The robustness table: clean first, then each corruption and severity with its accuracy drop."""
    rows = result["rows"]
    clean = rows[0]["accuracy"]
    explained = [r.get("explain") for r in rows if r.get("explain")]
    head = "| corruption | severity | accuracy | change |"
    rule = "| --- | ---: | ---: | ---: |"
    if explained:  # rows added by later runs may have been explained with another method: name it per row
        head += " explained with | deletion AUC | random map's | ink relevance |"
        rule += " --- | ---: | ---: | ---: |"
    lines = [head, rule]
    for r in rows:
        sev = "" if r["corruption"] == "clean" else str(r["severity"])
        change = "" if r["corruption"] == "clean" else f"{r['accuracy'] - clean:+.4f}"
        line = f"| {r['corruption']} | {sev} | {r['accuracy']:.4f} | {change} |"
        if explained:
            e = r.get("explain") or {}
            cells = [e.get("deletion_auc"), e.get("deletion_auc_random"), e.get("ink_relevance")]
            line += f" {e.get('method', '')} |"
            line += "".join(f" {v:.4f} |" if isinstance(v, (int, float)) else " |" for v in cells)
        lines.append(line)
    return "\n".join(lines)
