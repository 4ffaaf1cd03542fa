"""Precision policy, the fused BatchNormalization, schedules and losses of the recipes, recipes,
selection on validation AUC, and the throughput benchmark's peer and profile table."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_main

from keras_digits.config import TrainConfig, comparable, load_config_file
from keras_digits.errors import KerasDigitsError


def run_benchmark(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """benchmarks/SCRIPT with ARGS in a fresh interpreter, its output captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------- precision
def test_auto_precision_follows_the_hardware():
    from keras_digits.runtime.precision import Hardware, resolve

    assert resolve("auto", Hardware(cpu_bf16="AMX-BF16")).name == "bfloat16"
    assert resolve("auto", Hardware(cpu_bf16="AVX512-BF16")).name == "float32"  # measured slower without AMX
    assert resolve("auto", Hardware()).name == "float32"  # an AVX2-only CPU emulates bfloat16
    assert resolve("auto", Hardware(gpu_capabilities=((9, 0),))).name == "bfloat16"
    assert resolve("auto", Hardware(gpu_capabilities=((7, 5),))).name == "float16"
    assert resolve("auto", Hardware(gpu_capabilities=((6, 1),))).name == "float32"
    assert (
        resolve("auto", Hardware(cpu_bf16="AMX-BF16", gpu_capabilities=((7, 0),))).name == "float16"
    )  # the GPU trains
    explicit = resolve("bfloat16", Hardware())
    assert explicit.name == "bfloat16" and explicit.policy == "mixed_bfloat16"
    assert resolve("float16", Hardware()).policy == "mixed_float16"
    with pytest.raises(KerasDigitsError, match="unknown precision"):
        resolve("int8", Hardware())


def test_auto_ignores_amx_that_onednn_is_told_not_to_use(monkeypatch):
    from keras_digits.runtime import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    monkeypatch.setattr(precision, "gpu_capabilities", lambda: ())
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision.detect().cpu_bf16 == "AMX-BF16" and precision.resolve("auto").name == "bfloat16"
    for cap, feature in (("AVX2", "AVX512-BF16"), ("AVX512_CORE_BF16", "AVX512-BF16")):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert precision.detect().cpu_bf16 == feature and precision.resolve("auto").name == "float32", cap


def test_cpu_flags_are_read_not_assumed(tmp_path):
    from keras_digits.runtime.precision import cpu_bf16_feature, cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    flags = cpu_flags.__wrapped__(str(info))
    assert "avx512_bf16" in flags and cpu_bf16_feature(flags) == "AVX512-BF16"
    info.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    assert cpu_bf16_feature(cpu_flags.__wrapped__(str(info))) is None
    assert cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


def test_slow_explicit_precisions_get_a_note():
    from keras_digits.runtime.precision import Hardware, resolve, warning

    avx2 = Hardware()
    assert "slower than float32" in warning(resolve("bfloat16", avx2), avx2)
    avx512 = Hardware(cpu_bf16="AVX512-BF16")
    assert "no AMX-BF16" in warning(resolve("bfloat16", avx512), avx512)
    assert "slower than float32" in warning(resolve("float16", avx2), avx2)
    assert warning(resolve("bfloat16", Hardware(cpu_bf16="AMX-BF16")), Hardware(cpu_bf16="AMX-BF16")) is None
    assert warning(resolve("auto", avx2), avx2) is None


