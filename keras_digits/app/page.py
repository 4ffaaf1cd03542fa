"""The demo page: Gradio components wired to app/engine.py.

Offline by construction: Gradio's analytics and version check are off (GRADIO_ANALYTICS_ENABLED), the
theme uses the system's fonts instead of Google Fonts, server-side rendering (a Node process) is off,
and every asset comes from the installed gradio package. Errors never reach the page as a traceback:
each handler turns a problem into one line in the status box and keeps the server running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from keras_digits.app.engine import METHODS, Answer, DemoModel, InputProblem, example_files, read_sketch, read_upload

FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
MARKDOWN_SPECIAL = "\\`*_{}[]()<>#+-.!|~$&="


def plain(text: str) -> str:
    """Text shown as itself in Markdown (label names are data, not markup)."""
    flat = " ".join(str(text).splitlines())  # a line break in a name would start a heading or a list
    return "".join(f"\\{ch}" if ch in MARKDOWN_SPECIAL else ch for ch in flat)


def offline_environment(temp_dir: Path | None = None) -> None:
    """Before gradio is imported: no analytics, no version check, no telemetry; Gradio's own checks of the
    local server never go through a proxy; uploads land in `temp_dir` (removed when the demo stops)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for key in ("NO_PROXY", "no_proxy"):
        kept = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        os.environ[key] = ",".join(dict.fromkeys([*kept, "127.0.0.1", "localhost", "::1", "0.0.0.0"]))
    if temp_dir is not None:
        os.environ["GRADIO_TEMP_DIR"] = str(temp_dir / "uploads")


def theme():
    import gradio as gr

    return gr.themes.Default(font=FONTS, font_mono=MONO)


def status_line(answer: Answer) -> str:
    p = answer.probabilities[answer.label]
    line = (
        f"**Prediction: {plain(answer.label)}** ({100 * p:.1f} %) · predicted in {answer.predict_ms:.0f} ms · "
        f"{plain(answer.explained)} in {answer.explain_ms:.0f} ms"
    )
    return line + "".join(f"  \nnote: {plain(n)}" for n in answer.notes)


def respond(demo: DemoModel, image, preprocess: str, method: str, contrast: str | None):
    """(state, status, label, overlay, steps) for an image, or a message and unchanged outputs."""
    import gradio as gr

    if image is None:
        return None, "Draw a digit or upload an image.", gr.update(), gr.update(), gr.update()
    try:
        answer = demo.answer(image, preprocess, method, contrast)
    except InputProblem as exc:
        return image, f"⚠ {plain(str(exc))}", None, None, None
    except Exception as exc:  # never a traceback on the page; the server keeps running
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return image, f"⚠ could not answer: {plain(type(exc).__name__)}: {plain(str(exc)[:200])}", None, None, None
    return image, status_line(answer), answer.probabilities, answer.overlay, answer.steps


def _upload_box(gr, label: str):
    """A file box, not gr.Image: gr.Image decodes the upload itself and a non-image fails inside Gradio
    (an "Error" badge, no message); here the project's decoder reads it and says what is wrong."""
    return gr.File(
        label=f"{label} (PNG, JPEG, BMP, GIF, TIFF, WebP; up to 20 MB)",
        file_count="single",
        type="filepath",
        elem_id="upload",
    )


