"""Explanation metrics on planted cases whose answer is known (a right map beats a random one and an inverted
one), DeepLIFT's summation to delta, the Python API and `--model` on Keras models this package did not train,
and explanations under shift (`evaluate --perturb --explain`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from planted import SIDE, square_masks

from keras_digits.errors import KerasDigitsError


def explainer(model, **kw):
    from keras_digits.explain.core import Explainer, Options

    return Explainer(model, None, Options(**{"batch_size": 64, **kw}))


@pytest.fixture(scope="module")
def planted_case(planted_model):
    """(explainer, float images, targets, contrasts, maps) with the right map (the planted square), a random
    one and the inverted right one."""
    from keras_digits.explain.faithfulness import random_maps

    model, x, y = planted_model
    ex = explainer(model)
    xs = x[:24].astype(np.float32)
    t, c = y[:24].astype(np.int32), np.full(24, -1, np.int32)
    right = square_masks(y[:24]).astype(np.float32) + 0.001 * random_maps(24, (SIDE, SIDE), 5)
    maps = {"right": right, "random": random_maps(24, (SIDE, SIDE), 9), "inverted": -right}
    return ex, xs, t, c, maps, y[:24]


def test_mufidelity_ranks_right_over_random_over_inverted(planted_case):
    from keras_digits.explain.mufidelity import mufidelity, score_drops, subset_masks

    ex, x, t, c, maps, _ = planted_case
    masks = subset_masks(x.shape[1:3])
    drops = score_drops(ex, x, t, c, masks)
    score = {k: np.nanmean(mufidelity(m, masks, drops)) for k, m in maps.items()}
    assert score["right"] > 0.3 and abs(score["random"]) < 0.15 and score["inverted"] < -0.3, score


def test_road_ranks_right_over_random_over_inverted(planted_case):
    from keras_digits.explain import road

    ex, x, t, c, maps, _ = planted_case
    gap = {}
    for k, m in maps.items():
        morf, lerf = road.curves(ex, x[:12], t[:12], c[:12], m[:12])
        gap[k] = float((lerf - morf).mean())
    assert gap["right"] > gap["random"] + 0.2 and gap["random"] > gap["inverted"] + 0.2, gap


def test_road_imputation_fills_from_the_neighbours():
    from keras_digits.explain.road import impute

    ramp = np.tile(np.linspace(0, 200, 12, dtype=np.float32), (12, 1))[..., None]  # linear: imputation is exact
    removed = np.zeros((12, 12), bool)
    removed[3:9, 4:8] = True
    quiet = impute(ramp, removed, np.random.default_rng(0), 0.0, 255.0)
    assert np.abs(quiet - ramp).max() < 3 * 0.01 * 255 + 1e-3  # within the 1 % noise
    assert np.array_equal(quiet[~removed], ramp[~removed])
    flat = impute(np.zeros((6, 6, 1), np.float32), np.ones((6, 6), bool), np.random.default_rng(0), 0.0, 255.0)
    assert np.isfinite(flat).all()


def test_localisation_right_random_inverted(planted_case):
    from keras_digits.explain.localisation import pointing_game, relevance_mass

    *_, maps, y = planted_case
    truth = square_masks(y)
    mass = {k: np.nanmean(relevance_mass(m, truth)) for k, m in maps.items() if k != "inverted"}
    point = {k: np.nanmean(pointing_game(m, truth, tolerance=0)) for k, m in maps.items()}
    assert mass["right"] > 0.95 and 0.0 < mass["random"] < 0.1
    assert np.isnan(relevance_mass(maps["inverted"], truth)).all()  # no positive relevance anywhere
    assert point["right"] == 1.0 and point["random"] < 0.3 and point["inverted"] < 0.3
    assert np.isnan(pointing_game(np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool))).all()  # a constant map has no point


def test_ink_mask_and_dark_background():
    from keras_digits.explain.localisation import dark_background, ink_mask

    x = np.zeros((2, 10, 10, 1), np.float32)
    x[:, 3:7, 4:6] = 200.0
    assert dark_background(x, 0, 255) and ink_mask(x, 0, 255).sum() == 2 * 8
    assert not dark_background(255.0 - x, 0, 255) and not dark_background(np.zeros_like(x), 0, 255)
    colour = np.repeat(x, 3, axis=-1)
    assert dark_background(colour, 0, 255)
    colour[..., 0] += 60.0  # a red cast: not a grey digit
    assert not dark_background(colour, 0, 255)


def test_complexity_and_sparseness_extremes(planted_case):
    from keras_digits.explain.complexity import complexity, sparseness

    *_, maps, _ = planted_case
    one = np.zeros((1, 10, 10))
    one[0, 3, 3] = 5.0
    even = np.ones((1, 10, 10))
    assert complexity(one)[0] == pytest.approx(0.0) and complexity(even)[0] == pytest.approx(1.0)
    assert sparseness(one)[0] == pytest.approx(0.99) and sparseness(even)[0] == pytest.approx(0.0)
    assert np.nanmean(sparseness(maps["right"])) > np.nanmean(sparseness(maps["random"])) + 0.3
    assert np.isnan(complexity(np.zeros((1, 4, 4)))).all()


def test_max_sensitivity_separates_a_stable_map_from_noise(planted_case):
    from keras_digits.explain import method_fn
    from keras_digits.explain.sensitivity import max_sensitivity, noisy_copies

    ex, x, t, c, _, _ = planted_case
    x, t, c = x[:6], t[:6], c[:6]
    copies = noisy_copies(x, ex.low, ex.high)
    gradcam = method_fn("gradcam")(ex, x, t, c)
    stable = max_sensitivity(lambda xp: method_fn("gradcam")(ex, xp, t, c), gradcam, copies)
    rng = np.random.default_rng(0)
    noise = max_sensitivity(lambda xp: rng.random(gradcam.shape), rng.random(gradcam.shape), copies)
    assert stable.max() < 0.3 and noise.min() > 0.5, (stable, noise)


def test_agreement_flags_images_where_methods_disagree(planted_case):
    from keras_digits.explain.agreement import agreement

    *_, maps, _ = planted_case
    same = agreement({"a": maps["right"], "b": maps["right"] * 3.0})
    assert same["matrix"][0][1] == pytest.approx(1.0) and same["low"] == []
    mixed = agreement({"a": maps["right"], "b": maps["random"]})
    assert abs(mixed["matrix"][0][1]) < 0.3 and len(mixed["low"]) == len(maps["right"])


def test_sanity_foreground_ignores_shared_background_zeros():
    from keras_digits.explain.sanity import spearman, spearman_within

    rng = np.random.default_rng(0)
    fg = np.zeros((4, 12, 12), bool)
    fg[:, 3:9, 3:9] = True
    a = np.where(fg, rng.random(fg.shape) + 1.0, 0.0)  # zero on the background by construction
    b = np.where(fg, rng.random(fg.shape) + 1.0, 0.0)  # unrelated inside the foreground
    assert spearman(a, b).mean() > 0.6 and abs(np.nanmean(spearman_within(a, b, fg))) < 0.25


def test_scorecard_on_the_planted_model(planted_case):
    from keras_digits.explain.scorecard import evaluate, parse_metrics

    ex, x, t, c, maps, y = planted_case
    which = parse_metrics("all")
    result = evaluate(
        ex, x[:8], t[:8], c[:8], {k: m[:8] for k, m in maps.items()}, which, ground_truth=square_masks(y[:8])
    )
    assert result["localisation"]["mask"] == "given" and result["localisation"]["methods"]["right"]["beats_random"]
    assert result["mufidelity"]["methods"]["right"]["beats_random"]
    assert not result["mufidelity"]["methods"]["inverted"]["beats_random"]
    assert "sensitivity" not in result  # no compute function given
    other = evaluate(ex, x[:4], t[:4], c[:4], {"right": maps["right"][:4]}, ["sensitivity"], lambda *a: None)
    assert other["sensitivity"]["skipped"] == ["right"] and other["sensitivity"]["methods"] == {}
    with pytest.raises(KerasDigitsError, match="unknown metric 'lrp'"):
        parse_metrics("road,lrp")


# ---------------------------------------------------------------------------- DeepLIFT and the modified rules
@pytest.fixture(scope="module")
def biased_net():
    """A small conv net with non-zero biases and no max pooling: DeepLIFT's sum is exact here."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(6, 3, activation="relu", bias_initializer=keras.initializers.RandomNormal(0, 0.3))(h)
    h = keras.layers.Conv2D(6, 3, activation="tanh", bias_initializer=keras.initializers.RandomNormal(0, 0.3))(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(8, activation="relu", bias_initializer=keras.initializers.RandomNormal(0, 0.3))(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    return keras.Model(inputs, outputs)


def test_deeplift_sums_to_the_score_change_and_differs_from_gradient_times_input(biased_net):
    from keras_digits.explain.gradients import deeplift, gradinput
    from keras_digits.explain.modified import linear_check

    ex = explainer(biased_net)
    x = np.random.default_rng(1).integers(0, 256, (4, 12, 12, 1)).astype(np.float32)
    t, c = np.array([0, 1, 2, 0], np.int32), np.array([-1, -1, 0, 2], np.int32)
    maps = deeplift(ex, x, t, c)
    delta = ex.logit_scores(x, t, c) - ex.logit_scores(ex.black(x), t, c)
    np.testing.assert_allclose(maps.reshape(4, -1).sum(axis=1), delta, rtol=1e-3, atol=1e-4)
    assert not np.allclose(maps, gradinput(ex, x, t, c), rtol=0.05)  # biases make the reference matter
    assert linear_check(biased_net) == []


def test_guided_backprop_passes_only_positive_gradients(biased_net):
    from keras_digits.explain.core import Explainer

    ex = explainer(biased_net)
    x = np.random.default_rng(2).integers(0, 256, (3, 12, 12, 1)).astype(np.float32)
    t, c = np.zeros(3, np.int32), np.full(3, -1, np.int32)
    guided = ex.modified_gradients(x, t, c, "guided")
    plain = ex.input_gradients(x, t, c)
    assert np.isfinite(guided).all() and not np.allclose(guided, plain)
    assert isinstance(ex, Explainer) and len(ex._modified) == 1  # traced once, reused


# ---------------------------------------------------------------------------- any Keras model: the API and --model
@pytest.fixture(scope="module")
def plain_keras(tmp_path_factory):
    """A plain Keras Sequential with a logit head on 0..1 RGB images, saved as .keras and as a SavedModel."""
    import keras

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    folder = tmp_path_factory.mktemp("plain")
    model.save(folder / "plain.keras")
    model.export(str(folder / "sm"), format="tf_saved_model", verbose=False)
    return model, folder


TINY = dict(steps=4, samples=3, masks=20, coalitions=24, scorecam_channels=4)


def test_api_on_a_plain_keras_model(plain_keras):
    from keras_digits.explain import METHODS, evaluate, explain

    model, folder = plain_keras
    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    one = explain(folder / "plain.keras", x, method="gradcam", target=2)
    assert one.shape == (3, 16, 16) and one.dtype == np.float32
    every = explain(model, x, method="all", **TINY)
    assert list(every) == list(METHODS) and len(every) >= 16
    for name, m in every.items():
        assert m.shape == (3, 16, 16) and np.isfinite(m).all() and m.std() > 0, name
    result = evaluate(model, x, {k: every[k] for k in ("gradcam", "ig", "lime")}, sensitivity_n=2, **TINY)
    assert {"methods", "mufidelity", "road", "complexity", "sensitivity", "agreement"} <= set(result)
    assert "skipped" in result["localisation"]  # random RGB noise is not light digits on black
    listed = evaluate(model, x, {"gradcam": one}, metrics=["deletion", "complexity"], target=2)
    assert listed["computed"] == ["deletion", "complexity"] and "methods" in listed and "road" not in listed
    with pytest.raises(KerasDigitsError, match="maps must be a dict"):
        evaluate(model, x, one, target=2)
    with pytest.raises(KerasDigitsError, match="metrics must be a name"):
        evaluate(model, x, {"gradcam": one}, metrics=[3])
    with pytest.raises(KerasDigitsError, match="do not fit the model's input"):
        explain(model, np.zeros((2, 8, 8, 3)))
    with pytest.raises(KerasDigitsError, match="target must be classes 0..3"):
        explain(model, x, target=7)
    with pytest.raises(KerasDigitsError, match="unknown setting"):
        explain(model, x, stpes=3)
    with pytest.raises(KerasDigitsError, match="target must be a class index or one per image"):
        explain(model, x, target=[1, 2])
    with pytest.raises(KerasDigitsError, match="outside the value range 0..1"):
        explain(model, x * 3.0, value_range=(0, 1))
    with pytest.raises(KerasDigitsError, match="not 0..1, -1..1 or 0..255"):
        explain(model, x * 4.0 - 2.5)  # standardised inputs: the range must be given
    with pytest.raises(KerasDigitsError, match="no images"):
        explain(model, np.zeros((0, 16, 16, 3)))
    with pytest.raises(KerasDigitsError, match="background must be images"):
        explain(model, x, method="gradshap", background=np.zeros((2, 8, 8, 3)))
    from keras_digits.explain.api import explainer

    ex = explainer(model, images=x)
    assert explain(ex, x, method="saliency").shape == (3, 16, 16)
    with pytest.raises(KerasDigitsError, match="carries its own"):
        explain(ex, x, method="saliency", steps=4)


def test_api_on_a_saved_model_folder(plain_keras):
    from keras_digits.explain import explain

    model, folder = plain_keras
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    maps = explain(folder / "sm", x, method="saliency,ig,occlusion")
    direct = explain(model, x, method="saliency")
    np.testing.assert_allclose(maps["saliency"], direct, rtol=1e-3, atol=1e-6)  # the same gradients through TFSMLayer
    with pytest.raises(KerasDigitsError, match="a SavedModel is one opaque layer"):
        explain(folder / "sm", x, method="guided_backprop")
    every = explain(folder / "sm", x, method="all", steps=4, samples=3, masks=20, coalitions=24)
    assert {"guided_backprop", "deeplift", "guided_gradcam", "gradcam"}.isdisjoint(every) and len(every) == 12
    with pytest.raises(KerasDigitsError, match="spatial feature map"):
        explain(folder / "sm", x, method="gradcam")


def model_cli(args, capsys):
    from conftest import run_main

    from keras_digits.explain.cli import main

    return run_main(main, args, capsys)


FAST = [*("--steps", "4", "--samples", "3", "--masks", "20", "--coalitions", "24", "--scorecam-channels", "4")]


def test_cli_model_mode_on_files(plain_keras, tmp_path, capsys):
    from PIL import Image

    _, folder = plain_keras
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(imgs / f"p{i}.png")
    out = tmp_path / "out"
    args = ["--model", folder / "plain.keras", "--images", imgs, "--input-range", "0,1", "--out", out, "--quiet"]
    code, stdout, err = model_cli([*args, "--metrics", "deletion,complexity,agreement", "--sanity", *FAST], capsys)
    assert code == 0, err
    info = json.loads((out / "explain.json").read_text())
    assert info["model"].endswith("plain.keras") and info["options"]["value_range"] == [0.0, 1.0]
    assert info["logits"] == "logits" and len(info["methods"]) >= 16 and (out / "grid.png").is_file()
    assert {"methods", "complexity", "agreement"} <= set(info["metrics"]) and "road" not in info["metrics"]
    code, _, err = model_cli(["--model", folder / "sm", "--images", imgs, "--out", tmp_path / "sm", *FAST], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "sm" / "explain.json").read_text())
    assert "gradcam" not in info["methods"] and "guided_backprop" not in info["methods"] and "ig" in info["methods"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "MODEL"], "--model explains image files: give them with --images"),
        (["--model", "MISSING", "--images", "IMGS"], "model not found"),
        (["--model", "TEXT", "--images", "IMGS"], "explanations need a Keras model (.keras, .h5) or a SavedModel"),
        (["--model", "MODEL", "--images", "IMGS", "--method", "gradcam", "--layer", "logits"], "not a spatial map"),
        (["--model", "MODEL", "--images", "IMGS", "--out", "FOLDER"], "would replace"),
    ],
)
def test_cli_model_errors(plain_keras, tmp_path, capsys, args, message):
    from conftest import one_error_line

    _, folder = plain_keras
    (tmp_path / "notes.txt").write_text("hello")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    subs = {
        "MODEL": folder / "plain.keras",
        "MISSING": tmp_path / "none.keras",
        "TEXT": tmp_path / "notes.txt",
        "IMGS": imgs,
        "FOLDER": folder,
    }
    code, _, err = model_cli([subs.get(a, a) for a in args], capsys)
    assert code == 2 and message in one_error_line(err), err


