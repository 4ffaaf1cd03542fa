"""A run made before the library moved into rooms (tests/fixtures/run-before-rooms, written by
`python -m keras_digits.train --arch simple_cnn --epochs 1 --max-train-samples 300 --model-kwargs
'{"filters": [4, 8, 8]}'` at the commit before the move) still opens: report, evaluate, export and predict
work on it, and its best.keras loads through the package."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import REPO, run_main
from PIL import Image

FIXTURE = REPO / "tests" / "fixtures" / "run-before-rooms"


def test_a_run_from_before_the_move_still_opens(tmp_path, capsys):
    from keras_digits.evaluate import main as evaluate_main
    from keras_digits.evaluation.runs import load_run
    from keras_digits.export import main as export_main
    from keras_digits.predict import main as predict_main
    from keras_digits.report import main as report_main

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    recorded = json.loads((run / "metrics.json").read_text())

    code, out, err = run_main(report_main, ["--run", str(run)], capsys)
    assert code == 0 and (run / "report.html").is_file(), err

    _, model = load_run(run)
    assert model.count_params() > 0

    code, out, err = run_main(evaluate_main, ["--run", str(run), "--split", "test"], capsys)
    assert code == 0, err
    rescored = json.loads((run / "metrics.json").read_text())
    assert np.isclose(rescored["test"]["accuracy"], recorded["test"]["accuracy"])

    code, out, err = run_main(export_main, ["--run", str(run), "--out", str(tmp_path / "sm")], capsys)
    assert code == 0, err
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    code, out, err = run_main(predict_main, ["--model", str(tmp_path / "sm"), str(tmp_path / "x.png")], capsys)
    assert code == 0 and out.splitlines()[0].startswith("file,label"), err