def build(demo: DemoModel, examples_dir: Path, top_k: int = 3):
    """The gradio.Blocks page for `demo` (examples written into `examples_dir`)."""
    offline_environment(examples_dir)
    import gradio as gr

    choices = demo.preprocess_choices()
    digits = demo.digit_style is not None
    shown = example_files(demo, examples_dir)

    def from_sketch(value, preprocess, method, contrast):
        try:
            image = read_sketch(value)
        except InputProblem as exc:
            return None, f"⚠ {plain(str(exc))}", None, None, None
        except Exception as exc:  # an odd canvas value, a full disk: a line, not Gradio's bare "Error"
            return None, f"⚠ cannot read the drawing: {plain(type(exc).__name__)}", None, None, None
        return respond(demo, image, preprocess, method, contrast)

    def from_upload(path, preprocess, method, contrast):
        if not path:
            return None, "Draw a digit or upload an image.", gr.update(), gr.update(), gr.update()
        try:
            image = read_upload(path)
        except InputProblem as exc:
            return None, f"⚠ {plain(str(exc))}", None, None, None
        except OSError as exc:
            return None, f"⚠ cannot read the upload: {plain(str(exc)[:200])}", None, None, None
        return respond(demo, image, preprocess, method, contrast)

    with gr.Blocks(title="keras_digits demo", analytics_enabled=False) as page:
        gr.Markdown(
            latex_delimiters=[],
            value=f"## keras_digits demo\nModel {plain(demo.name)}, trained on "
            f"**{plain(demo.dataset or 'unknown data')}**, input {'x'.join(map(str, demo.shape))}, "
            f"{demo.num_classes} classes. "
            + ("Pick the brush and draw a digit, or drop a photo of one." if digits else "Upload an image."),
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Draw" if digits else "Upload", id="first"):
                    if digits:
                        sketch = gr.Sketchpad(
                            type="numpy",
                            image_mode="RGBA",
                            canvas_size=(280, 280),
                            brush=gr.Brush(default_size=18, colors=["#000000"], color_mode="fixed"),
                            label="Draw a digit",
                            elem_id="sketch",
                        )
                        draw = gr.Button("Predict the drawing", variant="primary", elem_id="predict-drawing")
                    else:
                        upload = _upload_box(gr, "Image")
                if digits:
                    with gr.Tab("Upload", id="upload-tab"):
                        upload = _upload_box(gr, "Photo or scan")
                preprocess = gr.Radio(
                    choices,
                    value=choices[0],
                    label="Digit normalisation (auto: the model's digit style; none: only resized)",
                    elem_id="preprocess",
                )
                methods = demo.methods()
                method = gr.Dropdown(
                    [(METHODS[key], key) for key in methods], value=methods[0], label="Explanation method"
                )
                contrast = gr.Dropdown(
                    ["none", *demo.label_names], value="none", label="Why this class and not… (contrast class)"
                )
                gallery = gr.Gallery(
                    [(str(p), c) for p, c in shown],
                    label="The run's test examples: its most confident mistakes (true → said ✗) first; click one",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    allow_preview=False,
                    visible=bool(shown),
                    elem_id="examples",
                )
            with gr.Column(scale=1):
                status = gr.Markdown("Draw a digit or upload an image.", elem_id="status", latex_delimiters=[])
                label = gr.Label(num_top_classes=min(top_k, demo.num_classes), label="Top classes", elem_id="label")
                overlay = gr.Image(label="Explanation", type="numpy", interactive=False, elem_id="overlay")
                steps = gr.Gallery(
                    label="What the model sees, step by step (click to enlarge)",
                    columns=3,
                    height="auto",
                    object_fit="contain",
                    elem_id="steps",
                )
        state = gr.State(None)
        outputs = [state, status, label, overlay, steps]
        controls = [preprocess, method, contrast]
        one = {"concurrency_id": "model", "concurrency_limit": 1}  # one answer at a time: the model is shared
        upload.change(from_upload, [upload, *controls], outputs, trigger_mode="always_last", **one)

        def from_example(preprocess, method, contrast, evt):
            """A stored example is already the model's input: fed as it is (no normalisation again)."""
            index = evt.index if isinstance(evt.index, int) else -1
            if not 0 <= index < len(shown):
                return None, "⚠ no such example", None, None, None
            try:
                image = read_upload(shown[index][0])
            except InputProblem as exc:
                return None, f"⚠ {plain(str(exc))}", None, None, None
            return respond(demo, image, "none", method, contrast)

        from_example.__annotations__ = {"evt": gr.SelectData}  # a class, not a string: Gradio passes the event

        gallery.select(from_example, controls, outputs, **one)
        if digits:
            draw.click(from_sketch, [sketch, *controls], outputs, **one)
        for control in controls:
            control.change(
                lambda image, *args: respond(demo, image, *args),
                [state, *controls],
                outputs,
                trigger_mode="always_last",
                **one,
            )
    return page


def launch(page, host: str, port: int, examples_dir: Path) -> Any:
    """Serve the page on host:port in a background thread (no share link, no browser opened); returns the
    app's local URL (page.close() stops it). A port in use or not allowed is one KerasDigitsError."""
    from keras_digits.errors import KerasDigitsError

    try:
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=False,
            quiet=True,
            ssr_mode=False,
            max_file_size="25mb",  # above the engine's 20 MB, so the page says it rather than Gradio's pop-up
            allowed_paths=[str(examples_dir)],
            prevent_thread_lock=True,
            theme=theme(),
        )
    except Exception as exc:  # Gradio raises OSError, OverflowError, ValueError or its own for a bad address
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KerasDigitsError(
            f"cannot serve on {host}:{port} ({first.split('. You can')[0]}); choose another --port or --host"
        ) from None
    return page.local_url


def serve(demo: DemoModel, folder: Path, host: str, port: int, top_k: int = 3) -> None:
    """Build and serve the page until Ctrl-C (KeyboardInterrupt goes on to the caller); `folder` holds the
    example files and Gradio's uploads."""
    import time

    page = build(demo, folder, top_k)
    url = launch(page, host, port, folder)
    print(f"demo of {demo.source} at {url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    finally:
        page.close(verbose=False)
