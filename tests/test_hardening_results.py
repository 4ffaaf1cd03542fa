"""Issue 25 (round 3), results: label names are never mathtext and a plot never costs a score; scores on
other data and robustness rows accumulate instead of replacing each other, labelled on the page;
evaluate --perturb reports progress; report --run takes the run lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, one_error_line, run_main

ODD = r"$\foo$ bar"  # mathtext would fail on it: \foo is no symbol
DENSE = ["--arch", "dense", "--epochs", "1", "--verbose", "0"]


def png_of(fig) -> bytes:
    from keras_digits.reporting.html import figure_png

    return figure_png(fig)


def write_tree(root: Path, labels: tuple[str, ...], seed: int, per_class: int = 12) -> Path:
    from PIL import Image

    x, y = make_images(per_class * len(labels), (16, 16), len(labels), seed)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / labels[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    return root


def write_mnist(folder: Path, n_train: int, n_test: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr = make_images(n_train, (28, 28), 10, seed=seed)
    x_te, y_te = make_images(n_test, (28, 28), 10, seed=seed + 1)
    np.savez_compressed(folder / "mnist.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return folder


def train_cli(argv, capsys) -> tuple[int, str, str]:
    from keras_digits.train import main

    return run_main(main, argv, capsys)


def evaluate_cli(argv, capsys) -> tuple[int, str, str]:
    from keras_digits.evaluate import main

    return run_main(main, argv, capsys)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def mnist_run(base) -> dict[str, Path]:
    """A dense run on a small mnist.npz (trained once), and a second, different mnist.npz."""
    from keras_digits.train import main
    from keras_digits.utils.cli import run_cli

    data, other = write_mnist(base / "mnist", 200, 60, seed=1), write_mnist(base / "other", 50, 20, seed=7)
    run = base / "mnist_run"
    assert run_cli(main, [*DENSE, "--dataset", "mnist", "--data-dir", str(data), "--run-dir", str(run)]) == 0
    return {"run": run, "data": data, "other": other}


@pytest.fixture
def run_copy(mnist_run, tmp_path) -> Path:
    shutil.copytree(mnist_run["run"], tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------------------- 2. label names are data
def _confusion(names):
    from keras_digits.reporting.plots import plot_confusion_figure

    return plot_confusion_figure(np.array([[3, 1], [0, 2]]), names, title=f"model on {ODD}")


def _roc(names):
    from keras_digits.reporting.plots import plot_roc_pr_figure

    y = np.array([0, 1, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    return plot_roc_pr_figure(y, probs, names)[0]


def _curves(names):
    from keras_digits.reporting.plots import plot_curves_figure

    return plot_curves_figure({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.8]}, title=names[0])


def _mistakes(names):
    from keras_digits.reporting.tb_images import mistakes_grid

    ex = {
        "mistakes": 2,
        "images": np.zeros((2, 8, 8, 1), np.uint8),
        "y": np.array([0, 1]),
        "probs": np.array([[0.2, 0.8], [0.9, 0.1]]),
    }
    return mistakes_grid(ex, names)


def _explain(names):
    from keras_digits.explain.figures import grid_figure

    rng = np.random.default_rng(0)
    return grid_figure(
        rng.integers(0, 255, (2, 8, 8, 1), dtype=np.uint8), {ODD: rng.random((2, 8, 8))}, names, title=ODD
    )


@pytest.mark.parametrize("draw", [_confusion, _roc, _curves, _mistakes, _explain])
def test_label_names_are_drawn_as_they_are_never_as_mathtext(draw):
    assert png_of(draw([ODD, "plain"]))[:4] == b"\x89PNG"
    assert png_of(draw(["a $5 note", r"a\$b$"]))[:4] == b"\x89PNG"  # odd and escaped dollars too


def test_grid_plots_show_factor_and_value_text_as_it_is(tmp_path):
    from keras_digits.studies.grid import RunResult, Variant
    from keras_digits.studies.report import plot_summary, plot_val_curves, summarize

    run = tmp_path / "r"
    run.mkdir()
    (run / "history.csv").write_text("epoch,val_accuracy\n0,0.5\n1,0.7\n")
    results = [
        RunResult(Variant(ODD, value, {}), 0, run, {"val": {"accuracy": acc}, "test": {"accuracy": acc}}, True)
        for value, acc in ((r"$\x$", 0.5), ("$y", 0.6))
    ]
    plot_summary(summarize(results), tmp_path / "s.png", title=ODD)
    assert plot_val_curves(results, tmp_path / "c.png", title=ODD)
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "c.png").stat().st_size > 1000


def test_a_class_folder_named_like_mathtext_trains_to_a_finished_run_and_page(tmp_path, capsys):
    """The issue's reproduction, through the train and report CLIs."""
    from keras_digits.report import main as report_main

    tree = write_tree(tmp_path / "tree", (ODD, "plain"), seed=1)
    run = tmp_path / "run"
    code, out, err = train_cli(
        [*DENSE, "--dataset", "folder", "--data-dir", tree, "--image-size", "16", "--run-dir", run], capsys
    )
    assert code == 0, err
    assert "warning" not in err and "run saved to" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert [c["label"] for c in metrics["test"]["per_class"]] == [ODD, "plain"]
    page = (run / "report.html").read_text()
    assert "could not be drawn" not in page and "$\\foo$ bar" in page
    assert (run / "confusion_matrix.png").stat().st_size > 1000 and not (run / "trained.json").exists()
    code, out, err = run_main(report_main, ["--run", run], capsys)
    assert code == 0 and "report written to" in out, err


