"""The demo page: the engine's functions directly, the Gradio page's wiring and error handling, the command's
errors, and (marker `browser`) the page driven in headless Chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO, free_ports, one_error_line, run_main, tiny_test_split

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _stroke_canvas(side: int = 280) -> np.ndarray:
    """An RGBA canvas as Gradio's sketchpad sends it: transparent, with a black vertical stroke (a "1")."""
    a = np.zeros((side, side, 4), np.uint8)
    a[side // 7 : side * 6 // 7, side // 2 - 10 : side // 2 + 10] = [0, 0, 0, 255]
    return a


@pytest.fixture(scope="module")
def mnist_demo(tiny):
    from keras_digits.app.engine import load

    return load(run=str(tiny["run"]))


@pytest.fixture(scope="module")
def digits_demo():
    """An untrained simple_cnn labelled as trained on scikit-learn's digits (their 8x8 style)."""
    from keras_digits.app.engine import DemoModel
    from keras_digits.models import build_model

    return DemoModel(build_model("simple_cnn", (28, 28, 1), 10), [str(i) for i in range(10)], "digits")


# ---------------------------------------------------------------------------- what the model sees
def test_mnist_style_steps_end_in_a_centred_28px_digit(mnist_demo):
    from keras_digits.app.engine import read_sketch

    assert mnist_demo.digit_style == (28, 20, None) and mnist_demo.preprocess_choices() == ["auto", "digit", "none"]
    x, steps, notes = mnist_demo.prepare(read_sketch({"composite": _stroke_canvas()}), "auto")
    assert x.shape == (28, 28, 1) and x.dtype == np.uint8 and not notes
    captions = [c for _, c in steps]
    assert captions[0].startswith("your image") and "polarity: inverted" in captions[1]
    assert captions[2:] == ["ink box", "scaled to 20 px", "centre of mass centred in 28x28"]
    rows = np.nonzero(x[..., 0].max(axis=1) > 0)[0]
    assert rows[-1] - rows[0] + 1 == 20  # the ink box's longer side is 20 px, as in MNIST


def test_digits_style_is_8x8_upsampled(digits_demo):
    from keras_digits.app.engine import read_sketch

    x, steps, _ = digits_demo.prepare(read_sketch({"composite": _stroke_canvas()}), "auto")
    assert x.shape == (28, 28, 1)
    assert [c for _, c in steps][-2:] == [
        "centre of mass centred in 8x8",
        "upsampled to 28x28, as the training digits were",
    ]


def test_none_only_fits_and_rgb_models_get_no_digit_choice():
    from keras_digits.app.engine import DemoModel, InputProblem
    from keras_digits.models import build_model

    rgb = DemoModel(build_model("simple_cnn_v1", (28, 28, 3), 9), [f"t{i}" for i in range(9)], "pathmnist")
    assert rgb.digit_style is None and rgb.preprocess_choices() == ["none"]
    photo = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    x, steps, _ = rgb.prepare(photo, "auto")
    assert x.shape == (28, 28, 3) and steps[-1][1] == "fitted to 28x28x3"
    with pytest.raises(InputProblem, match="no digit style"):
        rgb.prepare(photo, "digit")


def test_an_empty_canvas_is_a_message_not_a_crash(mnist_demo):
    from keras_digits.app.engine import InputProblem, read_sketch

    blank = read_sketch({"composite": np.zeros((280, 280, 4), np.uint8)})
    with pytest.raises(InputProblem, match="no digit found"):
        mnist_demo.answer(blank)
    with pytest.raises(InputProblem, match="nothing drawn"):
        read_sketch({"composite": None})


def test_bad_uploads_are_messages(tmp_path, monkeypatch):
    from keras_digits.app import engine

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(engine.InputProblem, match="not an image"):
        engine.read_upload(text)
    monkeypatch.setattr(engine, "MAX_UPLOAD_BYTES", 100)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 200)
    with pytest.raises(engine.InputProblem, match="larger than"):
        engine.read_upload(big)


