"""`python -m keras_digits`: the list of commands, each run as `python -m keras_digits.NAME`."""

import sys

COMMANDS = (
    ("train", "train and score a model into a run directory (report.html, metrics.json, best.keras)"),
    ("evaluate", "re-score a run, on other data (--dataset) or under corruptions (--perturb)"),
    ("explain", "attribution maps for a run's images or your files, with faithfulness and sanity checks"),
    ("report", "(re)write a run's report.html from its directory"),
    ("export", "a run as a SavedModel (TF Serving), ONNX, LiteRT or a portable .keras, each checked"),
    ("predict", "predict image files and folders with an exported model; CSV out"),
    ("submit", "contest submission files from an exported model"),
    ("demo", "a local page: draw or drop a digit, see the prediction and why"),
    ("ensemble", "average finished runs' softmax outputs and score the ensemble"),
    ("tune", "KerasTuner search (random, Bayesian, Hyperband), on one machine or over workers"),
    ("sweep", "one-factor sweeps: a grid of runs and their table and figure"),
    ("experiment", "the course reports' studies (optimizers, augmentation, balancing, ...)"),
)


def main() -> int:
    print("keras_digits: train, tune, explain and serve Keras image classifiers.\n")
    print("usage: python -m keras_digits.COMMAND [--help]\n\ncommands:")
    width = max(len(name) for name, _ in COMMANDS)
    for name, what in COMMANDS:
        print(f"  {name:<{width}}  {what}")
    print("\nGuides: README.md and docs/ in the project.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
