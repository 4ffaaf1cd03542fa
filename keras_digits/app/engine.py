"""The demo's work without its page: a loaded Keras model with its labels and example images, the input as
the model sees it (each step of the digit normalisation), the prediction and an explanation overlay.

Everything here is plain Python and NumPy in, NumPy out, so it is tested without a browser; app/page.py
only wires it to Gradio components.

Digit styles. A drawn or photographed digit must look like the training digits before the model sees
it. MNIST's are the digit normalisation of keras_digits.data.digit_norm (ink box scaled to 20 px,
centre of mass centred in 28x28). scikit-learn's digits (the quick start's dataset) are 8x8 bitmaps of
glyphs filling their frame, upsampled to 28x28 (keras_digits.data.digits): the same normalisation
into an 8x8 field with an 8 px box, then that upsampling. Other datasets (MedMNIST, CIFAR-10, folders)
have no digit style: the image is only fitted to the model's input.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_digits.errors import KerasDigitsError

METHODS = {"gradcam": "Grad-CAM", "saliency": "saliency", "ig": "Integrated Gradients", "occlusion": "occlusion"}
PREPROCESS = ("auto", "digit", "none")
DIGIT_STYLES = {"mnist": (28, 20, None), "digits": (8, 8, 28)}  # dataset -> (field, box, upsample to)
VIEW = 224  # side of the shown images, px
MAX_UPLOAD_BYTES = 20 * 2**20


class InputProblem(KerasDigitsError):
    """Something wrong with what the user drew or uploaded: said on the page."""


@dataclass
class Answer:
    """One prediction with its explanation, ready to show."""

    label: str
    class_id: int
    probabilities: dict[str, float]  # label -> probability, every class
    steps: list[tuple[np.ndarray, str]]  # (image, caption): the input as the model sees it, step by step
    overlay: np.ndarray | None  # uint8 (VIEW, VIEW, 3): the explanation over the model's input (None: failed)
    explained: str  # what the overlay shows
    predict_ms: float
    explain_ms: float
    notes: list[str] = field(default_factory=list)


class DemoModel:
    """A Keras classifier with what the page needs: label names, the dataset it was trained on (for the
    digit style), example images, and an explainer."""

    def __init__(self, model, label_names: Sequence[str], dataset: str = "", examples: dict | None = None, source=""):
        from keras_digits.explain.core import Explainer

        self.model = model
        dims = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
        if len(dims) != 3 or any(d is None for d in dims) or dims[-1] not in (1, 3):
            raise KerasDigitsError(
                f"the demo needs an image model of a fixed (H, W, 1 or 3) input; {source} takes {dims}"
            )
        self.shape = tuple(int(d) for d in dims)
        self.num_classes = int(model.outputs[0].shape[-1])
        self.label_names = [str(n) for n in label_names]
        if len(self.label_names) != self.num_classes:
            self.label_names = [str(i) for i in range(self.num_classes)]
        self.dataset = dataset
        self.examples = examples or {}
        self.source = str(source)
        self.explainer = Explainer(model)

    @property
    def name(self) -> str:
        """A short name for the page: the run's folder, or NAME/VERSION of an export's model.keras."""
        path = Path(self.source)
        if path.name == "model.keras" and path.parent.name.isdigit():
            return f"{path.parent.parent.name}/{path.parent.name}"
        return path.name

    # ------------------------------------------------------------------ what the model sees
    @property
    def digit_style(self) -> tuple[int, int, int | None] | None:
        """(field, box, upsample) of the dataset's digits, for a grey model trained on digits; else None."""
        style = DIGIT_STYLES.get(self.dataset)
        if style is None or self.shape[-1] != 1:
            return None
        final = style[2] or style[0]
        return style if self.shape[:2] == (final, final) else None

    def methods(self) -> list[str]:
        """The explanation methods this model allows (Grad-CAM needs a convolutional feature map)."""
        return [m for m in METHODS if m != "gradcam" or self.explainer.layer is not None]

    def preprocess_choices(self) -> list[str]:
        """The --preprocess choices the page offers: digit ones only where the model has a digit style."""
        return list(PREPROCESS) if self.digit_style else ["none"]

    def prepare(self, image: np.ndarray, preprocess: str = "auto") -> tuple[np.ndarray, list, list[str]]:
        """uint8 (H, W, C) -> (uint8 model input (h, w, c), [(image, caption)] steps, notes)."""
        if preprocess not in PREPROCESS:
            raise InputProblem(f"preprocess must be one of {', '.join(PREPROCESS)}")
        image = np.asarray(image, np.uint8)
        steps: list[tuple[np.ndarray, str]] = [(image, f"your image, {image.shape[1]}x{image.shape[0]}")]
        notes: list[str] = []
        style = self.digit_style
        if preprocess == "digit" and style is None:
            raise InputProblem(f"this model ({self.dataset or 'unknown data'}) has no digit style; use none")
        if style is not None and preprocess in ("auto", "digit"):
            from keras_digits.data.digit_norm import digit_steps

            field_, box, upsample = style
            shown, has_ink = digit_steps(image, field_, box)
            if not has_ink:
                raise InputProblem("no digit found: the canvas or image is blank (draw or upload a digit)")
            steps += [(im, caption) for caption, im in shown[1:]]
            x = shown[-1][1]
            if upsample:
                from keras_digits.data.digits import upsample as upsample_images

                x = upsample_images(x[None], upsample)[0]
                steps.append((x, f"upsampled to {upsample}x{upsample}, as the training digits were"))
            x = x[..., None]
        else:
            from keras_digits.data.adapt import fit_uint8

            x = fit_uint8(image[None], self.shape)[0]
            if x.shape != image.shape:
                steps.append((x, f"fitted to {self.shape[1]}x{self.shape[0]}x{self.shape[2]}"))
            if float(x.std()) < 1.0:
                notes.append("the image is (nearly) uniform: the answer means little")
        return x.astype(np.uint8), steps, notes

    # ------------------------------------------------------------------ answers
    def predict(self, x: np.ndarray) -> np.ndarray:
        probs = np.asarray(self.model(x[None].astype(np.float32), training=False), np.float64)[0]
        if not np.isfinite(probs).all():
            raise KerasDigitsError("the model returned non-finite probabilities (a broken model?)")
        return probs

    def explain(self, x: np.ndarray, method: str, target: int, contrast: int = -1) -> np.ndarray:
        """The method's map (h, w) for `target` (minus `contrast`, -1: none)."""
        from keras_digits.explain import method_fn

        if method not in METHODS:
            raise InputProblem(f"unknown method {method!r}; choose {', '.join(METHODS)}")
        t, c = np.array([target], np.int32), np.array([contrast], np.int32)
        return np.asarray(method_fn(method)(self.explainer, x[None].astype(np.float32), t, c))[0]

    def class_index(self, label: str | None) -> int:
        """The class id of a label name (None or "" or "none": -1)."""
        if label in (None, "", "none"):
            return -1
        if label not in self.label_names:
            raise InputProblem(f"unknown class {label!r}")
        return self.label_names.index(label)

    def answer(
        self, image: np.ndarray, preprocess: str = "auto", method: str = "gradcam", contrast: str | None = None
    ) -> Answer:
        x, steps, notes = self.prepare(image, preprocess)
        start = time.perf_counter()
        probs = self.predict(x)
        predict_ms = 1000 * (time.perf_counter() - start)
        top = int(probs.argmax())
        c = self.class_index(contrast)
        if c == top:
            notes.append("the contrast class is the predicted class: showing the plain explanation")
            c = -1
        start = time.perf_counter()
        picture = None
        try:
            picture = overlay(x, self.explain(x, method, top, c))
        except KerasDigitsError as exc:  # e.g. Grad-CAM on a model without a feature map: the prediction stands
            notes.append(f"no {METHODS.get(method, method)} map: {exc}")
        explain_ms = 1000 * (time.perf_counter() - start)
        name = METHODS.get(method, method)
        why = f"why {self.label_names[top]!r}" + (f" and not {self.label_names[c]!r}" if c >= 0 else "")
        return Answer(
            label=self.label_names[top],
            class_id=top,
            probabilities={n: float(p) for n, p in zip(self.label_names, probs)},
            steps=[(view(im), caption) for im, caption in steps],
            overlay=picture,
            explained=f"{name}: {why}",
            predict_ms=predict_ms,
            explain_ms=explain_ms,
            notes=notes,
        )


