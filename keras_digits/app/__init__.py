"""The demo page (`python -m keras_digits.demo`): engine (the model, what it sees, its answers and their
explanations; no web code) and page (the Gradio page wired to the engine)."""
