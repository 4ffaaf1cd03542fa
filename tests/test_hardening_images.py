"""Issue 25 (items 5, 7 and 9): large images decoded within bounded memory, transparency read as background,
predict refusing a --preprocess none it cannot honour, explain --images seeing what predict feeds the model,
a dropped --contrast said, and explain over a symbolic-link RUN/explain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, one_error_line, run_main
from PIL import Image, ImageDraw

from keras_digits.data import folder
from keras_digits.data.folder import read_image


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    Image.fromarray(arr, mode).save(path, **kw)
    return path


def paper_digit(path: Path, size: tuple[int, int] = (90, 70)) -> Path:
    """A dark '7' drawn off-centre on light paper: what the digit normalisation is for."""
    im = Image.new("L", size, 235)
    d = ImageDraw.Draw(im)
    d.line([(8, 8), (40, 8), (20, 50)], fill=20, width=5)
    im.save(path)
    return path


# ---------------------------------------------------------------------------- 5. large images
def test_large_images_are_reduced_while_decoded(tmp_path, monkeypatch):
    long = np.zeros((300, 4100), np.uint8)
    long[:, 2050:] = 255
    got = read_image(save(long, tmp_path / "long.png"), None)
    assert got.shape == (100, 1367, 1) and max(got.shape) <= folder.MAX_SIDE  # reduced by 3, box-averaged
    assert got[:, :680].max() == 0 and got[:, 690:].min() == 255
    monkeypatch.setattr(folder, "MAX_SIDE", 64)
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:, 150:] = (255, 0, 0)
    for name in ("wide.png", "wide.jpg", "wide.tif"):
        got = read_image(save(rgb, tmp_path / name), None)
        assert max(got.shape[:2]) <= 64 and got.shape[2] == 3, name
        assert abs(int(got[20, -5, 0]) - 255) < 8 and got[20, 5].max() < 8, name
    grey = read_image(tmp_path / "wide.png", 28, "L")  # the folder loader's call
    assert grey.shape == (28, 28, 1)


def test_read_image_never_holds_a_full_size_array(tmp_path):
    """numpy never holds the 4000 x 4000 RGB image (48 MB): only strips and the reduced result (12 MB)."""
    path = save(np.full((4000, 4000, 3), 200, np.uint8), tmp_path / "big.png")
    tracemalloc.start()
    try:
        got = read_image(path, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == (2000, 2000, 3) and (got == 200).all()
    assert peak < 20 * 2**20, peak


def test_too_large_images_are_one_skip_line(tiny, tmp_path, monkeypatch, capsys):
    from keras_digits import predict

    monkeypatch.setattr(folder, "MAX_DECODE_BYTES", 5000)
    big = save(np.zeros((100, 100), np.uint8), tmp_path / "big.png")
    small = save(np.zeros((20, 20), np.uint8), tmp_path / "small.png")
    with pytest.raises(folder.ImageTooLarge, match="100 x 100 L image needs"):
        read_image(big, None)
    code, out, err = run_main(predict.main, ["--model", tiny["model"], big, small], capsys)
    assert code == 1 and "small.png" in out and "big.png" not in out
    assert f"skipped {big}: ImageTooLarge: 100 x 100 L image needs" in err and "Traceback" not in err


def test_decompression_bombs_are_refused_quietly_everywhere(tmp_path, monkeypatch):
    from keras_digits.explain import select

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = save(np.zeros((40, 40), np.uint8), tmp_path / "a.png")  # 1600 px: Pillow only warns
    bomb = save(np.zeros((50, 50), np.uint8), tmp_path / "b.png")  # 2500 px: Pillow refuses
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(warned, None).shape == (40, 40, 1)  # reduced here: no DecompressionBombWarning
    with pytest.raises(folder.ImageTooLarge, match="decompression bomb"):
        read_image(bomb, None)
    sel = select.from_files([str(warned), str(bomb)], (28, 28, 1))  # explain --images: skipped, no traceback
    assert sel.names == [str(warned)] and sel.skipped[0][0] == str(bomb) and "ImageTooLarge" in sel.skipped[0][1]


def test_folder_loader_skips_a_too_large_image(tmp_path, monkeypatch, capsys):
    from keras_digits.data.registry import DATASETS

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            save(np.full((10, 10), 40 * i, np.uint8), tmp_path / cls / f"{i}.png")
    save(np.zeros((60, 60), np.uint8), tmp_path / "a" / "huge.png")
    monkeypatch.setattr(folder, "MAX_DECODE_BYTES", 1000)
    raw = folder.load_folder(DATASETS["folder"], tmp_path)
    assert raw.train[0].shape == (4, 28, 28, 1)
    assert "huge.png (unreadable: ImageTooLarge)" in capsys.readouterr().err


def test_predict_batches_and_chunks_are_bounded_in_bytes(tiny, tmp_path, monkeypatch):
    from keras_digits.serving import predictor as predict

    predictor = predict.Predictor(tiny["model"], "none")
    sizes: list[int] = []
    real = predictor.predict_batch
    monkeypatch.setattr(predictor, "predict_batch", lambda b: (sizes.append(len(b)), real(b))[1])
    monkeypatch.setattr(predict, "BATCH_BYTES", 3 * 28 * 28)
    images = [np.zeros((28, 28, 1), np.uint8)] * 10
    assert len(list(predictor.predict_images(images, batch_size=64))) == 10
    assert sizes == [3, 3, 3, 1]
    files = [save(np.zeros((28, 28), np.uint8), tmp_path / f"{i}.png") for i in range(10)]
    chunks: list[int] = []
    real_images = predictor.predict_images
    monkeypatch.setattr(predictor, "predict_images", lambda ims, bs: (chunks.append(len(ims)), real_images(ims, bs))[1])
    monkeypatch.setattr(predict, "CHUNK_BYTES", 4 * 28 * 28)
    assert len(list(predictor.predict_files(files, batch_size=64))) == 10
    assert chunks == [4, 4, 2]


def peak_rss_mib(*argv: str) -> tuple[float, subprocess.CompletedProcess]:
    """Peak RSS (MiB) of one `python -m ...` child (the only child this process waits for meanwhile)."""
    code = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(p.stderr); "
        "sys.exit(p.returncode)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    return int(done.stdout.split()[-1]) / 1024, done


@pytest.mark.slow
def test_huge_png_peak_memory_through_predict(tiny, tmp_path):
    """The issue's reproduction: a 12000 x 12000 white RGB PNG (5.8 GB peak, 72 s before) and a 10000 x 10000
    grey one (3.3 GB) through predict --preprocess digit, plus the largest RGB PNG still read (8000 x 8000):
    each stays under 1 GiB of peak memory, TensorFlow included; the 12000 x 12000 RGB one is skipped with a line."""
    Image.new("RGB", (12000, 12000), "white").save(tmp_path / "rgb.png")
    Image.new("RGB", (8000, 8000), "white").save(tmp_path / "rgb8k.png")
    Image.new("L", (10000, 10000), 255).save(tmp_path / "grey.png")
    save(np.zeros((28, 28), np.uint8), tmp_path / "small.png")
    rss = {}
    for name in ("small", "rgb", "rgb8k", "grey"):
        rss[name], done = peak_rss_mib(
            "keras_digits.predict",
            "--model",
            str(tiny["model"]),
            "--preprocess",
            "digit",
            str(tmp_path / f"{name}.png"),
        )
        if name == "rgb":
            assert done.returncode == 1 and "downscale it first" in done.stderr, done.stderr[-2000:]
        else:
            assert done.returncode == 0, done.stderr[-2000:]
    print(rss)
    assert max(rss.values()) < 1024, rss


# ---------------------------------------------------------------------------- 9. transparency
def test_transparent_pixels_are_background_never_hidden_colour(tmp_path):
    hidden = np.zeros((40, 40, 4), np.uint8)
    hidden[10:30, 18:22, :3] = 255  # a white bar a viewer does not show: alpha 0 everywhere
    notes: list[str] = []
    got = read_image(save(hidden, tmp_path / "hidden.png", "RGBA"), None, notes=notes)
    assert got.shape == (40, 40, 3) and got.max() == 0
    assert notes == ["fully transparent: read as a blank (black) image"]

    dark = np.zeros((40, 40, 4), np.uint8)
    dark[10:30, 18:22, 3] = 255  # black ink on transparent: the background becomes white
    dark[5, 5, 3] = 128  # half-transparent black over white
    got = read_image(save(dark, tmp_path / "dark.png", "RGBA"), None, "L")[..., 0]
    assert got[0, 0] == 255 and got[20, 20] == 0 and got[5, 5] == 127

    light = np.full((40, 40, 4), 255, np.uint8)
    light[..., 3] = 0
    light[10:30, 18:22, 3] = 255  # white ink on transparent (hidden colour white too): the background is black
    got = read_image(save(light, tmp_path / "light.png", "RGBA"), None, "L")[..., 0]
    assert got[0, 0] == 0 and got[20, 20] == 255

    la = save(dark[..., [0, 3]], tmp_path / "la.png", "LA")
    assert read_image(la, None)[0, 0, 0] == 255 and read_image(la, None)[20, 20, 0] == 0
    pal = Image.fromarray((dark[..., 3] > 200).astype(np.uint8), "P")
    pal.putpalette([0, 255, 0, 0, 0, 80] + [0] * 762)
    pal.save(tmp_path / "p.gif", transparency=0)  # index 0 (green) is the transparent colour
    got = read_image(tmp_path / "p.gif", None)
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[20, 20]) == (0, 0, 80)

    opaque = np.random.default_rng(0).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    opaque[..., 3] = 255  # an opaque RGBA file reads exactly as its RGB
    assert np.array_equal(read_image(save(opaque, tmp_path / "o.png", "RGBA"), None), opaque[..., :3])
    big = np.zeros((300, 400, 4), np.uint8)
    big[100:200, 150:250, 3] = 255
    path = save(big, tmp_path / "big.png", "RGBA")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folder, "MAX_SIDE", 100)  # reduced in premultiplied strips, composited after
        got = read_image(path, None, "L")[..., 0]
    assert got.shape == (75, 100) and got[5, 5] == 255 and got[37, 50] == 0


def test_predict_says_a_fully_transparent_file_is_blank(tiny, tmp_path, capsys):
    from keras_digits import predict

    hidden = np.zeros((28, 28, 4), np.uint8)
    hidden[4:24, 12:16, :3] = 255
    path = save(hidden, tmp_path / "ghost.png", "RGBA")
    code, out, err = run_main(predict.main, ["--model", tiny["model"], "--preprocess", "none", path], capsys)
    assert code == 0 and "ghost.png" in out
    assert f"note: {path}: fully transparent: read as a blank (black) image" in err


# ---------------------------------------------------------------------------- 9. predict --preprocess none
@pytest.fixture(scope="module")
def digit_export(tiny, tmp_path_factory) -> Path:
    from keras_digits.serving.export_run import export_run

    return export_run(tiny["run"], tmp_path_factory.mktemp("digit_export") / "digit", 1, preprocess="digit")


def test_preprocess_none_is_refused_for_a_digit_export(digit_export, tmp_path, capsys):
    from keras_digits import predict, submit
    from keras_digits.serving.predictor import Predictor

    (tmp_path / "imgs").mkdir()
    path = save(np.zeros((28, 28), np.uint8), tmp_path / "imgs" / "1.png")
    code, out, err = run_main(predict.main, ["--model", digit_export, "--preprocess", "none", path], capsys)
    assert code == 2 and not out
    assert "--preprocess none" in one_error_line(err) and "exported with --preprocess digit" in err
    code, _, err = run_main(
        submit.main,
        ["--model", digit_export, "--preprocess", "none", "--images", tmp_path / "imgs", "--out", tmp_path / "s.csv"],
        capsys,
    )
    assert code == 2 and "--preprocess none" in one_error_line(err) and not (tmp_path / "s.csv").exists()
    assert Predictor(digit_export, "auto").preprocess == "none"  # normalised once, in the signature
    assert Predictor(digit_export, "digit").preprocess == "none"


# ---------------------------------------------------------------------------- 9. explain: input, contrast; 7. link
FAST = ["--method", "saliency", "--quiet"]


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    """The tiny mnist run, copied so that explain may write into it."""
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("logs"))
    return run


def explain(args, capsys):
    from keras_digits.explain.cli import main

    return run_main(main, args, capsys)


def test_explain_images_see_what_predict_feeds_the_model(tiny, run_copy, tmp_path, capsys):
    import tensorflow as tf

    from keras_digits import predict
    from keras_digits.data.digit_norm import normalize_batch

    path = paper_digit(tmp_path / "seven.png")
    code, out, err = run_main(predict.main, ["--model", tiny["model"], path], capsys)  # auto: digit for mnist
    assert code == 0, err
    predicted = int(out.splitlines()[1].split(",")[2])
    code, _, err = explain(["--run", run_copy, "--images", path, "--out", tmp_path / "ex", *FAST], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert info["preprocess"] == "digit" and info["rows"][0]["pred"] == predicted
    normalised, _ = normalize_batch(tf.constant(read_image(path, None)[None]))
    with np.load(tmp_path / "ex" / "inputs.npz") as d:  # the grid's input column: the model's input
        assert np.abs(d["images"].astype(int) - normalised.numpy().astype(int)).max() <= 1
    code, _, err = explain(
        ["--run", run_copy, "--images", path, "--preprocess", "none", "--out", tmp_path / "raw", *FAST], capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "raw" / "explain.json").read_text())["preprocess"] == "none"
    with np.load(tmp_path / "raw" / "inputs.npz") as d:
        assert d["images"][0, 0, 0, 0] > 200  # light paper, as the file is


def test_explain_says_when_the_contrast_is_dropped(tiny, run_copy, tmp_path, capsys):
    from conftest import tiny_test_split

    from keras_digits.evaluation.runs import load_run

    x, _ = tiny_test_split(tiny)
    _, model = load_run(run_copy)
    preds = model.predict(x[:40].astype(np.float32), verbose=0).argmax(axis=1)
    a = 0
    b = int(np.flatnonzero(preds != preds[a])[0])
    files = [save(x[i, ..., 0], tmp_path / f"{n}.png") for n, i in (("a", a), ("b", b))]
    code, _, err = explain(
        [
            "--run",
            run_copy,
            "--images",
            *files,
            "--preprocess",
            "none",
            "--contrast",
            str(preds[a]),
            "--out",
            tmp_path / "ex",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert f"note: --contrast {preds[a]}: 1 image(s) whose target is that class itself" in err and str(files[0]) in err
    info = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert [r["contrast"] for r in info["rows"]] == [-1, int(preds[a])]
    assert info["contrast_dropped"] == [str(files[0])]


def test_explain_into_a_linked_run_explain_keeps_the_link_and_leaves_nothing(run_copy, tmp_path, capsys):
    path = paper_digit(tmp_path / "seven.png")
    target = tmp_path / "elsewhere" / "explain"
    target.mkdir(parents=True)
    (run_copy / "explain").symlink_to(target, target_is_directory=True)
    for _ in range(2):  # a fresh target, then one explain wrote
        code, out, err = explain(["--run", run_copy, "--images", path, *FAST], capsys)
        assert code == 0, err
        assert (run_copy / "explain").is_symlink() and (run_copy / "explain").resolve() == target.resolve()
        assert (target / "explain.json").is_file() and (target / "grid.png").is_file()
        assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".explain")]
        assert not [p.name for p in target.parent.iterdir() if p.name != "explain"]
    assert "<h2>Explanations</h2>" in (run_copy / "report.html").read_text()
