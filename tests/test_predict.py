"""Inference CLI (keras_digits.predict) and submission files (keras_digits.submit) on a tiny exported run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, tiny_test_split
from PIL import Image

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.cli import run_cli


@pytest.fixture(scope="module")
def test_pngs(tiny, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """All test images of the tiny run as PNG files in class subfolders (labels by file order)."""
    root = tmp_path_factory.mktemp("test_pngs")
    x, y = tiny_test_split(tiny)
    for i, (im, label) in enumerate(zip(x, y)):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(im[..., 0]).save(root / str(label) / f"{i:05d}.png")
    return root, y


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def good_folder(tiny, root: Path, n: int = 4) -> tuple[Path, list[int]]:
    """n test images as PNG (28x28 grey) plus one 56x56 RGB JPEG of image 0; returns truth for the PNGs."""
    x, y = tiny_test_split(tiny)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(x[i, ..., 0]).save(root / f"{i}.png")
    Image.fromarray(x[0, ..., 0]).convert("RGB").resize((56, 56), Image.BILINEAR).save(root / "big.jpg", quality=95)
    return root, [int(v) for v in y[:n]]


# ---------------------------------------------------------------------------- predict
def test_predict_folder_matches_run_test_accuracy(tiny, test_pngs, tmp_path, capsys):
    from keras_digits import predict

    root, _ = test_pngs
    out = tmp_path / "preds.csv"
    assert (
        run_cli(
            predict.main,
            ["--model", str(tiny["model"]), "--preprocess", "none", str(root), "--out", str(out), "--batch-size", "32"],
        )
        == 0
    )
    rows = read_csv(out.read_text())
    assert list(rows[0]) == ["file", "label", "class_id", "confidence", "top_k"]
    assert len(rows) == 100
    truth = np.array([int(Path(r["file"]).parent.name) for r in rows])
    pred = np.array([int(r["class_id"]) for r in rows])
    accuracy = float((pred == truth).mean())
    expected = json.loads((tiny["run"] / "metrics.json").read_text())["test"]["accuracy"]
    assert abs(accuracy - expected) <= 1e-4, (accuracy, expected)
    for r in rows:
        top = [item.split(":") for item in r["top_k"].split(";")]
        assert len(top) == 3
        assert int(top[0][0]) == int(r["class_id"]) and r["label"] == r["class_id"]
        assert abs(float(top[0][1]) - float(r["confidence"])) < 1e-4
        assert [float(p) for _, p in top] == sorted((float(p) for _, p in top), reverse=True)
    assert "100 prediction(s) written" in capsys.readouterr().err


def test_predict_matches_keras_model_per_image(tiny, test_pngs, capsys):
    from keras_digits import predict
    from keras_digits.evaluation.runs import load_run

    root, _ = test_pngs
    assert (
        run_cli(predict.main, ["--model", str(tiny["model"]), "--preprocess", "none", str(root), "--top-k", "20"]) == 0
    )
    rows = read_csv(capsys.readouterr().out)
    x, _ = tiny_test_split(tiny)
    probs = load_run(tiny["run"])[1].predict(x.astype(np.float32), verbose=0)
    for r in rows:
        i = int(Path(r["file"]).stem)
        assert int(r["class_id"]) == int(probs[i].argmax())
        assert abs(float(r["confidence"]) - float(probs[i].max())) < 1e-5
        assert len(r["top_k"].split(";")) == 10  # --top-k is capped at the class count


def test_bad_files_are_named_and_skipped_exit_1(tiny, tmp_path, capsys):
    from keras_digits import predict

    root, truth = good_folder(tiny, tmp_path / "imgs")
    good = (root / "0.png").read_bytes()
    (root / "sub").mkdir()
    (root / "sub" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "sub" / "notes.txt").write_text("not an image\n")
    (root / ".hidden.png").write_bytes(b"ignored")
    out = tmp_path / "out.csv"
    code = run_cli(
        predict.main,
        ["--model", str(tiny["model"]), "--preprocess", "none", str(root), "--out", str(out), "--batch-size", "2"],
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png" in err and "notes.txt" in err and ".hidden" not in err
    rows = read_csv(out.read_text())
    assert sorted(Path(r["file"]).name for r in rows) == ["0.png", "1.png", "2.png", "3.png", "big.jpg"]
    by_name = {Path(r["file"]).name: int(r["class_id"]) for r in rows}
    for i, label in enumerate(truth):
        assert by_name[f"{i}.png"] == label
    assert by_name["big.jpg"] == by_name["0.png"]  # an RGB image of another size: resized in the graph


def test_explicit_non_image_file_and_progress(tiny, tmp_path, capsys):
    from keras_digits import predict

    root, _ = good_folder(tiny, tmp_path / "imgs", n=2)
    junk = tmp_path / "junk.png"
    junk.write_text("hello")
    code = run_cli(
        predict.main,
        [
            "--model",
            str(tiny["model"]),
            "--preprocess",
            "none",
            str(root / "0.png"),
            str(junk),
            str(root / "1.png"),
            "--progress",
        ],
    )
    captured = capsys.readouterr()
    assert code == 1
    assert [Path(r["file"]).name for r in read_csv(captured.out)] == ["0.png", "1.png"]
    assert f"skipped {junk}" in captured.err and "predict 3/3" in captured.err


@pytest.mark.parametrize("case", ["missing_model", "not_a_saved_model", "missing_path"])
def test_usage_errors_one_line_exit_2(tiny, tmp_path, capsys, case):
    from keras_digits import predict

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    model, paths = str(tiny["model"]), [str(img)]
    if case == "missing_model":
        model = str(tmp_path / "nope")
    elif case == "not_a_saved_model":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    else:
        paths.append(str(tmp_path / "missing.png"))
    assert run_cli(predict.main, ["--model", model, *paths]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err)
    assert captured.out == ""


def test_model_folder_resolves_latest_version(tmp_path):
    from keras_digits.serving.model_files import resolve_model

    def resolve_model_dir(path):
        fmt, found = resolve_model(path)
        assert fmt == "saved_model"
        return found

    for v in ("1", "2", "10", "tmp"):
        (tmp_path / "m" / v).mkdir(parents=True)
        (tmp_path / "m" / v / "saved_model.pb").write_bytes(b"")
    (tmp_path / "m" / "11").mkdir()  # no saved_model.pb: not a version
    assert resolve_model_dir(tmp_path / "m") == tmp_path / "m" / "10"
    assert resolve_model_dir(tmp_path / "m" / "2") == tmp_path / "m" / "2"
    with pytest.raises(KerasDigitsError, match="not a SavedModel"):
        resolve_model_dir(tmp_path / "m" / "11")


def test_module_entry_points_exit_2_with_one_line(tmp_path):
    """`python -m keras_digits.{export,predict,submit}` on bad input: exit 2, one `error:` line.

    One fresh interpreter runs the three modules as __main__ (runpy), so TensorFlow is imported once."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    nope = str(tmp_path / "nope")
    calls = [
        ("keras_digits.export", ["--run", nope]),
        ("keras_digits.predict", ["--model", nope, str(img)]),
        ("keras_digits.submit", ["--model", nope, "--images", str(tmp_path)]),
    ]
    script = (
        "import contextlib, io, json, runpy, sys\n"
        f"for mod, args in {calls!r}:\n"
        "    sys.argv = [mod, *args]\n"
        "    err, out = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
        "            code = 0\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code\n"
        "    print(json.dumps([mod, code, err.getvalue(), out.getvalue()]))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [r[0] for r in results] == [m for m, _ in calls]
    expected = [
        f"error: run directory not found: {nope}",
        f"error: model not found: {nope}",
        f"error: model not found: {nope}",
    ]
    for (mod, code, err, out), line in zip(results, expected):
        assert code == 2, (mod, err)
        assert one_error_line(err) == line, mod
        assert out == ""


# ---------------------------------------------------------------------------- submit
@pytest.fixture(scope="module")
def submit_images(tiny, tmp_path_factory) -> Path:
    """Images 1.png .. 12.png (test images 0..11) plus a README that is not an image."""
    root = tmp_path_factory.mktemp("submit")
    x, _ = tiny_test_split(tiny)
    for i in range(12):
        Image.fromarray(x[i, ..., 0]).save(root / f"{i + 1}.png")
    (root / "README.txt").write_text("test images\n")
    return root


def expected_labels(tiny, n: int = 12) -> list[int]:
    import tensorflow as tf

    x, _ = tiny_test_split(tiny)
    fn = tf.saved_model.load(str(tiny["model"])).signatures["serving_default"]
    return [int(v) for v in fn(images=tf.constant(x[:n]))["class_id"].numpy()]


def test_submit_ids_format_sorted_zero_padded(tiny, submit_images, tmp_path, capsys):
    from keras_digits import submit

    root = submit_images
    out = tmp_path / "submission.csv"
    assert (
        run_cli(
            submit.main,
            [
                "--model",
                str(tiny["model"]),
                "--preprocess",
                "none",
                "--images",
                str(root),
                "--out",
                str(out),
                "--id-width",
                "5",
            ],
        )
        == 0
    )
    labels = expected_labels(tiny)
    assert out.read_text() == "id,label\n" + "".join(f"{i + 1:05d},{labels[i]}\n" for i in range(12))
    assert "README.txt" in capsys.readouterr().err  # a non-image is noted, not fatal


def test_submit_kaggle_format(tiny, submit_images, tmp_path):
    from keras_digits import submit

    root = submit_images
    out = tmp_path / "kaggle.csv"
    assert (
        run_cli(
            submit.main,
            [
                "--model",
                str(tiny["model"]),
                "--preprocess",
                "none",
                "--images",
                str(root),
                "--out",
                str(out),
                "--format",
                "kaggle",
                "--label",
                "id",
            ],
        )
        == 0
    )
    labels = expected_labels(tiny)
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert lines[1:] == [f"{i + 1},{labels[i]}" for i in range(12)]  # numeric order: 1, 2, ..., 10, 11, 12


def test_submit_rows_and_ids():
    from keras_digits.serving.predictor import Prediction
    from keras_digits.serving.submission import make_rows

    def pred(name, cid):
        return Prediction(Path(name), np.eye(3)[cid], cid, "abc"[cid])

    preds = [pred("d/10.png", 0), pred("d/9.png", 1), pred("d/x.png", 2), pred("d/0002.png", 1)]
    assert make_rows(preds, "ids", 3) == [("002", "b"), ("009", "b"), ("010", "a"), ("x", "c")]
    assert make_rows(preds[:2], "ids", 0, label="id") == [("9", "1"), ("10", "0")]
    with pytest.raises(KerasDigitsError, match="numeric"):
        make_rows(preds, "kaggle", 5)
    with pytest.raises(KerasDigitsError, match="duplicate id 00009"):
        make_rows([pred("a/9.png", 0), pred("b/009.jpg", 1)], "ids", 5)


def test_submit_corrupt_image_writes_nothing_exit_1(tiny, tmp_path, capsys):
    from keras_digits import submit

    root, _ = good_folder(tiny, tmp_path / "imgs", n=2)
    (root / "big.jpg").unlink()
    (root / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "submission.csv"
    assert (
        run_cli(
            submit.main,
            ["--model", str(tiny["model"]), "--preprocess", "none", "--images", str(root), "--out", str(out)],
        )
        == 1
    )
    assert "7.png" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".submission*")) == []


@pytest.mark.parametrize("case", ["missing_images", "missing_model", "kaggle_non_numeric"])
def test_submit_usage_errors_exit_2(tiny, tmp_path, capsys, case):
    from keras_digits import submit

    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / ("a.png" if case == "kaggle_non_numeric" else "1.png"))
    args = ["--model", str(tiny["model"]), "--images", str(root), "--out", str(tmp_path / "s.csv")]
    if case == "missing_images":
        args[3] = str(tmp_path / "nope")
    elif case == "missing_model":
        args[1] = str(tmp_path / "nope")
    else:
        args += ["--format", "kaggle"]
    assert run_cli(submit.main, args) == 2
    one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.csv").exists()
