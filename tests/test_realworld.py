"""Real-world inputs: MNIST-style digit normalisation (in TF ops, in predict and inside an export),
scoring a run on another dataset, and robustness under corruptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keras_digits.errors import KerasDigitsError


def blob(rng, dark: bool) -> np.ndarray:
    """An ellipse of random size anywhere on a larger noisy canvas, light on dark or dark on light."""
    big_h, big_w = rng.integers(40, 120, 2)
    h, w = rng.integers(8, min(big_h, big_w) - 4, 2)
    r = rng.integers(h // 2 + 1, big_h - h // 2 - 1)
    c = rng.integers(w // 2 + 1, big_w - w // 2 - 1)
    yy, xx = np.mgrid[:big_h, :big_w]
    ink = (((yy - r) / (h / 2)) ** 2 + ((xx - c) / (w / 2)) ** 2 <= 1) * 230.0 + rng.uniform(0, 15, (big_h, big_w))
    return np.clip(255 - ink if dark else ink, 0, 255).astype(np.uint8)[..., None]


def ink_geometry(img: np.ndarray) -> tuple[int, float, float]:
    """(longer side of the ink's box, centre of mass row, column) of a normalised 28x28 image."""
    o = img[..., 0].astype(np.float64)
    rows, cols = np.flatnonzero(o.max(axis=1) > 0), np.flatnonzero(o.max(axis=0) > 0)
    m = o.sum()
    return (
        max(np.ptp(rows), np.ptp(cols)) + 1,
        float((o * np.arange(28)[:, None]).sum() / m),
        float((o * np.arange(28)[None, :]).sum() / m),
    )


@pytest.mark.parametrize("dark", [False, True])
def test_normalised_digit_is_20px_and_centred(dark):
    from keras_digits.data.digit_norm import normalize_batch

    rng = np.random.default_rng(1 if dark else 0)
    for _ in range(6):
        out, ink = normalize_batch(blob(rng, dark)[None])
        assert out.shape == (1, 28, 28, 1) and bool(ink[0])
        side, cy, cx = ink_geometry(out.numpy()[0])
        # an integer shift, as MNIST's own: within half a pixel, plus the rounding onto the uint8 grid
        assert abs(side - 20) <= 1 and abs(cy - 14) <= 0.51 and abs(cx - 14) <= 0.51, (side, cy, cx)


def test_blank_image_passes_through_and_is_reported():
    import tensorflow as tf

    from keras_digits.data.digit_norm import normalize_digits

    flat = np.full((1, 50, 40, 3), 200, np.uint8)
    out, ink = normalize_digits(tf.constant(flat))
    assert not bool(ink[0]) and np.allclose(out.numpy(), 200)


# ---------------------------------------------------------------------------- digits rendered with a font
def font_digits(n: int, seed: int, raw: bool) -> tuple[np.ndarray, np.ndarray]:
    """Digits drawn with matplotlib's DejaVu fonts. raw=False: white on black, MNIST-normalised (a
    training set of the MNIST kind); raw=True: dark on light at random sizes, positions and aspect
    ratios on larger noisy canvases, as a photo or scan would give them (lists of arrays)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    from keras_digits.data.digit_norm import normalize_batch

    fonts = [
        str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f)
        for f in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    ]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        k = int(rng.integers(0, 10))
        font = ImageFont.truetype(fonts[int(rng.integers(0, len(fonts)))], int(rng.integers(24, 72)))
        x0, y0, x1, y1 = font.getbbox(str(k))
        glyph = Image.new("L", (x1 + 4, y1 + 4), 0)
        ImageDraw.Draw(glyph).text((2, 2), str(k), fill=255, font=font)
        glyph = glyph.crop((x0, y0, x1 + 4, y1 + 4)).rotate(float(rng.uniform(-10, 10)), expand=True)
        gw, gh = glyph.size
        glyph = glyph.resize((max(4, int(gw * rng.uniform(0.7, 1.4))), gh))
        gw, gh = glyph.size
        canvas_w, canvas_h = gw + int(rng.integers(4, 60)), gh + int(rng.integers(4, 60))
        canvas = np.zeros((canvas_h, canvas_w), np.float64)
        top, left = int(rng.integers(0, canvas_h - gh + 1)), int(rng.integers(0, canvas_w - gw + 1))
        canvas[top : top + gh, left : left + gw] = np.asarray(glyph, np.float64)
        if raw:
            canvas = np.clip(235 - canvas * 0.85 + rng.normal(0, 6, canvas.shape), 0, 255)
            images.append(canvas.astype(np.uint8)[..., None])
        else:
            images.append(normalize_batch(canvas.astype(np.uint8)[None, ..., None])[0].numpy()[0].astype(np.uint8))
        labels.append(k)
    return (images if raw else np.stack(images)), np.array(labels)


@pytest.fixture(scope="module")
def font_export(tmp_path_factory):
    """A simple_cnn_v1 run on font digits of the MNIST kind (saved as mnist.npz), exported twice:
    plain, and with the normalisation inside its signature."""
    from keras_digits.config import TrainConfig
    from keras_digits.serving.export_run import export_run
    from keras_digits.training.run import train_and_evaluate

    base = tmp_path_factory.mktemp("font")
    (base / "data").mkdir()
    x_tr, y_tr = font_digits(600, 0, raw=False)
    x_te, y_te = font_digits(200, 1, raw=False)
    np.savez_compressed(
        base / "data" / "mnist.npz", x_train=x_tr[..., 0], y_train=y_tr, x_test=x_te[..., 0], y_test=y_te
    )
    run = base / "run"
    train_and_evaluate(
        TrainConfig(arch="simple_cnn_v1", dataset="mnist", data_dir=str(base / "data"), epochs=3, verbose=0), run
    )
    plain = export_run(run, base / "saved" / "plain", 1)
    inside = export_run(run, base / "saved" / "digit", 1, preprocess="digit")
    return {"run": run, "data": base / "data", "plain": plain, "inside": inside}


def test_font_digits_need_the_normalisation(font_export):
    from keras_digits.serving.predictor import Predictor

    images, labels = font_digits(120, 2, raw=True)

    def accuracy(model_dir, mode):
        predictor = Predictor(model_dir, mode)
        ids = [r[2] for r in predictor.predict_images(images)]
        return float(np.mean(np.array(ids) == labels)), predictor

    raw, _ = accuracy(font_export["plain"], "none")
    digit, p = accuracy(font_export["plain"], "digit")
    auto, p_auto = accuracy(font_export["plain"], "auto")
    inside, p_inside = accuracy(font_export["inside"], "digit")
    print(f"font digits: accuracy {raw:.3f} as they are, {digit:.3f} normalised")
    assert digit >= raw + 0.3 and digit >= 0.7, (raw, digit)
    assert p_auto.preprocess == "digit" and auto == digit  # trained on "mnist": auto normalises
    assert p_inside.preprocess == "none" and inside == digit  # in the graph, not applied twice


def test_in_graph_and_predict_time_normalisation_agree(font_export):
    from keras_digits.serving.predictor import Predictor

    images, _ = font_digits(20, 3, raw=True)
    outside = Predictor(font_export["plain"], "digit")
    inside = Predictor(font_export["inside"], "none")
    for a, b in zip(outside.predict_images(images), inside.predict_images(images)):
        np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    config = json.loads((font_export["inside"] / "assets" / "config.json").read_text())
    assert config["preprocess"] == "digit"


# ---------------------------------------------------------------------------- evaluate elsewhere
def evaluate_cli(args, capsys):
    from conftest import run_main

    from keras_digits.evaluate import main

    return run_main(main, args, capsys)


def one_file(run: Path, pattern: str) -> Path:
    found = list(run.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_score_on_another_dataset_and_under_corruptions(font_export, capsys):
    run = font_export["run"]
    before = (run / "metrics.json").read_text()
    code, out, err = evaluate_cli(["--run", run, "--dataset", "digits"], capsys)
    assert code == 0, err
    digit_file = one_file(run, "metrics-digits-*-digit.json")
    result = json.loads(digit_file.read_text())  # auto: digit, trained on mnist
    assert result["preprocess"] == "digit" and result["test"]["n"] == 359 and "accuracy" in out
    code, out, err = evaluate_cli(["--run", run, "--dataset", "digits", "--preprocess", "none"], capsys)
    assert code == 0 and len(list(run.glob("metrics-digits-*.json"))) == 2
    code, out, err = evaluate_cli(
        ["--run", run, "--data-dir", font_export["data"], "--perturb", "noise:2", "blur", "--preprocess", "none"],
        capsys,
    )
    assert code == 0, err
    rob = json.loads(one_file(run, "robustness-mnist-test-*.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in rob["rows"]] == [("clean", 0), ("noise", 2)] + [
        ("blur", s) for s in range(1, 6)
    ]
    assert rob["rows"][0]["accuracy"] == json.loads(before)["test"]["accuracy"]  # clean = the run's own score
    assert "| blur | 5 |" in out
    assert (run / "metrics.json").read_text() == before  # the run's own figures are never replaced
    page = (run / "report.html").read_text()
    assert "Robustness" in page and digit_file.name in page


def test_label_map_renames_classes(font_export, tmp_path, capsys):
    swap = {"0": "1", "1": "0"}
    (tmp_path / "map.json").write_text(json.dumps(swap))
    code, _, err = evaluate_cli(
        ["--run", font_export["run"], "--dataset", "digits", "--label-map", tmp_path / "map.json"], capsys
    )
    assert code == 0, err
    mapped = one_file(font_export["run"], "metrics-digits-*-map-*-digit.json")
    assert json.loads(mapped.read_text())["label_map"] == swap


@pytest.mark.parametrize(
    "args, message",
    [
        (["--perturb", "fog"], "unknown corruption 'fog'; known: noise"),
        (["--perturb", "noise:9"], "severity of noise must be 1..5, got '9'"),
        (["--perturb", "grey"], "corruption grey needs colour images"),
        (["--dataset", "pathmnist"], "pathmnist has labels"),
        (["--dataset", "digits", "--label-map", "MAP_BAD_JSON"], "is not valid JSON"),
        (["--dataset", "digits", "--label-map", "MAP_BAD_VALUE"], "must map label names to label names"),
        (["--dataset", "digits", "--label-map", "MAP_UNKNOWN"], "names 'seven', which is not a label of digits"),
    ],
)
def test_bad_options_are_one_line(font_export, pathmnist_dir, tmp_path, capsys, args, message):
    from conftest import one_error_line

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "value.json").write_text('{"1": [1]}')
    (tmp_path / "unknown.json").write_text('{"seven": "7"}')
    subs = {
        "MAP_BAD_JSON": tmp_path / "bad.json",
        "MAP_BAD_VALUE": tmp_path / "value.json",
        "MAP_UNKNOWN": tmp_path / "unknown.json",
    }
    args = [subs.get(a, a) for a in args]
    if "pathmnist" in args:
        args += ["--data-dir", pathmnist_dir]
    run = font_export["run"]
    files = sorted(p.name for p in run.iterdir())
    code, _, err = evaluate_cli(["--run", run, "--data-dir", font_export["data"], *args], capsys)
    assert code == 2 and message in one_error_line(err)
    assert sorted(p.name for p in run.iterdir()) == files  # nothing written


def test_corruptions_are_seeded_and_change_the_images():
    from keras_digits.data import corrupt

    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    for name, sev in corrupt.parse(["all"], 3):
        a, b = corrupt.apply(x, name, sev, seed=1), corrupt.apply(x, name, sev, seed=1)
        assert a.dtype == np.uint8 and a.shape == x.shape and np.array_equal(a, b), name
        assert not np.array_equal(a, x), (name, sev)
    with pytest.raises(KerasDigitsError, match="needs colour"):
        corrupt.parse(["channel_mean"], 1)


@pytest.mark.real_data
def test_normalisation_is_nearly_a_no_op_on_real_mnist(tmp_path):
    """MNIST is already normalised this way: accuracy with --preprocess digit within 0.2 points of without."""
    from conftest import real_data_dir

    from keras_digits.config import TrainConfig
    from keras_digits.evaluation.crossdata import score_elsewhere
    from keras_digits.training.run import train_and_evaluate

    data = real_data_dir()
    if data is None:
        pytest.skip("real MNIST not found")
    run = tmp_path / "run"
    train_and_evaluate(
        TrainConfig(
            arch="simple_cnn_v1", dataset="mnist", data_dir=str(data), epochs=1, max_train_samples=20000, verbose=0
        ),
        run,
    )
    none, _ = score_elsewhere(run, "mnist", str(data), "test", "none", None, None)
    digit, _ = score_elsewhere(run, "mnist", str(data), "test", "digit", None, None)
    assert none["test"]["accuracy"] > 0.95
    assert abs(digit["test"]["accuracy"] - none["test"]["accuracy"]) <= 0.002, (none["test"], digit["test"])
