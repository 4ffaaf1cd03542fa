"""A run's report.md: the metrics table and the scores on other data and under corruptions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from keras_digits.utils.io import write_text


def metrics_markdown(metrics: dict, title: str = "") -> str:
    """A short markdown table of the headline metrics per split."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| split | accuracy | loss | macro F1 | AUC |", "| --- | --- | --- | --- | --- |"]
    for split, m in metrics.items():
        if not isinstance(m, dict) or "accuracy" not in m:
            continue
        auc = m.get("auc")
        lines.append(
            f"| {split} | {m['accuracy']:.4f} | {m['loss']:.4f} | {m['f1']:.4f} | "
            f"{'' if auc is None else f'{auc:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, text: str) -> None:
    """Write a markdown report atomically."""
    write_text(path, text)


RESULTS_MARK = "<!-- scores from keras_digits.evaluate: regenerated with the page, edits below are lost -->"


def robustness_table(rows: Sequence[dict]) -> str:
    """The robustness table: clean first, then each corruption and severity with its accuracy drop."""
    clean = next((r["accuracy"] for r in rows if r.get("corruption") == "clean"), None)
    lines = ["| corruption | severity | accuracy | change |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        first = r.get("corruption") == "clean"
        change = "" if first or clean is None else f"{r['accuracy'] - clean:+.4f}"
        lines.append(
            f"| {_cell(r.get('corruption'))} | {'' if first else _cell(r.get('severity'))} | "
            f"{r['accuracy']:.4f} | {change} |"
        )
    return "\n".join(lines)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else _cell(value)


def label_map_text(mapping: object) -> str:
    """A --label-map as `data → model, ...` (empty without one)."""
    if not isinstance(mapping, dict) or not mapping:
        return ""
    return ", ".join(f"{k} → {v}" for k, v in mapping.items())


def results_markdown(run_dir: str | Path) -> str:
    """Every metrics-*.json and robustness-*.json of a run as markdown, each labelled by what was scored."""
    from keras_digits.reporting.result_files import result_files

    run_dir = Path(run_dir)
    metric_files, damaged = result_files(run_dir, "metrics")
    robustness_files, damaged_robustness = result_files(run_dir, "robustness")
    damaged += damaged_robustness
    rows = []
    for path, m in metric_files:
        data = " · ".join(str(v) for v in (m.get("dataset"), m.get("source")) if v)
        for split, s in m.items():
            if isinstance(s, dict) and "accuracy" in s:
                rows.append(
                    f"| {_cell(path.name)} | {_cell(data)} | {_cell(split)} | {_num(s.get('n'))} | "
                    f"{_cell(m.get('preprocess', 'none'))} | {_cell(label_map_text(m.get('label_map')))} | "
                    f"{_num(s.get('accuracy'))} | {_num(s.get('f1'))} | {_num(s.get('auc'))} |"
                )
    parts = []
    if rows:
        parts += [
            "## Scores on other data",
            "",
            "| file | data | split | images | preprocessing | label map | accuracy | macro F1 | AUC |",
            "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    tables = []
    for path, r in robustness_files:
        good = [x for x in r.get("rows") or [] if isinstance(x, dict) and isinstance(x.get("accuracy"), (int, float))]
        if good:
            mapped = label_map_text(r.get("label_map"))
            tables += [
                f"### {_cell(r.get('dataset'))} {_cell(r.get('split'))} · {_cell(r.get('preprocess'))} "
                f"preprocessing · {_cell(r.get('n'))} images · seed {_cell(r.get('seed'))}"
                + (f" · label map {_cell(mapped)}" if mapped else "")
                + f" ({_cell(path.name)})",
                "",
                robustness_table(good),
                "",
            ]
    if tables:
        parts += ["## Robustness", "", *tables]
    if damaged:
        parts += ["Left out, damaged: " + "; ".join(_cell(d) for d in damaged), ""]
    return "\n".join(parts)


def update_results_markdown(run_dir: str | Path) -> None:
    """Rewrite the part of RUN/report.md below RESULTS_MARK from the run's result files (train's part kept)."""
    path = Path(run_dir) / "report.md"
    if not path.is_file():
        return
    head = path.read_text(encoding="utf-8").split(RESULTS_MARK)[0].rstrip("\n") + "\n"
    extra = results_markdown(run_dir)
    text = head + (f"\n{RESULTS_MARK}\n\n{extra}" if extra else "")
    if text != path.read_text(encoding="utf-8"):
        write_text(path, text)
