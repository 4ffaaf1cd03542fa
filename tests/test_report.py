"""report.html: self-contained pages for runs, ensembles and sweeps, and the TensorBoard result images."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_images
from PIL import Image

from keras_digits.train import main as train_main
from keras_digits.utils.cli import run_cli

TINY = ["--arch", "dense", "--dataset", "digits", "--max-train-samples", "300", "--epochs", "2", "--verbose", "0"]


class Page(HTMLParser):
    """Headings, table rows, images and links of a page; fails on anything fetched from outside."""

    def __init__(self, text: str):
        super().__init__()
        self.h2, self.rows, self.images, self.links, self._tag, self._text = [], 0, [], [], None, ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,"), a["src"][:60]
            self.images.append(base64.b64decode(a["src"].split(",", 1)[1]))
        elif tag == "a":
            self.links.append(a["href"])
        elif tag in ("script", "link", "iframe"):
            raise AssertionError(f"<{tag}> in a self-contained page")
        elif tag == "tr":
            self.rows += 1
        self._tag, self._text = tag, ""

    def handle_data(self, data):
        self._text += data

    def handle_endtag(self, tag):
        if tag == "h2":
            self.h2.append(self._text.strip())


def parse(path: Path) -> Page:
    page = Page(path.read_text())
    for png in page.images:  # every embedded image decodes
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    assert train_main([*TINY, "--run-dir", str(run)]) == 0
    return run


def test_every_run_has_a_light_self_contained_page(run):
    page = parse(run / "report.html")
    for section in (
        "Summary",
        "Data and configuration",
        "Learning curves",
        "Confusion matrix (test)",
        "Per class",
        "ROC and precision-recall curves (test, one-vs-rest)",
        "Most confident mistakes (test)",
        "Correctly classified examples per class (test)",
        "Timings and software",
    ):
        assert section in page.h2, (section, page.h2)
    assert len(page.images) >= 3 + 10  # curves, ROC/PR, thumbnails
    assert (run / "report.html").stat().st_size < 2_000_000
    text = (run / "report.html").read_text()
    assert "tensorflow" in text and "No mistakes" not in text


def test_report_cli_regenerates_the_page_from_the_run_directory_alone(run, tmp_path, capsys):
    import shutil

    from keras_digits.report import main as report_main

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("best.keras", "logs"))  # no model needed
    (copy / "report.html").unlink()
    assert run_cli(report_main, ["--run", str(copy)]) == 0
    regenerated = (copy / "report.html").read_text().replace('"note">copy ·', '"note">run ·')
    assert regenerated == (run / "report.html").read_text()


def test_page_replacement_is_atomic(run, tmp_path, monkeypatch):
    import shutil

    import keras_digits.reporting.html as html_report

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("best.keras", "logs"))
    old = (copy / "report.html").read_text()

    def broken(path, text):
        from keras_digits.utils.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text[:100])
            raise OSError("disk full")

    monkeypatch.setattr(html_report, "write_text", broken)
    with pytest.raises(OSError):
        html_report.write_run_page(copy)
    assert (copy / "report.html").read_text() == old
    assert sorted(p.name for p in copy.glob(".*")) == []


def test_an_interrupted_run_has_no_page(tmp_path, capsys):
    import keras

    import keras_digits.training.run as train_mod
    from keras_digits.report import main as report_main

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("simulated crash")

    run = tmp_path / "run"
    original = train_mod.make_callbacks
    train_mod.make_callbacks = lambda *a, **k: original(*a, **k) + [Crash()]
    try:
        with pytest.raises(RuntimeError):
            train_main([*TINY, "--run-dir", str(run)])
    finally:
        train_mod.make_callbacks = original
    assert not (run / "report.html").exists()
    assert run_cli(report_main, ["--run", str(run)]) == 2
    assert "has not finished" in capsys.readouterr().err


def test_unusual_labels_render(tmp_path):
    """Nine long tissue-like names with characters HTML must escape."""
    names = [f"class <{i}> & a rather long tissue name number {i}" for i in range(9)]
    x, y = make_images(9 * 14, (16, 16, 3), 9, seed=3)
    tree = tmp_path / "tree"
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tree / names[int(label)].replace("<", "(").replace(">", ")")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--arch",
                "dense",
                "--dataset",
                "folder",
                "--data-dir",
                str(tree),
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--verbose",
                "0",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    page = parse(run / "report.html")
    text = (run / "report.html").read_text()
    assert "&amp; a rather long tissue name number 8" in text and "Per class" in page.h2
    per_class = json.loads((run / "metrics.json").read_text())["test"]["per_class"]
    assert len(per_class) == 9 and page.rows >= 9 * 4  # per-class, two confusion tables, AUC table


def test_tensorboard_gets_the_confusion_matrix_and_mistakes(run):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run / "logs" / "results"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags().get("images", [])) | set(acc.Tags().get("tensors", []))
    assert {"confusion_matrix/test", "most_confident_mistakes/test"} <= tags


def test_evaluate_on_other_data_updates_the_page(tmp_path):
    from keras_digits.evaluate import main as evaluate_main

    def tree(root: Path, seed: int) -> Path:
        x, y = make_images(40, (16, 16), 2, seed=seed)
        for i, (img, label) in enumerate(zip(x, y)):
            (root / ("ab"[int(label)])).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "ab"[int(label)] / f"{i}.png")
        return root

    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--arch",
                "dense",
                "--dataset",
                "folder",
                "--data-dir",
                str(tree(tmp_path / "t1", 1)),
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--verbose",
                "0",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    assert "Scores on other data" not in parse(run / "report.html").h2
    assert run_cli(evaluate_main, ["--run", str(run), "--data-dir", str(tree(tmp_path / "t2", 2))]) == 0
    assert "Scores on other data" in parse(run / "report.html").h2


def test_ensemble_and_sweep_pages_link_their_runs(tmp_path):
    from keras_digits.ensemble import main as ensemble_main
    from keras_digits.sweep import main as sweep_main

    out = tmp_path / "sweep"
    assert run_cli(sweep_main, [*TINY, "--vary", "lr=0.001,0.003", "--out", str(out)]) == 0
    page = parse(out / "sweep.html")
    assert len(page.links) == 2 and all((out / href).is_file() for href in page.links)
    runs = sorted((out / "runs").iterdir())
    assert run_cli(ensemble_main, ["--runs", *map(str, runs), "--out", str(tmp_path / "ens")]) == 0
    page = parse(tmp_path / "ens" / "report.html")
    assert "Members side by side" in page.h2 and len(page.links) == 2
    assert all((tmp_path / "ens" / href).resolve().is_file() for href in page.links)