def test_a_plot_that_fails_costs_no_score_one_warning_and_a_note_on_the_page(tmp_path, capsys, monkeypatch):
    import keras_digits.reporting.plots as report

    def broken(*args, **kwargs):
        raise ValueError("no such glyph\nsecond line")

    monkeypatch.setattr(report, "plot_confusion_figure", broken)
    monkeypatch.setattr(report, "plot_curves_figure", broken)
    tree = write_tree(tmp_path / "tree", ("a", "b"), seed=2)
    run = tmp_path / "run"
    code, out, err = train_cli(
        [*DENSE, "--dataset", "folder", "--data-dir", tree, "--image-size", "16", "--run-dir", run], capsys
    )
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any(
        "confusion matrix plot could not be drawn" in w and "no such glyph second line" in w for w in warnings
    ), err
    assert any("learning curves plot could not be drawn" in w for w in warnings), err
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    assert not (run / "trained.json").exists() and not (run / "confusion_matrix.png").exists()
    page = (run / "report.html").read_text()
    assert "The learning curves plot could not be drawn (ValueError: no such glyph second line)" in page
    assert "Confusion matrix (test)" in page  # the page's own (HTML) matrix is still there


def test_a_grid_whose_figure_fails_still_writes_its_table_and_page(tmp_path, monkeypatch, capsys):
    import keras_digits.studies.report as grid_report
    from keras_digits.studies.grid import RunResult, Variant

    def broken(*args, **kwargs):
        raise RuntimeError("renderer gone")

    monkeypatch.setattr(grid_report, "plot_summary", broken)
    (tmp_path / "study.png").write_bytes(b"old figure")
    results = [RunResult(Variant("lr", v, {}), 0, tmp_path / v, {"val": {"accuracy": 0.5}}, True) for v in ("1", "2")]
    paths = grid_report.write_results(tmp_path, "study", results, title="A study")
    assert "summary figure could not be drawn" in paths["md"].read_text()
    assert "study.png" not in paths["md"].read_text() and not (tmp_path / "study.png").exists()
    assert "<h2>Settings</h2>" in paths["html"].read_text()
    assert "warning: the summary plot could not be drawn" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 3. scores on other data
def _other_files(run: Path) -> list[Path]:
    return sorted(run.glob("metrics-*.json"))