# ---------------------------------------------------------------------------- answers
@pytest.mark.parametrize("method", ["gradcam", "saliency", "ig", "occlusion"])
def test_an_answer_has_probabilities_an_overlay_and_times(mnist_demo, tiny, method):
    x_test, y_test = tiny_test_split(tiny)
    answer = mnist_demo.answer(np.repeat(np.repeat(x_test[0], 3, 0), 3, 1), "none", method)
    assert set(answer.probabilities) == set(mnist_demo.label_names)
    assert sum(answer.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert answer.label == max(answer.probabilities, key=answer.probabilities.get)
    assert answer.overlay.shape == (224, 224, 3) and answer.overlay.dtype == np.uint8
    assert answer.overlay.std() > 0  # a map, not a blank square
    assert answer.predict_ms > 0 and answer.explain_ms > 0
    from keras_digits.app.engine import METHODS

    assert answer.explained == f"{METHODS[method]}: why {answer.label!r}"


def test_a_contrast_class_changes_the_explanation(mnist_demo, tiny):
    x_test, _ = tiny_test_split(tiny)
    plain = mnist_demo.answer(x_test[1], "none", "saliency")
    other = next(n for n in mnist_demo.label_names if n != plain.label)
    contrast = mnist_demo.answer(x_test[1], "none", "saliency", other)
    assert f"and not {other!r}" in contrast.explained
    assert not np.array_equal(plain.overlay, contrast.overlay)
    same = mnist_demo.answer(x_test[1], "none", "saliency", plain.label)
    assert "contrast class is the predicted class" in same.notes[0]


def test_examples_come_first_as_mistakes(mnist_demo, tmp_path):
    from keras_digits.app.engine import example_files

    files = example_files(mnist_demo, tmp_path, most=9)
    assert 0 < len(files) <= 9 and all(p.is_file() for p, _ in files)
    ex = mnist_demo.examples
    wrong = int((ex["probs"].argmax(-1) != ex["y"]).sum())
    assert sum("✗" in c for _, c in files) == min(wrong, 3)
    if wrong:
        assert "✗" in files[0][1]
    right = [c for _, c in files if "✗" not in c]
    assert len(set(right)) == min(len(right), mnist_demo.num_classes)  # correct ones from different classes


def test_an_example_fed_as_stored_gives_the_stored_prediction(mnist_demo):
    ex = mnist_demo.examples
    for i in range(min(5, len(ex["images"]))):
        answer = mnist_demo.answer(ex["images"][i], "none", "saliency")
        assert answer.class_id == int(ex["probs"][i].argmax())


def test_a_model_without_a_feature_map_has_no_gradcam_but_still_answers():
    from keras_digits.app.engine import DemoModel
    from keras_digits.models import build_model

    dense = DemoModel(build_model("dense", (28, 28, 1), 10), [str(i) for i in range(10)], "mnist")
    assert "gradcam" not in dense.methods() and "saliency" in dense.methods()
    answer = dense.answer(np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8), "none", "gradcam")
    assert answer.overlay is None and answer.label in dense.label_names and "no Grad-CAM map" in answer.notes[0]


def test_an_export_folder_with_model_keras_loads_with_its_examples(tiny, tmp_path, capsys):
    from keras_digits import export
    from keras_digits.app.engine import load

    out = tmp_path / "exp"
    assert run_main(export.main, ["--run", tiny["run"], "--out", out, "--format", "keras"], capsys)[0] == 0
    demo = load(model=str(out))
    assert demo.dataset == "mnist" and demo.label_names == [str(i) for i in range(10)] and demo.examples


# ---------------------------------------------------------------------------- the page
def test_label_names_are_shown_as_text():
    from keras_digits.app.page import plain

    assert plain("<b>cat</b> *x*") == "\\<b\\>cat\\</b\\> \\*x\\*"
    assert plain("$$x$$ a&amp;\n===") == "\\$\\$x\\$\\$ a\\&amp; \\=\\=\\="


def test_the_page_turns_errors_into_a_status_line(mnist_demo, monkeypatch):
    from keras_digits.app import page

    def broken(*args, **kwargs):
        raise RuntimeError("boom <script>")

    monkeypatch.setattr(mnist_demo, "answer", broken)
    state, status, *rest = page.respond(mnist_demo, np.zeros((28, 28, 1), np.uint8), "auto", "gradcam", "none")
    assert status.startswith("⚠ could not answer: RuntimeError: boom \\<script\\>")
    assert rest == [None, None, None]


def _free_port() -> int:
    return free_ports(1)[0]


