"""ONNX, LiteRT and the portable .keras: the stock-Keras twin, the fresh-process proof, predict and submit
on every format, quantization, and the CLI's errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, run_main, tiny_test_split

PORTABLE = ("model.onnx", "model.tflite", "model.keras")


# ---------------------------------------------------------------------------- the stock-Keras twin
def _custom_model(channels: int = 1, policy: str | None = None):
    """A small functional model holding every layer of this package that the twin replaces."""
    import keras

    from keras_digits.models import conv, smallconv
    from keras_digits.models.batchnorm import FusedBatchNormalization
    from keras_digits.models.common import GrayToRGB
    from keras_digits.models.pretrained import CaffePreprocess

    inputs = keras.Input((12, 12, channels), name="image")
    x = GrayToRGB(name="gray_to_rgb")(inputs)
    x = CaffePreprocess(name="caffe", dtype="float32")(x)
    x = conv.Conv2D(6, 3, padding="same", name="conv_a", dtype=policy)(x)
    x = FusedBatchNormalization(name="bn_a", dtype=policy)(x)
    x = smallconv.Conv2D(4, 3, name="conv_b", dtype=policy)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=policy)(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="head", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    bn = model.get_layer("bn_a")
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape).astype("float32"))
    return model


@pytest.mark.parametrize("channels", [1, 3])
def test_stock_twin_is_stock_keras_and_computes_the_same(channels):
    import keras

    from keras_digits.models.portable import is_stock, stock_twin

    model = _custom_model(channels)
    twin = stock_twin(model)
    assert all(is_stock(layer) for layer in twin.layers)
    kinds = {layer.name: type(layer) for layer in twin.layers}
    assert kinds["bn_a"] is keras.layers.BatchNormalization
    assert kinds["conv_a"] is keras.layers.Conv2D and kinds["conv_b"] is keras.layers.Conv2D
    assert kinds["caffe"] is keras.layers.Conv2D
    assert kinds["gray_to_rgb"] is (keras.layers.Conv2D if channels == 1 else keras.layers.Identity)
    x = np.random.default_rng(0).integers(0, 256, (7, 12, 12, channels)).astype("float32")
    np.testing.assert_allclose(twin(x).numpy(), model(x, training=False).numpy(), rtol=0, atol=1e-6)
    # the replaced input layers compute exactly what they stood for
    probe = keras.Model(twin.inputs, twin.get_layer("caffe").output)
    want = np.repeat(x, 3, -1) if channels == 1 else x
    want = want[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_array_equal(probe(x).numpy(), want)


def test_stock_twin_of_a_bfloat16_model_is_float32():
    from keras_digits.models.portable import stock_twin

    model = _custom_model(1, policy="mixed_bfloat16")
    twin = stock_twin(model)
    assert {layer.dtype_policy.name for layer in twin.layers} == {"float32"}
    x = np.random.default_rng(1).integers(0, 256, (4, 12, 12, 1)).astype("float32")
    # bfloat16 keeps 8 bits of mantissa: the float32 twin is close to, not equal to, the run's model
    np.testing.assert_allclose(twin(x).numpy(), model(x, training=False).numpy(), atol=0.05)


def test_stock_twin_refuses_a_layer_it_cannot_replace():
    import keras

    from keras_digits.errors import KerasDigitsError
    from keras_digits.models.portable import stock_twin

    class Strange(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(Strange(name="strange")(inputs)))
    with pytest.raises(KerasDigitsError, match="strange.*no stock Keras equivalent"):
        stock_twin(model)


# ---------------------------------------------------------------------------- export every format
@pytest.fixture(scope="module")
def all_formats(tiny, tmp_path_factory):
    """The tiny run exported in every format plus an int8 LiteRT, through the CLI; (folder, stdout)."""
    from keras_digits import export
    from keras_digits.utils.cli import run_cli

    out = tmp_path_factory.mktemp("formats") / "tiny"
    argv = ["--run", str(tiny["run"]), "--out", str(out), "--format", "all", "--quantize", "int8"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(export.main, argv) == 0
    return out / "1", buf.getvalue()


def test_every_format_is_written_and_proven_in_a_fresh_process(all_formats):
    folder, printed = all_formats
    for name in (*PORTABLE, "model_int8.tflite", "saved_model.pb", "assets/labels.txt", "assets/export.json"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "assets" / "export.json").read_text())
    formats = record["formats"]
    assert list(formats) == ["saved_model", "onnx", "litert", "litert_int8", "keras"]
    for name in ("saved_model", "onnx", "litert", "keras"):
        check = formats[name]["check"]
        assert check["passed"] and check["max_abs_diff"] <= check["tolerance"] == 1e-4, name
        assert check["images"] >= 64 + 10 and "stored test examples" in check["on"] and "random" in check["on"]
        assert formats[name]["fresh_process"]["keras_digits_importable"] is False
        assert any(line.startswith(f"{name} ") and "fresh process" in line for line in printed.splitlines())
    # onnx and LiteRT run without TensorFlow in the fresh process
    assert formats["onnx"]["fresh_process"]["tensorflow_imported"] is False
    assert formats["litert"]["fresh_process"]["tensorflow_imported"] is False
    assert formats["onnx"]["opset"] == 17 and formats["onnx"]["input"]["dtype"] == "uint8"
    assert formats["saved_model"]["fits_images_itself"] is True
    assert formats["onnx"]["fits_images_itself"] is False and "resize" in formats["onnx"]["caller_applies"][0]


def test_int8_accuracy_change_is_printed_and_recorded(all_formats, tiny):
    folder, printed = all_formats
    rec = json.loads((folder / "assets" / "export.json").read_text())["formats"]["litert_int8"]
    check = rec["check"]
    _, y_test = tiny_test_split(tiny)
    assert check["images"] == len(y_test) and check["passed"]
    # the recorded accuracy is the int8 file's own on the test split: recompute it with LiteRT here
    from keras_digits.serving.runtimes import open_runtime, predict_all

    x_test, _ = tiny_test_split(tiny)
    own = float((predict_all(open_runtime("litert", folder / "model_int8.tflite"), x_test).argmax(-1) == y_test).mean())
    assert check["accuracy"] == pytest.approx(own)
    assert rec["calibration"]["from"] == "train" and rec["quantization"] == "int8"
    line = next(line for line in printed.splitlines() if line.startswith("litert_int8 "))
    assert f"test accuracy {check['keras_accuracy']:.4f} -> {check['accuracy']:.4f}" in line and "points" in line
    # int8 weights: about a quarter of the float file
    assert (folder / "model_int8.tflite").stat().st_size < 0.5 * (folder / "model.tflite").stat().st_size


def test_onnx_carries_labels_and_opset(all_formats):
    import onnx

    proto = onnx.load(str(all_formats[0] / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["label_names"]) == [str(i) for i in range(10)]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17


def test_plain_keras_opens_the_portable_file_without_the_package(all_formats, tiny, tmp_path):
    folder = all_formats[0]
    code = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'keras_digits': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, B())\n"
        "import numpy as np, keras\n"
        f"m = keras.saving.load_model({str(folder / 'model.keras')!r})\n"
        f"x = np.load({str(tiny['run'] / 'examples-test.npz')!r})['images'].astype('float32')\n"
        "print(m.predict(x, verbose=0).argmax(-1).tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tiny["run"] / "examples-test.npz") as data:
        stored = data["probs"].argmax(-1).tolist()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == stored


def test_the_fresh_process_cannot_import_the_package(tiny):
    """The run's own best.keras needs keras_digits' layers: the proof's process must fail to open it."""
    from keras_digits.serving.proof import ProofFailed, run_fresh

    with np.load(tiny["run"] / "examples-test.npz") as data:
        images = data["images"][:4]
    with pytest.raises(ProofFailed, match="could not run best.keras"):
        run_fresh("keras", tiny["run"] / "best.keras", images)