def test_two_different_scorings_of_one_dataset_both_survive_and_the_report_shows_both(
    mnist_run, run_copy, tmp_path, capsys
):
    run = run_copy
    swap = tmp_path / "swap.json"
    swap.write_text(json.dumps({"0": "1", "1": "0"}))
    before = (run / "metrics.json").read_text()
    code, _, err = evaluate_cli(["--run", run, "--dataset", "mnist", "--label-map", swap], capsys)
    assert code == 0, err
    code, _, err = evaluate_cli(["--run", run, "--dataset", "mnist", "--data-dir", mnist_run["other"]], capsys)
    assert code == 0, err
    files = _other_files(run)
    assert len(files) == 2, files
    results = [json.loads(p.read_text()) for p in files]
    assert sorted(r["test"]["n"] for r in results) == [20, 60]
    mapped = [r for r in results if r.get("label_map")]
    assert len(mapped) == 1 and mapped[0]["label_map"] == {"0": "1", "1": "0"} and mapped[0]["test"]["n"] == 60
    assert (run / "metrics.json").read_text() == before
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    for p in files:
        assert p.name in page and p.name in md
    assert "0 → 1, 1 → 0" in page and "0 → 1, 1 → 0" in md
    assert str(mnist_run["other"] / "mnist.npz") in page or str(mnist_run["other"]) in page
    assert "| test | 20 |" in md and "| test | 60 |" in md
    assert md.startswith("# dense on mnist")  # train's own part is kept

    # the same scoring again replaces its own result; another split of it is added beside it
    code, _, err = evaluate_cli(["--run", run, "--dataset", "mnist", "--data-dir", mnist_run["other"]], capsys)
    assert code == 0 and _other_files(run) == files, err
    code, _, err = evaluate_cli(
        ["--run", run, "--dataset", "mnist", "--data-dir", mnist_run["other"], "--split", "val"], capsys
    )
    assert code == 0 and _other_files(run) == files, err
    other = next(json.loads(p.read_text()) for p in files if "label_map" not in json.loads(p.read_text()))
    assert {"val", "test"} <= set(other) and set(other["fingerprints"]) == {"val", "test"}


LEGACY = {
    "dataset": "mnist",
    "source": "somewhere/mnist.npz",
    "split": "test",
    "preprocess": "digit",
    "trained_on": "mnist",
    "test": {"n": 10000, "accuracy": 0.5, "loss": 1.0, "f1": 0.5, "auc": None},
}


def test_an_older_metrics_name_file_is_kept_and_shown_beside_new_scores(run_copy, capsys):
    run = run_copy
    (run / "metrics-mnist-digit.json").write_text(json.dumps(LEGACY))
    code, _, err = evaluate_cli(["--run", run, "--dataset", "mnist"], capsys)
    assert code == 0, err
    assert json.loads((run / "metrics-mnist-digit.json").read_text()) == LEGACY
    files = _other_files(run)
    assert len(files) == 2 and json.loads(files[0].read_text())["test"]["n"] == 60, files
    page = (run / "report.html").read_text()
    assert all(p.name in page for p in files) and "10000" in page


def test_a_file_holding_another_scoring_is_never_written_over(mnist_run, run_copy, capsys):
    from keras_digits.data import load_dataset
    from keras_digits.data.fingerprint import split_fingerprint
    from keras_digits.evaluation.results import scoring_name

    run = run_copy
    # a file already at the name this scoring gets, but holding another scoring (a hash collision, a hand copy)
    bundle = load_dataset("mnist", str(mnist_run["data"]))
    taken = run / f"metrics-mnist-{scoring_name('mnist', bundle.source, split_fingerprint(*bundle.test), None, True)}"
    squatter = {**LEGACY, "source": "elsewhere"}
    Path(f"{taken}.json").write_text(json.dumps(squatter))
    code, _, err = evaluate_cli(["--run", run, "--dataset", "mnist"], capsys)
    assert code == 0, err
    assert json.loads(Path(f"{taken}.json").read_text()) == squatter
    new = json.loads(Path(f"{taken}-2.json").read_text())
    assert new["test"]["n"] == 60 and new["preprocess"] == "digit"
    page = (run / "report.html").read_text()
    assert f"{taken.name}.json" in page and f"{taken.name}-2.json" in page and "10000" in page