def test_setup_runtime_sets_and_records_the_policy(capsys):
    import keras

    from keras_digits.runtime.precision import resolve
    from keras_digits.training.setup import setup_runtime

    try:
        cfg = setup_runtime(TrainConfig(precision="bfloat16"), verbose=1)
        assert cfg.precision == "bfloat16" and keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert "precision bfloat16" in capsys.readouterr().out
        cfg = setup_runtime(TrainConfig(precision="auto"))
        assert cfg.precision == resolve("auto").name != "auto"
        setup_runtime(TrainConfig(precision="float32"))
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_old_mixed_precision_key_and_flag_still_read(tmp_path):
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    old = tmp_path / "config.json"  # a run recorded before this options existed
    new_options = ("precision", "label_smoothing", "select_on", "steps_per_execution")
    old.write_text(
        json.dumps(
            {**{k: v for k, v in TrainConfig().to_dict().items() if k not in new_options}, "mixed_precision": False}
        )
    )
    assert load_config_file(old)["precision"] == "float32"
    assert comparable(json.loads(old.read_text())) == comparable(TrainConfig(precision="float32").to_dict())
    assert comparable(json.loads(old.read_text())) != comparable(TrainConfig(label_smoothing=0.1).to_dict())
    args = build_parser().parse_args(["--mixed-precision"])
    assert config_from_args(args).precision == "auto"
    assert comparable(TrainConfig(precision="auto").to_dict())["precision"] in ("float32", "bfloat16", "float16")


def test_bfloat16_run_trains_saves_and_records(tmp_path, mnist_like_dir, capsys):
    import keras

    from keras_digits.train import main

    run = tmp_path / "run"
    try:
        code, out, _ = run_main(
            main,
            [
                "--dataset",
                "mnist",
                "--data-dir",
                mnist_like_dir,
                "--epochs",
                "2",
                "--precision",
                "bfloat16",
                "--batch-size",
                "32",
                "--run-dir",
                run,
                "--verbose",
                "0",
                "--steps-per-execution",
                "3",
            ],
            capsys,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert code == 0, out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["precision"] == "bfloat16" and cfg["steps_per_execution"] == 3
    model = keras.saving.load_model(run / "best.keras", compile=False)
    assert model.get_layer("block1_conv").dtype_policy.name == "mixed_bfloat16"
    assert str(model.outputs[0].dtype) == "float32"
    from keras_digits.reporting.history import read_history

    assert read_history(run / "history.csv")["accuracy"][-1] > 0.8  # learnable squares: bfloat16 learns them
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------------------- fused BatchNorm
@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (12, 7)])
def test_fused_batchnorm_matches_keras(shape):
    import keras
    import tensorflow as tf

    from keras_digits.models.batchnorm import FusedBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2, 3, size=shape).astype("float32"))
    ref, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    ref.build(shape)
    fused.build(shape)
    gamma = rng.normal(1, 0.2, size=shape[-1]).astype("float32")
    ref.gamma.assign(gamma)
    fused.gamma.assign(gamma)
    for training in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a, b = ref(x, training=training), fused(x, training=training)
            la, lb = tf.reduce_sum(a * a * x), tf.reduce_sum(b * b * x)
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(tape.gradient(la, x), tape.gradient(lb, x), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ref.moving_mean, fused.moving_mean, atol=1e-6)
        np.testing.assert_allclose(ref.moving_variance, fused.moving_variance, rtol=1e-5)


def test_fused_batchnorm_in_models_saves_and_loads(tmp_path):
    import keras

    from keras_digits.models import build_model
    from keras_digits.models.batchnorm import FusedBatchNormalization

    model = build_model("simple_cnn", (28, 28, 1), 10)
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in model.layers) == 4
    x = np.random.default_rng(0).integers(0, 255, size=(4, 28, 28, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(model.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-6)
    layer = FusedBatchNormalization(axis=1)  # another axis: Keras' own computation
    y = layer(keras.ops.ones((2, 3, 4)), training=True)
    assert tuple(y.shape) == (2, 3, 4)


# ---------------------------------------------------------------------------- schedules and losses
def test_onecycle_warms_up_then_decays():
    from keras_digits.training.optim import OneCycle

    sched = OneCycle(0.01, 100)
    lrs = [float(sched(s)) for s in range(101)]
    assert lrs[0] == pytest.approx(0.001)
    assert max(lrs) == pytest.approx(0.01, rel=1e-3) and int(np.argmax(lrs)) == 20
    assert lrs[100] == pytest.approx(1e-5, rel=1e-2)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[20:], lrs[21:]))
    assert OneCycle.from_config(sched.get_config()).get_config() == sched.get_config()