# ---------------------------------------------------------------------------- predict and submit
def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def image_folder(tiny, tmp_path_factory):
    """Test images as PNG files of other sizes and channel counts than the model's (28x28 grey)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("format_images")
    x, _ = tiny_test_split(tiny)
    for i, im in enumerate(x[:30, ..., 0]):
        pic = Image.fromarray(im)
        if i % 3 == 1:
            pic = pic.resize((40, 40)).convert("RGB")
        elif i % 3 == 2:
            pic = pic.resize((19, 23))
        pic.save(folder / f"{i + 1}.png")
    return folder


@pytest.mark.parametrize("name", [*PORTABLE, "model_int8.tflite"])
def test_predict_gives_the_saved_models_csv_for_every_format(all_formats, image_folder, tmp_path, capsys, name):
    from keras_digits import predict

    folder = all_formats[0]
    reference, other = tmp_path / "saved_model.csv", tmp_path / "other.csv"
    assert run_main(predict.main, ["--model", folder, image_folder, "--out", reference], capsys)[0] == 0
    assert run_main(predict.main, ["--model", folder / name, image_folder, "--out", other], capsys)[0] == 0
    want, got = _rows(reference), _rows(other)
    assert [r["file"] for r in got] == [r["file"] for r in want] and len(got) == 30
    if name == "model_int8.tflite":  # quantized: the same labels for nearly every image
        agree = np.mean([a["label"] == b["label"] for a, b in zip(got, want)])
        assert agree >= 0.9
        return
    assert [(r["label"], r["class_id"]) for r in got] == [(r["label"], r["class_id"]) for r in want]
    for a, b in zip(got, want):
        assert abs(float(a["confidence"]) - float(b["confidence"])) <= 1e-5


def test_submit_takes_an_onnx_file(all_formats, image_folder, tmp_path, capsys):
    from keras_digits import submit

    folder = all_formats[0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for model, out in ((folder, a), (folder / "model.onnx", b)):
        code, _, err = run_main(submit.main, ["--model", model, "--images", image_folder, "--out", out], capsys)
        assert code == 0, err
    assert a.read_text() == b.read_text() and len(a.read_text().splitlines()) == 31


def test_predict_on_a_folder_without_a_saved_model_names_its_files(all_formats, tmp_path, capsys):
    from keras_digits import predict

    folder = tmp_path / "only_onnx"
    (folder / "assets").mkdir(parents=True)
    shutil.copy(all_formats[0] / "model.onnx", folder / "model.onnx")
    code, _, err = run_main(predict.main, ["--model", folder, str(tmp_path)], capsys)
    assert code == 2 and "model.onnx" in one_error_line(err)


def test_onnx_file_alone_takes_its_labels_from_its_metadata(all_formats, image_folder, tmp_path, capsys):
    from keras_digits import predict

    alone = tmp_path / "alone.onnx"
    shutil.copy(all_formats[0] / "model.onnx", alone)
    code, out, err = run_main(predict.main, ["--model", alone, image_folder / "1.png"], capsys)
    assert code == 0 and "no label names" not in err
    assert out.splitlines()[1].split(",")[1] in [str(i) for i in range(10)]


# ---------------------------------------------------------------------------- the digit normalisation
def test_digit_export_records_that_the_caller_normalises_and_predict_does(tiny, image_folder, tmp_path, capsys):
    from keras_digits import export, predict

    out = tmp_path / "digit"
    code, _, err = run_main(
        export.main,
        ["--run", tiny["run"], "--out", out, "--format", "saved_model,onnx", "--preprocess", "digit"],
        capsys,
    )
    assert code == 0, err
    record = json.loads((out / "1" / "assets" / "export.json").read_text())["formats"]
    assert record["saved_model"]["digit_normalisation"] == "in the graph"
    assert "digit normalisation" in record["onnx"]["caller_applies"][0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_main(predict.main, ["--model", out / "1", image_folder, "--out", a], capsys)[0] == 0
    assert run_main(predict.main, ["--model", out / "1" / "model.onnx", image_folder, "--out", b], capsys)[0] == 0
    assert [r["label"] for r in _rows(a)] == [r["label"] for r in _rows(b)]
    # and without the normalisation the ONNX file sees other pixels: some confidences move
    c = tmp_path / "c.csv"
    argv = ["--model", out / "1" / "model.onnx", image_folder, "--out", c, "--preprocess", "none"]
    assert run_main(predict.main, argv, capsys)[0] == 0
    assert [r["confidence"] for r in _rows(c)] != [r["confidence"] for r in _rows(b)]


# ---------------------------------------------------------------------------- failures
def test_a_file_that_differs_from_keras_fails_loudly_and_nothing_is_written(tiny, tmp_path, capsys, monkeypatch):
    from keras_digits import export
    from keras_digits.serving import convert

    real = convert.write_onnx

    def off_by_a_bit(twin, path, *args, **kwargs):
        weights = twin.get_weights()
        twin.set_weights([w * 1.05 for w in weights])  # a conversion that changed the numbers
        try:
            return real(twin, path, *args, **kwargs)
        finally:
            twin.set_weights(weights)

    monkeypatch.setattr(convert, "write_onnx", off_by_a_bit)
    out = tmp_path / "bad"
    code, _, err = run_main(export.main, ["--run", tiny["run"], "--out", out, "--format", "onnx"], capsys)
    assert code == 1
    notes, line = err.strip().splitlines()[:-1], one_error_line(err.strip().splitlines()[-1])
    assert all(n.startswith("note: ") for n in notes)
    assert "onnx: probabilities differ" in line and "tolerance" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_missing_runtime_names_the_extra(tiny, tmp_path, capsys, monkeypatch):
    import importlib.util

    from keras_digits import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run_main(export.main, ["--run", tiny["run"], "--out", tmp_path / "x", "--format", "onnx"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "onnxruntime" in line and ".[export]" in line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--format", "onnx", "--quantize", "int8"], "--quantize applies to LiteRT"),
        (["--format", "onnx", "--tolerance", "0"], "--tolerance must be a positive number"),
    ],
)
def test_bad_options_are_one_line(tiny, tmp_path, capsys, argv, message):
    from keras_digits import export

    code, _, err = run_main(export.main, ["--run", tiny["run"], "--out", tmp_path / "x", *argv], capsys)
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- the guide's examples
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "export-and-serving.md"


def _guide_blocks(language: str) -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def guide_folder(all_formats, tiny, tmp_path_factory):
    """A working folder laid out as the guide's examples expect: saved_models/mnist_cnn/1, a run, digit.png."""
    from PIL import Image

    root = tmp_path_factory.mktemp("guide")
    shutil.copytree(all_formats[0], root / "saved_models" / "mnist_cnn" / "1")
    shutil.copytree(tiny["run"], root / "runs" / "mnist-simple_cnn-s42")
    x, _ = tiny_test_split(tiny)
    Image.fromarray(x[0, ..., 0]).save(root / "digit.png")
    return root


