"""A planted-signal dataset whose right explanation is known: noise images whose class is only a bright 4x4
square at a class-specific place, and a small conv net trained on it (conftest's session fixture
`planted_model`)."""

from __future__ import annotations

import numpy as np

SIDE, SQUARE, NOISE = 20, 4, 60
CORNERS = [(2, 2), (2, 14), (14, 2), (14, 14)]


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose class is only a bright 4x4 square at a class-specific place."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CORNERS), n)
    x = rng.integers(0, NOISE, (n, SIDE, SIDE, 1)).astype(np.uint8)
    for i, k in enumerate(y):
        r, q = CORNERS[k]
        x[i, r : r + SQUARE, q : q + SQUARE] = 255
    return x, y


def add_coords(x):
    """CoordConv (Liu et al. 2018): append the pixel's row and column (-1..1) as two channels."""
    import keras

    h, w = x.shape[1], x.shape[2]
    rows, cols = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    coords = keras.ops.convert_to_tensor(np.stack([rows, cols], -1)[None].astype("float32"))
    return keras.ops.concatenate([x, keras.ops.broadcast_to(coords, (keras.ops.shape(x)[0], h, w, 2))], axis=-1)


def train_planted():
    """A small conv net trained to >= 95% whose evidence can only be the square, where it is:
    CoordConv input (a 3x3 conv can then tell *where* a bright patch is, locally), two 3x3 convs, global
    max pooling, and a softmax layer with non-negative weights and no bias (so a class is never chosen
    by the *absence* of the other classes' squares, evidence that lies elsewhere by construction).
    With a Flatten head, as simple_cnn_v1 has, Grad-CAM's spatially averaged weights turned the
    square's evidence negative and the map was 0 (a known limit of Grad-CAM; see docs/explanations.md)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = planted(800, 0)
    inputs = keras.Input((SIDE, SIDE, 1))
    h = keras.layers.Lambda(add_coords, output_shape=(SIDE, SIDE, 3))(keras.layers.Rescaling(1 / 255)(inputs))
    for i in range(2):
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"conv{i}")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    outputs = keras.layers.Dense(
        len(CORNERS), activation="softmax", use_bias=False, kernel_constraint=keras.constraints.NonNeg()
    )(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    xt, yt = planted(40, 1)
    acc = float((model.predict(xt, verbose=0).argmax(1) == yt).mean())
    assert acc >= 0.95, acc
    return model, xt, yt


def inside_fraction(maps: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per image: the share of its SQUARE**2 highest-attributed pixels that lie in the planted square."""
    k = SQUARE * SQUARE
    out = []
    for m, label in zip(maps, y):
        top = np.argsort(-m.ravel(), kind="stable")[:k]
        r, q = CORNERS[label]
        rows, cols = np.unravel_index(top, m.shape)
        out.append(np.mean((rows >= r) & (rows < r + SQUARE) & (cols >= q) & (cols < q + SQUARE)))
    return np.array(out)


def square_masks(y: np.ndarray) -> np.ndarray:
    """(N, SIDE, SIDE) bool: where each image's planted square is (the ground truth)."""
    out = np.zeros((len(y), SIDE, SIDE), bool)
    for i, k in enumerate(y):
        r, q = CORNERS[k]
        out[i, r : r + SQUARE, q : q + SQUARE] = True
    return out