# ---------------------------------------------------------------------- pictures
PAD = (96, 96, 96)  # around a non-square step (the ink box), so its edges show


def view(image: np.ndarray, side: int = VIEW) -> np.ndarray:
    """uint8 (H, W[, C]) -> uint8 RGB (side, side, 3): scaled (nearest, so pixels stay visible) to fit, centred
    on a grey square when not square."""
    from PIL import Image

    a = np.asarray(image, np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    im = Image.fromarray(a).convert("RGB")
    scale = side / max(im.size)
    size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
    square = Image.new("RGB", (side, side), PAD)
    square.paste(im.resize(size, Image.NEAREST), ((side - size[0]) // 2, (side - size[1]) // 2))
    return np.asarray(square, np.uint8)


def overlay(x: np.ndarray, heat: np.ndarray, side: int = VIEW, alpha: float = 0.55) -> np.ndarray:
    """The map (display-stretched, inferno colours) laid over the model's input, (side, side, 3) uint8."""
    import matplotlib

    from keras_digits.explain.figures import display_map, grey

    base = grey(np.asarray(x))  # (h, w, 3) in 0..1
    colours = matplotlib.colormaps["inferno"](display_map(heat))[..., :3]
    mixed = np.clip((1 - alpha) * base + alpha * colours, 0.0, 1.0)
    return view(np.rint(mixed * 255).astype(np.uint8), side)


# ---------------------------------------------------------------------- inputs
def read_upload(path: str | os.PathLike) -> np.ndarray:
    """An uploaded file as uint8 (H, W, C), with the project's decoder (size limits, transparency)."""
    from keras_digits.data.folder import read_image

    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise InputProblem(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    from keras_digits.data.folder import ImageTooLarge

    try:
        return read_image(path, None)
    except ImageTooLarge as exc:
        raise InputProblem(str(exc)) from None
    except Exception as exc:  # Pillow raises many types for a file that is not an image
        raise InputProblem(f"{path.name} is not an image this demo can read ({type(exc).__name__})") from None


def read_sketch(value: Any) -> np.ndarray:
    """A Gradio sketchpad value (dict with a "composite" RGBA array, or an array) as uint8 (H, W, C), with
    transparency handled as files' is (an empty canvas has no ink)."""
    from PIL import Image

    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise InputProblem("nothing drawn yet: draw a digit on the canvas")
    a = np.asarray(composite)
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputProblem("the canvas sent no image")
    with tempfile.TemporaryDirectory(prefix="keras_digits-sketch-") as tmp:
        path = Path(tmp) / "sketch.png"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)
        return read_upload(path)


# ---------------------------------------------------------------------- loading
def load(run: str | None = None, model: str | None = None) -> DemoModel:
    """The demo's model: a run's best.keras (`run`), or `model`: a .keras file or an export folder holding
    model.keras (labels and examples from its assets/, or from `run` when both are given)."""
    from keras_digits.evaluation.records import dataset_record
    from keras_digits.utils.io import read_json_object

    if not run and not model:
        raise KerasDigitsError("name a model: --run RUN or --model saved_models/NAME")
    record: dict = {}
    examples_file = None
    if model and not run and Path(model).is_file() and (Path(model).parent / "config.json").is_file():
        run, model = str(Path(model).parent), None  # a run's own best.keras: the run, with its labels and examples
    if run:
        from keras_digits.evaluation.runs import load_run

        config, keras_model = load_run(run)
        record = dataset_record(Path(run))
        dataset = str(config.get("dataset", ""))
        examples_file = Path(run) / "examples-test.npz"
        source = run
    run_classes = int(keras_model.outputs[0].shape[-1]) if run else None
    if model:
        path = _keras_file(Path(model))
        import keras

        import keras_digits.models  # noqa: F401  (a run's own best.keras holds this package's layers)

        try:
            keras_model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a broken or foreign file
            raise KerasDigitsError(f"cannot load {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
        from keras_digits.utils.finite import describe_nonfinite, nonfinite_variables

        bad = nonfinite_variables(keras_model.weights)
        if bad:
            raise KerasDigitsError(f"{path} holds non-finite values in {describe_nonfinite(bad)}: a diverged model")
        if run_classes is not None and run_classes != int(keras_model.outputs[0].shape[-1]):
            raise KerasDigitsError(f"{path} has {int(keras_model.outputs[0].shape[-1])} classes, the run {run_classes}")
        assets = path.parent / "assets"
        if not run:
            record = read_json_object(assets / "dataset.json", lenient=True)
            dataset = str(read_json_object(assets / "config.json", lenient=True).get("dataset", ""))
            examples_file = assets / "examples-test.npz"
        source = str(path)
    names = record.get("label_names") or range(int(keras_model.outputs[0].shape[-1]))
    demo = DemoModel(keras_model, [str(n) for n in names], dataset, _examples(examples_file), source)
    ex = demo.examples
    if ex and (
        tuple(ex["images"].shape[1:]) != demo.shape or int(np.max(ex.get("y", [0]), initial=0)) >= demo.num_classes
    ):
        demo.examples = {}  # examples of another model's data: not shown
    return demo


def _keras_file(path: Path) -> Path:
    if not path.exists():
        raise KerasDigitsError(f"model not found: {path}")
    if path.is_file():
        if path.suffix != ".keras":
            raise KerasDigitsError(f"{path}: the demo needs a Keras model (.keras) to explain its answers")
        return path
    if (path / "model.keras").is_file():
        return path / "model.keras"
    versions = sorted(
        (p for p in path.iterdir() if p.name.isdigit() and (p / "model.keras").is_file()), key=lambda p: int(p.name)
    )
    if versions:
        return versions[-1] / "model.keras"
    raise KerasDigitsError(
        f"{path} holds no model.keras: export the run with --format keras (or all), or start the demo with --run RUN"
    )


def _examples(path: Path | None) -> dict:
    """The stored test examples (images, true labels, predicted probabilities), {} when absent."""
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: np.asarray(data[k]) for k in ("images", "y", "probs") if k in data.files}
            mistakes = int(data["mistakes"]) if "mistakes" in data.files else 0
    except Exception:  # a truncated or foreign file (BadZipFile, EOFError, zlib.error, ...): no examples
        return {}
    return {**out, "mistakes": mistakes} if "images" in out else {}


def example_files(demo: DemoModel, folder: Path, most: int = 12) -> list[tuple[Path, str]]:
    """The stored examples written as PNGs into `folder` for the page's one-click list: (file, caption),
    the most confident mistakes first."""
    from PIL import Image

    ex = demo.examples
    if not ex:
        return []
    images, y = ex["images"], ex.get("y")
    probs = ex.get("probs")
    wrong = [i for i in range(len(images)) if probs is not None and y is not None and probs[i].argmax() != y[i]]
    right = [i for i in range(len(images)) if i not in wrong]
    if y is not None:  # the correct ones class by class, round robin (they are stored grouped by class)
        by_class: dict[int, list[int]] = {}
        for i in right:
            by_class.setdefault(int(y[i]), []).append(i)
        queues = [by_class[k] for k in sorted(by_class)]
        right = [q[j] for j in range(max((len(q) for q in queues), default=0)) for q in queues if j < len(q)]
    order = wrong[: most // 3] + right[: most - min(len(wrong), most // 3)]
    out = []
    for i in order:
        path = folder / f"example-{i:03d}.png"
        a = images[i][..., 0] if images[i].shape[-1] == 1 else images[i]
        Image.fromarray(a.astype(np.uint8)).save(path)
        caption = f"{demo.label_names[int(y[i])]}" if y is not None else f"example {i}"
        if probs is not None:
            pred = int(np.argmax(probs[i]))
            if y is not None and pred != int(y[i]):
                caption += f" → {demo.label_names[pred]} ✗"
        out.append((path, caption))
    return out