def test_evaluate_on_another_data_dir_shares_the_file_of_the_same_scoring(mnist_run, run_copy, capsys):
    run = run_copy
    code, _, err = evaluate_cli(["--run", run, "--data-dir", mnist_run["other"]], capsys)
    assert code == 0 and "not the data this run was trained" in err, err
    code, _, err = evaluate_cli(
        [
            "--run",
            run,
            "--dataset",
            "mnist",
            "--data-dir",
            mnist_run["other"],
            "--preprocess",
            "none",
            "--split",
            "val",
        ],
        capsys,
    )
    assert code == 0, err
    files = _other_files(run)
    assert len(files) == 1, files
    result = json.loads(files[0].read_text())
    assert {"val", "test"} <= set(result) and result["test"]["n"] == 20


# ---------------------------------------------------------------------------- 4 and 10. robustness
def test_perturb_reports_each_corruption_on_stderr_as_it_finishes(run_copy, capsys):
    code, out, err = evaluate_cli(["--run", run_copy, "--perturb", "noise:1", "jpeg:2"], capsys)
    assert code == 0, err
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and progress[0].startswith("[1/2] noise:1: accuracy ") and progress[0].endswith(" s)")
    assert progress[1].startswith("[2/2] jpeg:2: accuracy ")
    assert any(line.startswith("clean: accuracy ") for line in err.splitlines())
    assert out.startswith("robustness on mnist test (none preprocessing), 60 images:\n| corruption |")
    assert "| noise | 1 |" in out and "[1/2]" not in out


def test_robustness_rows_accumulate_per_seed_and_the_report_shows_them_all(run_copy, capsys):
    run = run_copy
    code, out, err = evaluate_cli(["--run", run, "--perturb", "noise:1", "jpeg:2"], capsys)
    assert code == 0, err

    code, out, err = evaluate_cli(["--run", run, "--perturb", "blur:1"], capsys)
    assert code == 0, err
    assert "| blur | 1 |" in out and "| noise |" not in out  # stdout: this command's rows, as before
    files = sorted(run.glob("robustness-*.json"))
    assert len(files) == 1, files
    rows = json.loads(files[0].read_text())["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [("clean", 0), ("noise", 1), ("jpeg", 2), ("blur", 1)]

    code, _, err = evaluate_cli(["--run", run, "--perturb", "noise:1", "--seed", "3"], capsys)
    assert code == 0, err
    files = sorted(run.glob("robustness-*.json"))
    assert len(files) == 2 and [json.loads(p.read_text())["seed"] for p in files] == [0, 3]
    assert len(json.loads(files[0].read_text())["rows"]) == 4  # seed 0's rows untouched
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    for p in files:
        assert p.name in page and p.name in md
    assert page.count('<td class="l">blur</td>') == 1 and "seed 3" in page and "| jpeg | 2 |" in md


def test_merge_rows_replaces_the_same_setting_and_keeps_clean_first():
    from keras_digits.evaluation.results import merge_rows

    old = [
        {"corruption": "clean", "severity": 0, "accuracy": 0.9},
        {"corruption": "noise", "severity": 1, "accuracy": 0.8},
    ]
    new = [
        {"corruption": "clean", "severity": 0, "accuracy": 0.9},
        {"corruption": "noise", "severity": 1, "accuracy": 0.7},
        {"corruption": "blur", "severity": 2, "accuracy": 0.6},
    ]
    merged = merge_rows(old, new)
    assert [(r["corruption"], r["accuracy"]) for r in merged] == [("clean", 0.9), ("noise", 0.7), ("blur", 0.6)]


# ---------------------------------------------------------------------------- 9. report --run takes the lock
def test_report_on_a_run_held_by_another_command_is_one_line_and_exit_2(tmp_path, capsys):
    from keras_digits.report import main as report_main
    from keras_digits.utils.lock import hold

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"arch": "dense"}))
    (run / "metrics.json").write_text(
        json.dumps({"status": "finished", "test": {"n": 2, "accuracy": 1.0, "loss": 0.1, "f1": 1.0}})
    )
    with hold(run, "run directory"):
        code, out, err = run_main(report_main, ["--run", run], capsys)
    assert code == 2 and "in use by" in one_error_line(err)
    assert not (run / "report.html").exists()
    code, out, err = run_main(report_main, ["--run", run], capsys)  # free again
    assert code == 0 and (run / "report.html").is_file(), err
