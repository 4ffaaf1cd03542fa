"""Explanations: every method on every arch, target-layer discovery, batching, a planted signal the
maps must find, the randomization sanity check, faithfulness metrics, and the CLI on the bundled digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_digits.errors import KerasDigitsError
from keras_digits.explain import CAM_METHODS, METHODS, method_fn, parse_methods

TINY = dict(batch_size=16, steps=4, samples=3, masks=12, scorecam_channels=6, coalitions=24, patch=None, stride=None)
# minutes together; -m slow. The default run keeps a plain CNN, a flat model, a residual net and a
# nested keras.applications base (the target-layer test adds resnet50's)
SLOW_ARCHS = {
    "alexnet",
    "cifar_cnn",
    "keras_cnn",
    "resnet_cifar",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "xception",
}


def explainer(model, layer=None, **kw):
    from keras_digits.explain.core import Explainer, Options

    return Explainer(model, layer, Options(**{**TINY, **kw}))


def arch_shape(arch: str) -> tuple[int, int, int]:
    from keras_digits.models.registry import model_info

    info = model_info(arch)
    side = max(info.min_size, 12)
    return (side, side, 3 if info.channels == 3 else 1)


def tame(ex, x) -> None:
    """Scale an untrained model's output layer so its logits stay within a few units on `x`: a random
    deep net's softmax is often saturated (probability exactly 1), which leaves the perturbation
    methods nothing to measure. Training does not do this; explaining a random net is only a test."""
    z = ex.logits(x)
    scale = 3.0 / max(float(np.abs(z - z.mean(axis=1, keepdims=True)).max()), 1e-6)
    ex.head.kernel.assign(ex.head.kernel.numpy() * scale)
    ex.head.bias.assign(ex.head.bias.numpy() * 0.0)


def all_archs():
    from keras_digits.models.registry import list_models

    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in list_models()]


@pytest.mark.parametrize("arch", all_archs())
def test_every_method_on_every_arch(arch):
    """Finite, non-constant maps of the input's height and width; one image at a time gives the same maps."""
    import keras

    from keras_digits.models.registry import build_model

    keras.utils.set_random_seed(0)  # an unlucky random init can leave a deep net's output flat under masking
    shape = arch_shape(arch)
    model = build_model(arch, shape, 3)
    ex = explainer(model, patch=max(2, shape[0] // 3))
    x = np.random.default_rng(0).integers(0, 256, (2, *shape)).astype(np.float32)
    tame(ex, x)
    pred = ex.predict(x).argmax(axis=1).astype(np.int32)  # an untrained net's CAM for another class is often all 0
    t, c = pred, np.array([-1, (pred[1] + 1) % 3], np.int32)
    for name in METHODS:
        if ex.layer is None and name in CAM_METHODS:
            with pytest.raises(KerasDigitsError, match="spatial feature map"):
                method_fn(name)(ex, x, t, c)
            continue
        maps = method_fn(name)(ex, x, t, c)
        assert maps.shape == (2, *shape[:2]) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all(), name
        if name in ("gradcam", "gradcampp", "layercam", "guided_gradcam"):
            # ReLU(sum_k w_k A^k) of an untrained net can be 0 everywhere for a given class: ask every class
            every = [method_fn(name)(ex, x, np.full(2, k, np.int32), np.full(2, -1, np.int32)) for k in range(3)]
            assert (maps >= 0).all() and any(m.std() > 0 for ms in every for m in ms), f"{arch} {name}: all 0"
        else:
            assert all(m.std() > 0 for m in maps), f"{arch} {name}: constant map"
        if name in ("gradcam", "saliency", "rise", "ig"):  # batched vs one-by-one (the rest share the code paths)
            one = np.concatenate([method_fn(name)(ex, x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(2)])
            # equal up to float round-off (oneDNN picks kernels by batch size; deep nets amplify it)
            np.testing.assert_allclose(maps, one, rtol=0.05, atol=1e-3 * float(np.abs(maps).max()), err_msg=name)
    assert (ex.layer is None) == (arch == "dense")


def test_target_layer_is_a_block_output_inside_a_nested_base():
    """resnet50 at 64 px: the deepest 4x4-or-finer cut point is conv4's last block output (after the
    residual add), not a conv inside the block; the nested layer is reachable by path and by name."""
    from keras_digits.explain.graph import candidates, layer_infos, resolve_layer
    from keras_digits.models.registry import build_model

    model = build_model("resnet50", (64, 64, 3), 4)
    ex = explainer(model)
    assert ex.layer.path == "base/conv4_block6_out" and ex.layer.shape == (4, 4, 1024)
    infos = {i.path: i for i in layer_infos(model)}
    assert infos["base/conv4_block6_add"].cut and not infos["base/conv4_block6_2_conv"].cut
    assert "base/conv4_block6_1_relu" not in [c.path for c in candidates(model)]
    assert resolve_layer(model, "conv3_block4_out").path == "base/conv3_block4_out"
    feats, grads = ex.feature_gradients(
        np.zeros((1, 64, 64, 3), np.float32), np.array([1], np.int32), np.array([-1], np.int32)
    )
    assert feats.shape == grads.shape == (1, 4, 4, 1024)


def test_padding_layers_are_not_chosen_but_may_be_named():
    """keras.applications pads before a stride-2 conv: the padded 5x5 map is shifted a cell against the
    image, so the automatic choice is the 4x4 map before it."""
    import keras

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu", name="feat")(inp)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, name="down")(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    assert explainer(model).layer.path == "feat"
    assert explainer(model, "pad").layer.shape == (5, 5, 4)


def test_layer_errors_list_the_candidates():
    from keras_digits.models.registry import build_model

    model = build_model("simple_cnn", (28, 28, 1), 10)
    with pytest.raises(KerasDigitsError, match="not a layer of this model; candidates.*block3_relu"):
        explainer(model, "nope")
    with pytest.raises(KerasDigitsError, match="not a spatial map.*candidates"):
        explainer(model, "fc")
    assert explainer(model, "block2_relu").layer.shape == (14, 14, 64)


def test_sequential_models_and_logits():
    """A Sequential model works; its logits are the softmax layer's pre-activations; a contrastive
    target is the difference of two logits."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    ex = explainer(model)
    assert ex.layer.shape == (10, 10, 4) and ex.head_kind == "dense"
    x = np.random.default_rng(1).random((4, 10, 10, 1)).astype(np.float32) * 255
    np.testing.assert_allclose(ex.predict(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    z = ex.logits(x)
    t, c = np.full(4, 2, np.int32), np.full(4, 0, np.int32)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        diff = ex._logits_of(xt)[:, 2] - ex._logits_of(xt)[:, 0]
    np.testing.assert_allclose(ex.input_gradients(x, t, c), tape.gradient(diff, xt).numpy(), rtol=1e-4, atol=1e-7)
    expected = 1 / (1 + np.exp(-(z[:, 2].astype(np.float64) - z[:, 0])))
    np.testing.assert_allclose(ex.scores(x, t, c), expected, rtol=1e-5, atol=1e-9)


def test_mixed_precision_model_has_real_logits():
    """Under mixed_float16 the model ends in a float32 'linear' Activation after the softmax Dense; the
    explainer looks through it to the Dense and computes logits in float32."""
    import keras

    from keras_digits.models.registry import build_model
    from keras_digits.runtime.strategy import float32_outputs

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = float32_outputs(build_model("simple_cnn_v1", (12, 12, 1), 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    ex = explainer(model)
    assert ex.head_kind == "dense" and ex.head.name == "predictions"
    x = np.random.default_rng(3).integers(0, 256, (2, 12, 12, 1)).astype(np.float32)
    z = ex.logits(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(ex.predict(x), model.predict(x, verbose=0), atol=2e-3)
    grads = ex.input_gradients(x, np.array([0, 1], np.int32), np.array([2, -1], np.int32))
    assert np.isfinite(grads).all() and np.abs(grads).max() > 0


def test_integrated_gradients_completeness():
    """IG attributions add up to logit(x) - logit(baseline) (within the path integral's error)."""
    from keras_digits.models.registry import build_model

    model = build_model("simple_cnn_v1", (12, 12, 1), 3)
    ex = explainer(model, steps=64)
    x = np.random.default_rng(2).integers(0, 256, (3, 12, 12, 1)).astype(np.float32)
    t, c = np.array([0, 1, 2], np.int32), np.full(3, -1, np.int32)
    total = method_fn("ig")(ex, x, t, c).sum(axis=(1, 2))
    z = ex.logits(x)[np.arange(3), t] - ex.logits(np.zeros_like(x))[np.arange(3), t]
    np.testing.assert_allclose(total, z, rtol=0.05, atol=0.02 * float(np.abs(z).max()))


@pytest.mark.parametrize("shape", [(64, 64), (28, 28), (224, 160), (9, 7)])
def test_grid_superpixels_are_even_cells(shape):
    from keras_digits.explain.superpixels import grid_segments

    seg = grid_segments(shape, 50)
    sizes = np.bincount(seg.ravel())
    assert seg.shape == shape and (sizes > 0).all()
    assert 30 <= len(sizes) <= 70 or len(sizes) == shape[0] * shape[1]
    for edge in (seg[:, 0], seg[0, :]):  # every row and column band is at least two thirds of the widest one
        bands = np.bincount(np.unique(edge, return_inverse=True)[1])
        assert bands.min() >= 2 * bands.max() / 3 or bands.max() <= 2, bands


def test_noise_falls_back_to_a_grid_and_digits_keep_slic():
    import keras

    from keras_digits.explain.core import Explainer, Options
    from keras_digits.explain.superpixels import grid_segments, superpixels

    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    ex = Explainer(model, options=Options())
    noise = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    seg = superpixels(ex, noise)
    assert (seg[0] == grid_segments((64, 64), 50)).all() and (seg[1] == seg[0]).all()
    grey = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    square = np.zeros((1, 28, 28, 1), "float32")
    square[0, 6:14, 8:20] = 255.0
    seg = superpixels(Explainer(grey, options=Options()), square)[0]
    assert len(np.unique(seg[6:14, 8:20])) < len(np.unique(seg))  # a segmentation that follows the square
    assert not (seg == grid_segments((28, 28), 50)).all()


def test_parse_methods():
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("gradcam++, IG,ig") == ["gradcampp", "ig"]
    with pytest.raises(KerasDigitsError, match="unknown method 'lrp'; known: gradcam"):
        parse_methods("gradcam,lrp")
    assert len(METHODS) >= 16 and parse_methods("guided-gradcam,expected_gradients,shap") == [
        "guided_gradcam",
        "gradshap",
        "kernelshap",
    ]


# ---------------------------------------------------------------------------- a planted signal
from planted import SIDE, inside_fraction, square_masks  # noqa: E402


@pytest.mark.parametrize(
    "name",
    [
        "gradcam",
        "layercam",
        "saliency",
        "gradinput",
        "guided_backprop",
        "ig",
        "deeplift",
        "gradshap",
        "occlusion",
        "lime",
        "kernelshap",
    ],
)
def test_planted_signal_is_found(planted_model, name):
    model, x, y = planted_model
    ex = explainer(model, steps=16, samples=16, patch=2, stride=1, coalitions=300)
    t, c = y.astype(np.int32), np.full(len(y), -1, np.int32)
    maps = method_fn(name)(ex, x.astype(np.float32), t, c)
    if name == "layercam":  # behind global max pooling only the argmax cells have a gradient: a few pixels, so
        # the top 16 are mostly ties at 0; judge it by the share of its relevance that lies in the square
        from keras_digits.explain.localisation import relevance_mass

        frac = relevance_mass(maps, square_masks(y))
    else:
        frac = inside_fraction(maps, y)
    assert np.mean(frac > 0.5) >= 0.75, (name, frac.round(2))
    # and the check can fail: a map that ignores the square does not find it
    assert np.mean(inside_fraction(np.random.default_rng(0).random((len(y), SIDE, SIDE)), y) > 0.5) < 0.2


def test_sanity_gradcam_and_saliency_pass_and_randomization_is_undone(planted_model):
    from keras_digits.explain import sanity

    model, x, y = planted_model
    ex = explainer(model)
    xs, t, c = x[:8].astype(np.float32), y[:8].astype(np.int32), np.full(8, -1, np.int32)
    before = [w.copy() for w in model.get_weights()]
    originals = {m: method_fn(m)(ex, xs, t, c) for m in ("gradcam", "saliency")}
    result = sanity.run(model, lambda m: method_fn(m)(ex, xs, t, c), ["gradcam", "saliency"], originals, steps=3)
    assert result["methods"]["gradcam"]["passes"] and result["methods"]["saliency"]["passes"], result
    assert [s["randomized"] for s in result["steps"]][-1] == result["layers_with_weights"]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # identical maps are the failing case: correlation 1
    assert sanity.spearman(originals["saliency"], originals["saliency"]).min() > 0.999


def test_faithfulness_flags_a_map_no_better_than_random(planted_model):
    from keras_digits.explain import faithfulness

    model, x, y = planted_model
    ex = explainer(model)
    xs, t, c = x[:20].astype(np.float32), y[:20].astype(np.int32), np.full(20, -1, np.int32)
    good = method_fn("gradcam")(ex, xs, t, c)
    res = faithfulness.evaluate(ex, xs, t, c, {"gradcam": good, "inverted": -good}, steps=20)
    m = res["methods"]
    assert not m["gradcam"]["flagged"] and m["inverted"]["flagged"], m
    assert m["gradcam"]["deletion"]["mean"] < m["random"]["deletion"]["mean"] < m["inverted"]["deletion"]["mean"]
    assert res["pixels_per_step"] == 20.0 and res["protocol"]["deletion_baseline"].startswith("pixels set to black")


# ---------------------------------------------------------------------------- the CLI on the bundled digits
FAST = [
    *("--steps", "4", "--samples", "3", "--masks", "40", "--scorecam-channels", "8", "--coalitions", "40"),
    *("--batch-size", "128", "--quiet"),
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A simple_cnn_v1 run on scikit-learn's bundled digits (3 epochs)."""
    from keras_digits.config import TrainConfig
    from keras_digits.training.run import train_and_evaluate

    run = tmp_path_factory.mktemp("explain") / "run"
    train_and_evaluate(TrainConfig(arch="simple_cnn_v1", dataset="digits", epochs=3, verbose=0), run)
    return run


def explain_cli(args, capsys):
    from conftest import run_main

    from keras_digits.explain.cli import main

    return run_main(main, args, capsys)


def test_cli_end_to_end(digits_run, capsys):
    code, out, err = explain_cli(
        [
            "--run",
            digits_run,
            "--n",
            "6",
            "--metrics",
            "--metrics-n",
            "12",
            "--sanity",
            "--sanity-n",
            "3",
            "--sanity-steps",
            "2",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    folder = digits_run / "explain"
    info = json.loads((folder / "explain.json").read_text())
    assert info["methods"] == list(METHODS) and info["layer"]["chosen"] == "automatically"
    assert info["layer"]["path"] == "block2_pool" and len(info["rows"]) == 6
    for name in METHODS:
        maps = np.load(folder / f"{name}.npy")
        assert maps.shape == (6, 28, 28) and maps.dtype == np.float32 and np.isfinite(maps).all()
        assert info["timings"][name]["images_per_s"] > 0
    metrics = info["metrics"]
    assert set(metrics["methods"]) == {"random", *METHODS} and metrics["n"] == 12
    for section in ("mufidelity", "road", "localisation", "complexity", "sensitivity"):
        rows = metrics[section]["methods"]
        assert set(METHODS) <= set(rows) and metrics[section]["protocol"], section
    assert metrics["localisation"]["mask"] == "ink" and metrics["sensitivity"]["n"] == 8
    assert len(metrics["agreement"]["matrix"]) == len(METHODS) and len(metrics["agreement"]["per_image"]) == 12
    assert set(info["sanity"]["methods"]) == set(METHODS) and len(info["sanity"]["steps"]) == 2
    assert all("passes_foreground" in v for v in info["sanity"]["methods"].values())
    assert "deeplift" in info["method_notes"][0] and "MaxPooling2D" in info["method_notes"][0]
    from PIL import Image

    with Image.open(folder / "grid.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
    with np.load(folder / "inputs.npz") as d:
        assert d["images"].shape == (6, 28, 28, 1) and (d["labels"] >= 0).all()
    page = (digits_run / "report.html").read_text()
    assert "<h2>Explanations</h2>" in page and "block2_pool" in page and "Faithfulness" in page and "Sanity" in page
    assert "MuFidelity" in page and "ROAD MoRF" in page and "Agreement between methods" in page
    assert not list(digits_run.glob(".explain.*"))  # no temporary folder left


def test_cli_files_targets_and_contrast(digits_run, tmp_path, capsys):
    from PIL import Image

    from keras_digits.data import load_dataset

    x, _ = load_dataset("digits").test
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(x[i, ..., 0]).resize((40, 40)).save(imgs / f"d{i}.png")
    (imgs / "broken.png").write_bytes(b"not a png")
    out_dir = tmp_path / "out"
    code, out, err = explain_cli(
        [
            "--run",
            digits_run,
            "--images",
            imgs,
            "--method",
            "gradcam,saliency",
            "--target",
            "4",
            "--contrast",
            "9",
            "--out",
            out_dir,
            *FAST,
        ],
        capsys,
    )
    assert code == 1 and "broken.png" in err  # explained the rest, named the bad file, exit 1 as predict
    info = json.loads((out_dir / "explain.json").read_text())
    assert [r["target"] for r in info["rows"]] == [4, 4, 4] and [r["contrast"] for r in info["rows"]] == [9, 9, 9]
    assert info["skipped"][0]["file"].endswith("broken.png") and np.load(out_dir / "gradcam.npy").shape == (3, 28, 28)
    code, _, err = explain_cli(
        [
            "--run",
            digits_run,
            "--errors",
            "--n",
            "2",
            "--method",
            "ig",
            "--target",
            "true",
            "--out",
            tmp_path / "err",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "err" / "explain.json").read_text())["rows"]
    assert all(r["pred"] != r["label"] and r["target"] == r["label"] for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "gradcam,lrp"], "unknown method 'lrp'; known: gradcam, gradcampp"),
        (["--metrics", "road,nope"], "unknown metric 'nope'; known: deletion"),
        (["--input-range", "0,1"], "--input-range is for --model"),
        (["--layer", "nope"], "--layer 'nope' is not a layer of this model; candidates"),
        (["--layer", "flatten"], "not a spatial map"),
        (["--layer", "rescale"], "comes before any layer with weights"),
        (["--n", "100000"], "--n 100000 is larger than the test split"),
        (["--target", "11"], "--target '11' is not a class"),
        (["--contrast", "3", "--target", "3"], "is the target class itself"),
        (["--images", "/nonexistent/x.png"], "no such file or folder"),
        (["--per-class", "--errors"], "cannot be combined"),
    ],
)
def test_cli_errors(digits_run, tmp_path, capsys, args, message):
    from conftest import one_error_line

    out_dir = tmp_path / "out"
    code, _, err = explain_cli(["--run", digits_run, "--out", out_dir, *args, *FAST], capsys)
    assert code == 2 and message in one_error_line(err)
    assert not out_dir.exists()


def test_cli_out_never_replaces_a_run_or_a_foreign_folder(digits_run, tmp_path, capsys):
    from conftest import one_error_line

    for out, message in [
        (digits_run, f"would replace {digits_run} or a folder holding it"),
        (digits_run.parent, "or a folder holding it"),
        (tmp_path, "not empty and was not written by keras_digits.explain"),
    ]:
        (tmp_path / "keep.txt").write_text("mine")
        code, _, err = explain_cli(["--run", digits_run, "--out", out, "--method", "saliency", *FAST], capsys)
        assert code == 2 and message in one_error_line(err)
    assert (digits_run / "best.keras").is_file() and (tmp_path / "keep.txt").read_text() == "mine"


def test_cli_run_without_model(tmp_path, capsys):
    from conftest import one_error_line

    (tmp_path / "config.json").write_text("{}")
    code, _, err = explain_cli(["--run", tmp_path, *FAST], capsys)
    assert code == 2 and "has not finished training" in one_error_line(err)