def test_the_page_serves_offline_on_loopback(mnist_demo, tmp_path):
    from keras_digits.app.page import build, launch

    page = build(mnist_demo, tmp_path)
    url = launch(page, "127.0.0.1", _free_port(), tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        html = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "keras_digits demo" in html and "fonts.googleapis" not in html
        config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"sketch", "upload", "status", "label", "overlay", "steps", "examples"} <= ids
    finally:
        page.close()


# ---------------------------------------------------------------------------- the command
def test_the_command_needs_a_model(capsys):
    from keras_digits import demo

    code, _, err = run_main(demo.main, [], capsys)
    assert code == 2 and "--run RUN or --model" in one_error_line(err)


def test_a_port_out_of_range_is_a_usage_error(capsys):
    from keras_digits import demo

    with pytest.raises(SystemExit) as exit_info:
        demo.build_parser().parse_args(["--run", "x", "--port", "70000"])
    assert exit_info.value.code == 2 and "1-65535" in capsys.readouterr().err


def test_a_busy_port_is_one_line(mnist_demo, tmp_path):
    from keras_digits.app.page import build, launch
    from keras_digits.errors import KerasDigitsError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(KerasDigitsError, match=f"cannot serve on 127.0.0.1:{port}.*--port"):
            launch(build(mnist_demo, tmp_path), "127.0.0.1", port, tmp_path)


def test_a_folder_without_model_keras_says_how_to_get_one(tiny, capsys):
    from keras_digits import demo

    code, _, err = run_main(demo.main, ["--model", tiny["model"]], capsys)
    assert code == 2 and "--format keras" in one_error_line(err)


def test_missing_gradio_names_the_extra(capsys, monkeypatch):
    import importlib.util

    from keras_digits import demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    code, _, err = run_main(demo.main, ["--run", "x"], capsys)
    assert code == 2 and ".[demo]" in one_error_line(err)


# ---------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """`python -m keras_digits.demo --run TINY` on a free loopback port; its URL."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt install chromium)")
    pytest.importorskip("playwright")
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keras_digits.demo", "--run", str(tiny["run"]), "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited: {log.read_text()[-2000:]}")
            time.sleep(1)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.browser
def test_draw_and_upload_in_chromium(served, tiny, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    url, proc = served
    x_test, _ = tiny_test_split(tiny)
    digit = tmp_path / "digit.png"
    Image.fromarray(255 - np.repeat(np.repeat(x_test[2, ..., 0], 4, 0), 4, 1)).save(digit)  # dark ink on white
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    status = "#status"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(url, wait_until="load")
        page.locator("#sketch canvas").first.wait_for(timeout=60000)
        page.wait_for_timeout(1000)
        # draw: the brush, a vertical stroke, predict
        page.click("#sketch button[aria-label='Brush']")
        box = page.locator("#sketch canvas").first.bounding_box()
        cx, cy, s = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 3
        page.mouse.move(cx, cy - s)
        page.mouse.down()
        page.mouse.move(cx, cy + s, steps=25)
        page.mouse.up()
        page.click("#predict-drawing")
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('Prediction')", timeout=60000)
        drawn = page.inner_text(status)
        assert "Grad-CAM" in drawn and " ms" in drawn
        assert page.locator("#overlay img").count() == 1
        assert page.locator("#steps img").count() >= 4  # the normalisation's steps
        # upload a photo-like digit (dark on light, 4x the size): the model's answer for the same digit
        page.get_by_role("tab", name="Upload").click()
        page.locator("#upload input[type=file]").set_input_files(str(digit))
        page.wait_for_function(f"document.querySelector('{status}').innerText !== {json.dumps(drawn)}", timeout=60000)
        uploaded = page.inner_text(status)
        from keras_digits.app.engine import load, read_upload

        expected = load(run=str(tiny["run"])).answer(read_upload(digit)).label
        assert f"Prediction: {expected}" in uploaded
        # a file that is not an image: a message on the page, the server keeps running
        page.click("#upload button[aria-label='Clear']")
        page.locator("#upload input[type=file]").set_input_files(str(junk))
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('⚠')", timeout=60000)
        assert "junk.png is not an image" in page.inner_text(status)
        assert proc.poll() is None
        # an example from the run's test split, one click away
        page.locator("#examples img").first.click()
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('Prediction')", timeout=60000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