def test_cli_input_range_is_checked_by_the_parser(capsys):
    from keras_digits.explain.cli import build_parser

    for bad, message in (("1,0", "LOW must be below HIGH"), ("0-255", "expected LOW,HIGH")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--model", "m.keras", "--input-range", bad])
        assert message in capsys.readouterr().err


def test_two_input_model_is_one_line():
    import keras

    from keras_digits.explain import explain

    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b]))))
    with pytest.raises(KerasDigitsError, match="one image input; this one has 2"):
        explain(model, np.zeros((1, 8, 8, 1)))


# ---------------------------------------------------------------------------- explanations under shift
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from keras_digits.config import TrainConfig
    from keras_digits.training.run import train_and_evaluate

    run = tmp_path_factory.mktemp("shift") / "run"
    train_and_evaluate(TrainConfig(arch="simple_cnn_v1", dataset="digits", epochs=3, verbose=0), run)
    return run


def test_evaluate_perturb_records_explanations(digits_run, capsys):
    from conftest import one_error_line, run_main

    from keras_digits.evaluate import main

    code, out, err = run_main(
        main, ["--run", digits_run, "--perturb", "noise:5", "--explain", "ig", "--explain-n", "20"], capsys
    )
    assert code == 0, err
    assert "explained with | deletion AUC" in out and "| ig |" in out and "ink relevance" in out
    path = next(digits_run.glob("robustness-digits-test-*.json"))
    rows = json.loads(path.read_text())["rows"]
    for row in rows:
        e = row["explain"]
        assert e["method"] == "ig" and e["n"] == 20 and 0 <= e["deletion_auc"] <= 1 and 0 <= e["ink_relevance"] <= 1
    assert rows[0]["explain"]["deletion_auc"] < rows[0]["explain"]["deletion_auc_random"]
    assert "explained with" in (digits_run / "report.html").read_text()
    code, _, err = run_main(main, ["--run", digits_run, "--explain", "gradcam"], capsys)
    assert code == 2 and "give --perturb and/or --dataset" in one_error_line(err)
