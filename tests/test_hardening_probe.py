"""What a fresh probe of issue 25's classes found after the first round: a progressive JPEG sized by its
drafted pixels, symbolic links dropped without a word, damaged result files left out of the page in silence,
a numeric class name read two ways, and carriage returns in logs."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from conftest import run_main
from PIL import Image


def save(array: np.ndarray, path):
    Image.fromarray(array).save(path)
    return path


def test_a_progressive_jpeg_is_sized_by_its_whole_coefficients_not_its_draft(tmp_path, monkeypatch):
    from keras_digits.data import folder

    path = tmp_path / "prog.jpg"
    Image.new("RGB", (3000, 3000), (200, 100, 50)).save(path, "JPEG", progressive=True, quality=30)
    monkeypatch.setattr(folder, "MAX_DECODE_BYTES", 30 * 2**20)  # 3000 x 3000 x 2 x 3 coefficients: 54 MB
    with pytest.raises(folder.ImageTooLarge, match="3000 x 3000"):
        folder.read_image(path, None)
    baseline = tmp_path / "base.jpg"
    Image.new("RGB", (3000, 3000), (200, 100, 50)).save(baseline, "JPEG", quality=30)
    assert folder.read_image(baseline, None).shape == (1500, 1500, 3)  # drafted to half: 6.75 MB


def test_predict_names_a_broken_link_and_gives_a_linked_file_its_own_row(tiny, tmp_path, capsys):
    from keras_digits.predict import main as predict_main

    folder = tmp_path / "imgs"
    folder.mkdir()
    save(np.zeros((28, 28), np.uint8), folder / "1.png")
    save(np.full((28, 28), 255, np.uint8), folder / "4.png")
    (folder / "2.png").symlink_to(folder / "1.png")
    (folder / "3.png").symlink_to(folder / "missing.png")
    code, out, err = run_main(predict_main, ["--model", tiny["model"], folder], capsys)
    assert code == 1, err
    files = [line.split(",")[0] for line in out.splitlines()[1:]]
    assert [p.rsplit("/", 1)[-1] for p in files] == ["1.png", "2.png", "4.png"]
    assert f"skipped {folder / '3.png'}" in err


def test_the_folder_loader_names_a_broken_link(tmp_path, capsys):
    from keras_digits.data import get_spec
    from keras_digits.data.folder import load_folder

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            save(np.full((8, 8), 40 * i, np.uint8), tmp_path / name / f"{i}.png")
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    raw = load_folder(get_spec("folder"), tmp_path)
    assert len(raw.train[1]) == 6
    assert "gone.png" in capsys.readouterr().err


def test_report_names_damaged_result_files_and_a_damaged_metrics_file(tmp_path, capsys):
    from conftest import REPO

    from keras_digits.report import main as report_main

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run-before-rooms", run)
    (run / "metrics-mnist-deadbeef.json").write_text(json.dumps({"dataset": 5, "test": "x"}))
    (run / "robustness-digits-test-0-seed7.json").write_text("[1,2")
    (run / "metrics-foo.json").mkdir()
    code, out, err = run_main(report_main, ["--run", run], capsys)
    assert code == 0, err
    for name in ("metrics-mnist-deadbeef.json", "robustness-digits-test-0-seed7.json", "metrics-foo.json"):
        assert f"warning: left out of the report, damaged: {run / name}" in err
    page = (run / "report.html").read_text()
    assert "left out, damaged" in page and "metrics-mnist-deadbeef.json" in page
    assert "Left out, damaged" in (run / "report.md").read_text()

    (run / "metrics.json").write_text("not json")
    code, out, err = run_main(report_main, ["--run", run], capsys)
    assert code == 2 and "is not valid JSON" in err and "has not finished" not in err


def test_a_numeric_class_name_that_is_also_another_index_is_said(capsys):
    from keras_digits.explain.select import parse_class

    assert parse_class("2", ["10", "2", "5"], "--target") == 1
    assert "read as the class named '2' (index 1), not as index 2 (class '5')" in capsys.readouterr().err
    assert parse_class("1", ["0", "1", "2"], "--target") == 1
    assert capsys.readouterr().err == ""


def test_progress_written_to_a_file_has_no_carriage_returns():
    from keras_digits.serving.predictor import Progress

    stream = io.StringIO()
    progress = Progress(3, stream=stream)
    for _ in range(3):
        progress.update(1)
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and text.startswith("predict 3/3 (100%) ") and text.endswith(" img/s\n"), text


def test_evaluate_perturb_logs_no_retracing_warnings(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run-before-rooms", run)
    proc = subprocess.run(
        [sys.executable, "-m", "keras_digits.evaluate", "--run", str(run), "--perturb", "all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "retracing" not in proc.stderr, proc.stderr[-2000:]
    assert "[1/" in proc.stderr  # one progress line per corruption
