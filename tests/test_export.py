"""SavedModel export: TF Serving layout, assets, the serving signatures, a TF-only reload, CLI errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, one_error_line, tiny_test_split

from keras_digits.utils.cli import run_cli

LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def keras_model(tiny):
    from keras_digits.evaluation.runs import load_run

    return load_run(tiny["run"])[1]


@pytest.fixture(scope="module")
def loaded(tiny):
    import tensorflow as tf

    return tf.saved_model.load(str(tiny["model"]))


# ---------------------------------------------------------------------------- layout and assets
def test_tf_serving_layout_and_assets(tiny):
    version = tiny["model"]
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    assert (version / "assets" / "labels.txt").read_text().splitlines() == LABELS
    run_config = json.loads((tiny["run"] / "config.json").read_text())
    assert json.loads((version / "assets" / "config.json").read_text()) == run_config
    assert json.loads((version / "assets" / "dataset.json").read_text())["input_shape"] == [28, 28, 1]
    assert sorted(p.name for p in tiny["models"].iterdir()) == ["1"]  # no temporary folder left behind
    umask = os.umask(0)
    os.umask(umask)
    for path in (version, version / "assets" / "labels.txt", version / "saved_model.pb"):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask  # not the private modes of temp files
        assert path.stat().st_mode & 0o777 == expected, path


def test_tracked_labels_and_config(loaded, tiny):
    assert [b.decode() for b in loaded.label_names[0].numpy()] == LABELS
    cfg = json.loads(loaded.config_json[0].numpy().decode())
    assert cfg["arch"] == "simple_cnn_v1" and cfg == json.loads((tiny["run"] / "config.json").read_text())


# ---------------------------------------------------------------------------- the signatures
def test_fresh_tensorflow_only_process_matches_keras(tiny, keras_model, tmp_path):
    x, _ = tiny_test_split(tiny)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        m = tf.saved_model.load({str(tiny["model"])!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        out = m.signatures["serving_default"](images=tf.constant(x))
        flt = m.signatures["serve_float"](images=tf.constant(x.astype(np.float32)))
        np.save({str(tmp_path / "probs.npy")!r}, out["probabilities"].numpy())
        np.save({str(tmp_path / "probs_float.npy")!r}, flt["probabilities"].numpy())
        np.save({str(tmp_path / "class_id.npy")!r}, out["class_id"].numpy())
        print("labels", ",".join(b.decode() for b in out["label"].numpy()[:5]))
        print("keras_digits imported:", any(k.startswith("keras_digits") for k in sys.modules))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "keras_digits imported: False" in proc.stdout
    expected = np.asarray(keras_model.predict(x.astype(np.float32), verbose=0))
    probs = np.load(tmp_path / "probs.npy")
    assert probs.shape == expected.shape == (len(x), 10)
    assert np.abs(probs - expected).max() < 1e-5
    assert np.abs(np.load(tmp_path / "probs_float.npy") - expected).max() < 1e-5
    ids = np.load(tmp_path / "class_id.npy")
    np.testing.assert_array_equal(ids, expected.argmax(axis=1))
    assert f"labels {','.join(LABELS[i] for i in ids[:5])}" in proc.stdout


def test_serving_signature_takes_other_sizes_and_channels(tiny, loaded):
    import tensorflow as tf
    from PIL import Image

    x, _ = tiny_test_split(tiny)
    fn = loaded.signatures["serving_default"]
    base = fn(images=tf.constant(x[:20]))
    big = np.stack(
        [np.asarray(Image.fromarray(im[..., 0]).convert("RGB").resize((56, 56), Image.BILINEAR)) for im in x[:20]]
    )
    assert big.shape == (20, 56, 56, 3) and big.dtype == np.uint8
    out = fn(images=tf.constant(big))
    assert out["probabilities"].shape == (20, 10)
    assert out["class_id"].shape == (20,) and out["class_id"].dtype == tf.int64
    assert out["label"].shape == (20,) and out["label"].dtype == tf.string
    assert {b.decode() for b in out["label"].numpy()} <= set(LABELS)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    agree = (out["class_id"].numpy() == base["class_id"].numpy()).mean()
    assert agree >= 0.9, agree  # a 2x RGB copy is classified like the original
    odd = fn(images=tf.constant(np.full((3, 17, 41, 4), 200, np.uint8)))  # RGBA, odd size
    assert odd["probabilities"].shape == (3, 10)
    empty = fn(images=tf.constant(np.zeros((0, 28, 28, 1), np.uint8)))
    assert empty["probabilities"].shape == (0, 10) and empty["label"].shape == (0,)


def test_rgb_model_accepts_grey_and_rgba(tmp_path):
    """Channel conversion in the graph: grey -> RGB repeats the channel, alpha is dropped."""
    import tensorflow as tf

    from keras_digits.models import build_model
    from keras_digits.serving.export import export_model

    model = build_model("simple_cnn_v1", (28, 28, 3), 4)
    path = export_model(model, tmp_path / "rgb" / "1", ["a", "b", "c", "d"], config={"arch": "simple_cnn_v1"})
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    grey, _ = make_images(6, (28, 28, 1), 4, seed=3)
    rgb = np.repeat(grey, 3, axis=-1)
    rgba = np.concatenate([rgb, np.zeros_like(grey)], axis=-1)
    ref = model.predict(rgb.astype(np.float32), verbose=0)
    for batch in (grey, rgb, rgba):
        got = fn(images=tf.constant(batch))
        assert np.abs(got["probabilities"].numpy() - ref).max() < 1e-5
        assert {b.decode() for b in got["label"].numpy()} <= {"a", "b", "c", "d"}


def test_saved_model_cli_lists_signatures(tiny):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        cli = shutil.which("saved_model_cli")
        if cli is None:
            pytest.skip("saved_model_cli not found")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [str(cli), "show", "--dir", str(tiny["model"]), "--all"], capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "signature_def['serving_default']" in out and "signature_def['serve_float']" in out
    serving = out.split("signature_def['serving_default']")[1]
    assert "DT_UINT8" in serving and "shape: (-1, -1, -1, -1)" in serving
    for name in ("probabilities", "class_id", "label"):
        assert f"outputs['{name}']" in serving


# ---------------------------------------------------------------------------- CLI
def test_cli_refuses_existing_version_then_overwrites(tiny, tmp_path, capsys):
    from keras_digits import export

    out = tmp_path / "models" / "again"
    (out / "3").mkdir(parents=True)
    (out / "3" / "keep.txt").write_text("x")
    assert run_cli(export.main, ["--run", str(tiny["run"]), "--out", str(out), "--version", "3"]) == 2
    assert "already exists" in one_error_line(capsys.readouterr().err)
    assert (out / "3" / "keep.txt").exists()
    code = run_cli(export.main, ["--run", str(tiny["run"]), "--out", str(out), "--version", "3", "--overwrite"])
    assert code == 0
    assert (out / "3" / "saved_model.pb").is_file() and not (out / "3" / "keep.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["3"]


def test_default_out_is_saved_models_slash_run_name(tiny, tmp_path, monkeypatch):
    from keras_digits.serving.export_run import export_run

    run = tmp_path / "my-run"
    run.mkdir()
    for name in ("config.json", "dataset.json", "best.keras", "metrics.json", "examples-test.npz"):
        shutil.copy(tiny["run"] / name, run / name)
    monkeypatch.chdir(tmp_path)
    assert export_run("my-run") == Path("saved_models") / "my-run" / "1"
    assert (tmp_path / "saved_models" / "my-run" / "1" / "saved_model.pb").is_file()


@pytest.mark.parametrize("case", ["missing", "not_a_run"])
def test_cli_bad_run_dir_one_line_exit_2(tmp_path, capsys, case):
    from keras_digits import export

    run = tmp_path / "run"
    if case == "not_a_run":
        run.mkdir()
    assert run_cli(export.main, ["--run", str(run), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run) in line
    assert not (tmp_path / "out").exists()