def test_onecycle_needs_steps_and_lives_in_the_optimizer():
    from keras_digits.training.optim import OneCycle, make_optimizer

    cfg = TrainConfig(schedule="onecycle", epochs=3)
    with pytest.raises(KerasDigitsError, match="steps per epoch"):
        make_optimizer(cfg)
    opt = make_optimizer(cfg, steps_per_epoch=10)
    assert isinstance(opt._learning_rate, OneCycle) and opt._learning_rate.total_steps == 30


def test_label_smoothing_loss():
    import keras

    from keras_digits.training.optim import SparseSmoothedCrossentropy

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    y = np.array([0, 2])
    plain = keras.losses.SparseCategoricalCrossentropy()(y, probs)
    assert float(SparseSmoothedCrossentropy(0.0)(y, probs)) == pytest.approx(float(plain), rel=1e-5)
    e = 0.3
    target = np.eye(3)[y] * (1 - e) + e / 3
    want = float(np.mean(-(target * np.log(probs)).sum(axis=1)))
    assert float(SparseSmoothedCrossentropy(e)(y, probs)) == pytest.approx(want, rel=1e-4)
    with pytest.raises(KerasDigitsError, match="label-smoothing"):
        TrainConfig(label_smoothing=1.0)


# ---------------------------------------------------------------------------- recipes
def test_recipes_are_valid_configs():
    from keras_digits.recipes import RECIPES, recipe_config, recipe_path

    for name in RECIPES:
        cfg = TrainConfig.from_dict(recipe_config(name))
        assert recipe_path(name).is_file()
        assert cfg.to_dict()  # every key known, every value valid
    medmnist = recipe_config("medmnist")
    assert (
        medmnist["batch_size"],
        medmnist["epochs"],
        medmnist["lr"],
        medmnist["schedule"],
        medmnist["select_on"],
        medmnist["arch"],
    ) == (128, 100, 0.001, "step", "auc", "resnet18")
    assert recipe_config("reports")["batch_size"] == 32 and recipe_config("reports")["epochs"] == 15


def test_recipe_flags_and_config_precedence(tmp_path):
    from keras_digits.train import build_parser
    from keras_digits.training.flags import config_from_args

    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["--recipe", "medmnist"]))
    assert cfg.epochs == 100 and cfg.select_on == "auc"
    cfg = config_from_args(parser.parse_args(["--recipe", "medmnist", "--epochs", "7", "--dataset", "mnist"]))
    assert cfg.epochs == 7 and cfg.dataset == "mnist" and cfg.batch_size == 128
    override = tmp_path / "c.json"
    override.write_text('{"batch_size": 16}')
    cfg = config_from_args(parser.parse_args(["--recipe", "medmnist", "--config", str(override)]))
    assert cfg.batch_size == 16 and cfg.epochs == 100


