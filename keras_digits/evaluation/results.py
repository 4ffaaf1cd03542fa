"""What a score on other data is: label maps, its result file's name, merging rows; never one result over another."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.io import read_json_object


def read_label_map(path: str | Path) -> dict[str, str]:
    """{data label name: model label name} from a JSON object of strings."""
    try:
        data = read_json_object(path, "--label-map")
    except OSError as exc:
        raise KerasDigitsError(f"--label-map {path}: cannot read it ({exc.strerror or exc})") from None
    bad = [k for k, v in data.items() if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise KerasDigitsError(
            f"--label-map {path} must map label names to label names; {bad[0]!r} maps to {data[bad[0]]!r}"
        )
    return {str(k): str(v) for k, v in data.items()}


def class_mapping(
    model_names: Sequence[str], data_names: Sequence[str], label_map: dict[str, str] | None, dataset: str
) -> np.ndarray:
    """For each data class id, the model's class id; a mismatch is one error naming it."""
    model_names, data_names = [str(n) for n in model_names], [str(n) for n in data_names]
    if label_map is None:
        if model_names != data_names:
            diff = [f"{a!r} vs {b!r}" for a, b in zip(data_names, model_names, strict=False) if a != b][:3]
            raise KerasDigitsError(
                f"{dataset} has labels {data_names}, the model was trained on {model_names}"
                + (f" (first differences: {', '.join(diff)})" if diff else "")
                + "; give --label-map FILE.json mapping the data's names to the model's"
            )
        return np.arange(len(data_names))
    unknown = sorted(set(label_map) - set(data_names))
    if unknown:
        raise KerasDigitsError(
            f"--label-map names {unknown[0]!r}, which is not a label of {dataset} (its labels: {data_names})"
        )
    missing = [n for n in data_names if label_map.get(n, n) not in model_names]
    if missing:
        raise KerasDigitsError(
            f"{dataset} label {missing[0]!r} maps to no class of the model (model labels: "
            f"{model_names}); add it to --label-map"
        )
    return np.array([model_names.index(label_map.get(n, n)) for n in data_names])


def scoring_name(name: str, source: str, test_fingerprint: str, label_map: dict[str, str] | None, digit: bool) -> str:
    """What was scored, as a file-name part: [<folder>-]<fp>[-map-<h>][-digit] (see the module doc)."""
    parts = [re.sub(r"[^A-Za-z0-9_.+-]+", "_", Path(source).name or "data")] if name == "folder" else []
    parts.append(test_fingerprint[:8])
    if label_map:
        parts.append("map-" + hashlib.sha256(json.dumps(label_map, sort_keys=True).encode()).hexdigest()[:6])
    if digit:
        parts.append("digit")
    return "-".join(parts)


SCORING = ("dataset", "source", "preprocess", "trained_on", "label_map")  # what makes two scorings the same


def same_scoring(old: dict, new: dict, keys: Sequence[str] = ()) -> bool:
    """Whether result file content `old` scored what `new` does (then `new` may update it in place)."""
    for k in (*SCORING, *keys):
        if k == "trained_on" and k not in old:  # older files did not record it: the run's own model
            continue
        if old.get(k, "none" if k == "preprocess" else None) != new.get(k, "none" if k == "preprocess" else None):
            return False
    old_fps, new_fps = old.get("fingerprints") or {}, new.get("fingerprints") or {}
    return all(old_fps.get(s, fp) == fp for s, fp in new_fps.items())


def result_path(run_dir: Path, stem: str, head: dict, keys: Sequence[str] = ()) -> tuple[Path, dict]:
    """(RUN/<stem>.json, its content) when that file is free or holds the same scoring, else the first
    <stem>-2.json, -3... that is: a result is never written over another scoring's."""
    from keras_digits.utils.io import read_json_object

    for i in range(1, 1000):
        path = run_dir / (f"{stem}.json" if i == 1 else f"{stem}-{i}.json")
        if not path.exists():
            return path, {}
        old = read_json_object(path, lenient=True)
        if old and same_scoring(old, head, keys):
            return path, old
    raise KerasDigitsError(f"{run_dir} holds 999 results named {stem}-*.json; move some away")


def merge_rows(old: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """Robustness rows of `old` with those of `new` added: the same corruption and severity is replaced
    (the same scoring again), the clean row stays first."""
    rows = {(r.get("corruption"), r.get("severity")): r for r in old if isinstance(r, dict)}
    rows.update({(r["corruption"], r["severity"]): r for r in new})
    return sorted(rows.values(), key=lambda r: r.get("corruption") != "clean")
