"""The data layer: dataset specs, loaders for each source kind, splits and tf.data pipelines."""

from keras_digits.data.base import DATA_ENV, DatasetSpec, RawSplits
from keras_digits.data.registry import DATASETS, get_spec, list_datasets, register_dataset
from keras_digits.data.splits import DataBundle, load_dataset, load_for, stratified_split

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "RawSplits",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "load_for",
    "register_dataset",
    "stratified_split",
]