def test_unknown_recipe_is_one_line(capsys):
    from keras_digits.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--recipe", "fastest"])
    assert exc.value.code == 2
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- selection on AUC
def test_select_on_auc_keeps_the_best_val_auc_epoch(tmp_path, mnist_like_dir, capsys):
    from keras_digits.reporting.history import read_history
    from keras_digits.train import main

    run = tmp_path / "run"
    code, out, _ = run_main(
        main,
        [
            "--dataset",
            "mnist",
            "--data-dir",
            mnist_like_dir,
            "--epochs",
            "3",
            "--select-on",
            "auc",
            "--schedule",
            "onecycle",
            "--label-smoothing",
            "0.1",
            "--precision",
            "float32",
            "--run-dir",
            run,
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert code == 0, out
    history = read_history(run / "history.csv")
    aucs = history["val_auc"]
    assert len(aucs) == 3 and all(0.0 <= a <= 1.0 for a in aucs)
    assert len(set(np.round(history["learning_rate"], 8))) == 3  # per-step schedule: a new rate every epoch
    metrics = json.loads((run / "metrics.json").read_text())
    best = int(np.argmax(aucs))  # the kept model is the best-AUC epoch: its val AUC is reproduced
    assert metrics["val"]["auc"] == pytest.approx(aucs[best], abs=1e-4)


# ---------------------------------------------------------------------------- the benchmark
def test_torch_peers_match_the_keras_models():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch_peers

    from keras_digits.models import build_model

    for arch, shape in (("simple_cnn", (28, 28, 1)), ("resnet18", (28, 28, 3))):
        peer = torch_peers.PEERS[arch](shape[-1], 9, shape[0])
        n_torch = sum(p.numel() for p in peer.parameters())
        keras_model = build_model(arch, shape, 9)
        n_keras = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
        assert n_torch == n_keras, arch
        out = peer(torch.zeros(2, shape[-1], *shape[:2]))
        assert tuple(out.shape) == (2, 9)
    x = np.random.default_rng(0).integers(0, 255, size=(40, 28, 28, 1), dtype=np.uint8)
    ips = torch_peers.train_images_per_second(
        "simple_cnn", x, np.arange(40) % 10, 10, 8, steps=3, warmup=1, precision="bfloat16"
    )
    assert ips > 0


@pytest.mark.slow
def test_throughput_benchmark_prints_ratio_and_profile(tmp_path):
    pytest.importorskip("torch")
    out = run_benchmark(
        "train_throughput.py",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--repeats",
        "1",
        "--peer",
        "torch",
        "--profile",
        str(tmp_path / "prof"),
        "--steps-per-execution",
        "2",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio keras_digits / PyTorch" in out.stdout
    assert "_MklNative" in out.stdout or "Conv2D" in out.stdout
    assert "peak RSS" in out.stdout


def test_throughput_benchmark_caps_the_isa_and_states_it_beside_every_figure():
    """--isa avx2 caps both frameworks before they load; --recipe times the recipe's model and step."""
    from keras_digits.runtime import precision

    if "avx2" not in precision.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    out = run_benchmark(
        "train_throughput.py",
        "--isa",
        "avx2",
        "--recipe",
        "fast",
        "--steps",
        "4",
        "--warmup",
        "4",
        "--repeats",
        "2",
        "--without-conv-paths",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("CPU: ") and "ISA AVX2" in line for line in lines), out.stdout
    head = next(line for line in lines if line.startswith("arch "))
    assert "simple_cnn" in head and "batch 128" in head and "params 99,402" in head and "steps_per_execution 4" in head
    figures = [line for line in lines if "images/s" in line]
    assert len(figures) == 4 and all(line.endswith("[AVX2, float32]") for line in figures), figures
    assert "with / without:" in out.stdout and "per repeat: median" in out.stdout


@pytest.mark.slow
def test_small_map_benchmarks_run(tmp_path):
    out = run_benchmark(
        "train_throughput.py",
        "--arch",
        "resnet18",
        "--shape",
        "28,28,3",
        "--classes",
        "3",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--precision",
        "bfloat16",
        "--without-conv-paths",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "with / without:" in out.stdout
    out = run_benchmark("conv_paths.py", "--batch", "2", "--repeats", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4x4x512" in out.stdout and "TensorFlow's kernels" in out.stdout


@pytest.mark.slow
def test_medmnist_recipe_runs_end_to_end(tmp_path, pathmnist_dir, capsys):
    """The MedMNIST recipe on a PathMNIST file in the real layout: step schedule, no early stopping,
    the best-val-AUC epoch kept (a narrow ResNet-18 and 3 epochs keep it quick)."""
    import keras

    from keras_digits.reporting.history import read_history
    from keras_digits.train import main

    run = tmp_path / "run"
    try:
        code, out, _ = run_main(
            main,
            [
                "--recipe",
                "medmnist",
                "--data-dir",
                pathmnist_dir,
                "--epochs",
                "4",
                "--model-kwargs",
                '{"width": 8}',
                "--run-dir",
                run,
                "--verbose",
                "0",
            ],
            capsys,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert code == 0, out
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["arch"], cfg["dataset"], cfg["batch_size"], cfg["schedule"], cfg["select_on"]) == (
        "resnet18",
        "pathmnist",
        128,
        "step",
        "auc",
    )
    history = read_history(run / "history.csv")
    assert len(history["val_auc"]) == 4  # no early stopping
    assert history["learning_rate"] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])  # x0.1 at 50 % and 75 %
    assert "peak memory" in out


def test_augmentation_stays_float32_under_a_mixed_policy():
    """Augmentation layers live in tf.data: a global mixed_bfloat16 policy (set by --precision before
    the pipelines are built) must not make them compute in bfloat16 (contrast failed on a dtype clash)."""
    import keras
    from conftest import make_images

    from keras_digits.data.augment import augment_dataset, make_augment
    from keras_digits.data.pipeline import make_pipeline

    x, y = make_images(16, (28, 28, 1), 10)
    batches = []
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            fn = make_augment(
                "contrast=1:0.3,rotate=1:10,zoom=1:0.1", "mnist", seed=3, channels=1, image_shape=(28, 28, 1)
            )
            ds = augment_dataset(make_pipeline(x, y, 8), fn, seed=3)
            batches.append(next(iter(ds))[0].numpy())
        finally:
            keras.mixed_precision.set_global_policy("float32")
    assert batches[0].dtype == np.uint8
    np.testing.assert_array_equal(batches[0], batches[1])  # the same images whatever the policy


def test_tune_refuses_select_on(tmp_path, capsys):
    from keras_digits.tune.cli import main as tune_main

    code, _, err = run_main(tune_main, ["--dataset", "digits", "--select-on", "auc", "--directory", tmp_path], capsys)
    assert code == 2 and "--select-on accuracy" in err


@pytest.mark.parametrize("balance,augment", [("none", "none"), ("none", "rotate=0.5:10"), ("resample", "none")])
def test_training_pipelines_run_without_tf_data_autotuning(mnist_like_dir, balance, augment):
    """Deleting an iterator waited for tf.data's autotuning thread: every epoch's new iterator started late."""
    from keras_digits.data import load_for
    from keras_digits.data.datasets import make_datasets
    from keras_digits.data.pipeline import epoch_variable, make_pipeline

    cfg = TrainConfig(dataset="mnist", data_dir=str(mnist_like_dir), balance=balance, augment=augment, batch_size=16)
    pipes = make_datasets(cfg, load_for(cfg), epoch=epoch_variable())
    plain = make_pipeline(np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, np.int32), 4)
    for ds in (pipes.train, pipes.val, plain):
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is True
    images, labels = next(iter(pipes.train))
    assert images.dtype.name == "uint8" and images.shape[0] == 16


def test_epoch_overhead_benchmark_compares_both_settings(mnist_like_dir):
    """The benchmark's 'autotune on' side must really build autotuning pipelines."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import epoch_overhead
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from keras_digits.data import load_for
    from keras_digits.data.datasets import make_datasets

    for balance in ("none", "resample"):
        cfg = TrainConfig(dataset="mnist", data_dir=str(mnist_like_dir), batch_size=16, balance=balance)
        bundle = load_for(cfg)
        with epoch_overhead.autotuning_on():
            on = make_datasets(cfg, bundle)
        off = make_datasets(cfg, bundle)
        assert on.train.options().autotune.enabled is True and on.val.options().autotune.enabled is True
        assert off.train.options().autotune.enabled is False
    bad = run_benchmark("epoch_overhead.py", "--epochs", "1", timeout=120)
    assert bad.returncode == 2 and "at least 2" in bad.stderr


@pytest.mark.slow
def test_epoch_overhead_benchmark_runs(mnist_like_dir):
    out = run_benchmark(
        "epoch_overhead.py", "--data-dir", str(mnist_like_dir), "--epochs", "2", "--recipe", "fast", "--repeats", "2"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("as shipped") == 3 and out.stdout.count("autotune on") == 3
    assert "x as long with autotuning" in out.stdout