def test_the_guide_has_an_example_per_runtime():
    blocks = _guide_blocks("python")
    for needle in ("tf.saved_model.load", "onnxruntime", "ai_edge_litert", "keras.saving.load_model", "best.keras"):
        assert any(needle in block for block in blocks), needle


@pytest.mark.parametrize("index", range(5))
def test_the_guides_python_examples_run_as_written(guide_folder, tiny, index):
    blocks = _guide_blocks("python")
    assert len(blocks) == 5
    done = subprocess.run(
        [sys.executable, "-c", blocks[index]], cwd=guide_folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.strip().splitlines()[-1].split()
    if "best.keras" not in blocks[index]:  # the label the SavedModel gives digit.png, and a probability
        import tensorflow as tf
        from PIL import Image

        serve = tf.saved_model.load(str(guide_folder / "saved_models" / "mnist_cnn" / "1")).signatures[
            "serving_default"
        ]
        image = np.asarray(Image.open(guide_folder / "digit.png"), np.uint8)[None, ..., None]
        assert printed[0] == serve(images=tf.constant(image))["label"].numpy()[0].decode()
        assert 0.0 < float(printed[1]) <= 1.0


def test_the_guides_tf_serving_request_feeds_the_signature(guide_folder):
    import tensorflow as tf

    bash = next(block for block in _guide_blocks("bash") if "tensorflow/serving" in block)
    line = next(line for line in bash.splitlines() if line.startswith("python -c"))
    command, target = line.removeprefix("python -c ").rsplit(" > ", 1)
    code = command.strip()[1:-1]  # the double-quoted program
    done = subprocess.run([sys.executable, "-c", code], cwd=guide_folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (guide_folder / target).write_text(done.stdout)
    body = json.loads((guide_folder / "request.json").read_text())
    serve = tf.saved_model.load(str(guide_folder / "saved_models" / "mnist_cnn" / "1")).signatures[
        body["signature_name"]
    ]
    images = np.asarray(body["inputs"]["images"], dtype=np.uint8)
    assert images.shape == (1, 28, 28, 1)
    assert serve(images=tf.constant(images))["probabilities"].shape == (1, 10)


def test_a_run_without_stored_examples_is_checked_on_random_images(tiny, tmp_path, capsys):
    from keras_digits import export

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "dataset.json", "best.keras", "metrics.json"):
        shutil.copy(tiny["run"] / name, run / name)
    code, _, err = run_main(export.main, ["--run", run, "--out", tmp_path / "x", "--format", "keras"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "x" / "1" / "assets" / "export.json").read_text())
    assert record["checked_on"] == "64 seeded random images"
    assert record["formats"]["keras"]["check"]["images"] == 64


def test_dynamic_litert_and_keras_alone_without_a_saved_model(tiny, tmp_path, capsys):
    from keras_digits import export

    out = tmp_path / "small"
    argv = ["--run", tiny["run"], "--out", out, "--format", "litert,keras", "--quantize", "dynamic"]
    code, printed, err = run_main(export.main, argv, capsys)
    assert code == 0, err
    assert "no SavedModel" in err and "TF Serving" in err  # said, on stderr
    assert sorted(p.name for p in (out / "1").iterdir()) == [
        "assets",
        "model.keras",
        "model.tflite",
        "model_dynamic.tflite",
    ]
    formats = json.loads((out / "1" / "assets" / "export.json").read_text())["formats"]
    assert list(formats) == ["litert", "litert_dynamic", "keras"]
    assert formats["litert_dynamic"]["quantization"] == "dynamic" and formats["litert_dynamic"]["check"]["passed"]
    assert "litert_dynamic" in printed and "test accuracy" in printed


def test_a_runs_best_keras_predicts_like_its_saved_model(tiny, image_folder, tmp_path, capsys):
    """best.keras has no assets/: its labels and config (so --preprocess auto) come from the run directory."""
    from keras_digits import predict

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run_main(predict.main, ["--model", tiny["model"], image_folder, "--out", a], capsys)[0] == 0
    code, _, err = run_main(predict.main, ["--model", tiny["run"] / "best.keras", image_folder, "--out", b], capsys)
    assert code == 0 and "no label names" not in err
    assert [(r["label"], r["class_id"]) for r in _rows(b)] == [(r["label"], r["class_id"]) for r in _rows(a)]


def test_a_twin_that_differs_from_the_run_stops_before_anything_is_written(tiny, tmp_path, capsys, monkeypatch):
    from keras_digits import export
    from keras_digits.models import portable

    real = portable.stock_twin

    def drifted(model):
        twin = real(model)
        twin.set_weights([w * 1.1 for w in twin.get_weights()])
        return twin

    monkeypatch.setattr(portable, "stock_twin", drifted)
    code, _, err = run_main(export.main, ["--run", tiny["run"], "--out", tmp_path / "x", "--format", "keras"], capsys)
    assert code == 1 and "stock-Keras twin differs" in one_error_line(err)
    assert not (tmp_path / "x").exists()


def test_a_mixed_precision_twin_is_said_not_refused(capsys):
    from keras_digits.serving.export_run import _twin

    model = _custom_model(1, policy="mixed_bfloat16")
    images = np.random.default_rng(2).integers(0, 256, (16, 12, 12, 1), dtype=np.uint8)
    twin, check = _twin(model, images, 1e-4)
    assert check["run_model_dtype_policy"] == "mixed_bfloat16" and 0 < check["max_abs_diff_to_run_model"] < 0.05
    err = capsys.readouterr().err
    assert "computes in mixed_bfloat16" in err and "same class on" in err


def test_the_serving_benchmark_times_every_format(all_formats):
    from conftest import REPO

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serving.py"), "--model", str(all_formats[0]), "--repeats", "1"]
        + ["--seconds", "0.05", "--warmup", "1", "--batches", "1,8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "MiB" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["saved_model", "onnx", "litert", "litert_int8", "keras"]
    assert all("x)" in row for row in rows) and "ISA" in done.stdout
