"""Seeded, stratified splitting and the loaded-dataset bundle."""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_digits.data.base import Arrays, data_dir_from
from keras_digits.data.registry import get_spec
from keras_digits.errors import KerasDigitsError

TEST_SPLIT = 0.2  # carved from datasets that ship no test split
TEST_SEED = 0  # fixed so the test set never moves with the run seed


@dataclass
class DataBundle:
    """A loaded dataset: uint8 NHWC arrays per split plus what models and reports need."""

    name: str
    train: Arrays
    val: Arrays | None
    test: Arrays
    label_names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])

    def split(self, name: str) -> Arrays:
        """Arrays of one split by name."""
        arrays = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if arrays is None:
            raise KerasDigitsError(f"{self.name} has no {name!r} split")
        return arrays


def stratified_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """Split off `fraction` of (x, y), stratified by label where every class allows it."""
    from sklearn.model_selection import train_test_split

    n_hold = int(round(len(y) * fraction))
    if n_hold < 1 or n_hold >= len(y):
        raise KerasDigitsError(f"cannot split {len(y)} samples with fraction {fraction}")
    counts = np.bincount(y)
    n_classes = int((counts > 0).sum())
    can_stratify = counts[counts > 0].min() >= 2 and min(n_hold, len(y) - n_hold) >= n_classes
    stratify = y if can_stratify else None
    idx_keep, idx_hold = train_test_split(
        np.arange(len(y)), test_size=n_hold, random_state=seed, shuffle=True, stratify=stratify
    )
    idx_keep.sort()
    idx_hold.sort()
    return (x[idx_keep], y[idx_keep]), (x[idx_hold], y[idx_hold])


def subsample(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> Arrays:
    """A stratified subset of at most n samples."""
    if n >= len(y):
        return x, y
    kept, _ = stratified_split(x, y, 1.0 - n / len(y), seed)
    return kept


def load_for(cfg, data_dir: str | os.PathLike | None = None) -> DataBundle:
    """The dataset a TrainConfig names, split exactly as its run was (`data_dir` overrides the config's)."""
    return load_dataset(
        cfg.dataset,
        data_dir or cfg.data_dir,
        val_split=cfg.val_split,
        seed=cfg.seed,
        image_size=cfg.image_size,
        max_train_samples=cfg.max_train_samples,
        size=cfg.size,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_split: float = 0.1,
    seed: int = 42,
    image_size: int | None = None,
    max_train_samples: int | None = None,
    size: int | None = None,
) -> DataBundle:
    """Load a named dataset and resolve its train/val/test splits (test never touched by training)."""
    spec = get_spec(name)
    folder = data_dir_from(data_dir)
    kwargs = {}
    params = inspect.signature(spec.loader).parameters
    if "image_size" in params:
        kwargs["image_size"] = image_size
    if size is not None:
        if "size" not in params or not spec.sizes:
            raise KerasDigitsError(
                f"--size picks one of MedMNIST's published image sizes; {name} has one size "
                "(use --image-size to resize)"
            )
        kwargs["size"] = size
    raw = spec.loader(spec, folder, **kwargs)
    train, test, val = raw.train, raw.test, raw.val
    if test is None:
        train, test = stratified_split(*train, TEST_SPLIT, TEST_SEED)
    if val is None:
        if not 0 < val_split < 1:
            raise KerasDigitsError(f"{name} has no official validation split: --val-split must be in (0, 1)")
        train, val = stratified_split(*train, val_split, seed)
    if max_train_samples is not None:
        train = subsample(*train, max_train_samples, seed)
    label_names = tuple(raw.label_names or spec.label_names or [str(i) for i in range(int(train[1].max()) + 1)])
    missing = sorted(set(range(len(label_names))) - set(np.unique(train[1]).tolist()))
    if missing:
        shown = ", ".join(repr(label_names[i]) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(
            f"warning: {len(missing)} of {len(label_names)} classes have no training image ({shown})"
            + (f"; --max-train-samples {max_train_samples} is too few" if max_train_samples else ""),
            file=sys.stderr,
        )
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        label_names=label_names,
        source=raw.source or str(Path(folder or "")),
    )
