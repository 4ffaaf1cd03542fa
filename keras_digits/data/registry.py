"""The registry of dataset specs: shape, classes, label names, splits, source, checksums."""

from __future__ import annotations

from keras_digits.data.base import DatasetSpec
from keras_digits.data.cifar import load_cifar10
from keras_digits.data.digits import load_digits
from keras_digits.data.folder import load_folder
from keras_digits.data.keras_npz import load_mnist
from keras_digits.data.medmnist import load_medmnist, medmnist_file, medmnist_url
from keras_digits.data.medmnist_info import MEDMNIST_INFO, SIZES
from keras_digits.data.svhn import load_svhn
from keras_digits.errors import KerasDigitsError

DIGIT_NAMES = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a spec to the registry (name must be new)."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    DATASETS[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The spec for a dataset name; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KerasDigitsError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}") from None


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


register_dataset(
    DatasetSpec(
        name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        label_names=DIGIT_NAMES,
        splits=("train", "test"),
        official_val=False,
        source="keras-npz",
        files=("mnist.npz",),
        download="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz (keras.datasets.mnist)",
        # Keras' published hash of its download (keras' get_file checks it). Local copies are validated by
        # shape, dtype and label range, not by bytes: a copy rebuilt from the IDX files holds the same
        # arrays in a different zip (../shared/data/mnist.npz is one), so a byte hash would reject it.
        checksums={"mnist.npz": "sha256:731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"},
        loader=load_mnist,
        description="MNIST handwritten digits, 60k train / 10k test, 28x28 grey",
        centred_digits=True,
    )
)
for _name, _info in MEDMNIST_INFO.items():  # every 2D subset, its official splits, at 28/64/128/224 px
    _n = _info["n_samples"]
    register_dataset(
        DatasetSpec(
            name=_name,
            image_shape=(28, 28, _info["channels"]),
            num_classes=len(_info["labels"]),
            label_names=tuple(_info["labels"]),
            splits=("train", "val", "test"),
            official_val=True,
            source="medmnist-npz",
            files=(medmnist_file(_name, 28),),
            download=medmnist_url(_name, 28),
            checksums={medmnist_file(_name, size): f"md5:{md5}" for size, md5 in _info["md5"].items()},
            loader=load_medmnist,
            task=_info["task"],
            sizes=SIZES,
            description=f"MedMNIST {_info['description']}; {_n['train']:,} / {_n['val']:,} / {_n['test']:,}"
            + ("" if _info["task"] == "multi-class" else f"; {_info['task']}"),
        )
    )
del _name, _info, _n
register_dataset(
    DatasetSpec(
        name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        label_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        splits=("train", "test"),
        official_val=False,
        source="cifar-python",
        files=("cifar-10-python.tar.gz", "cifar-10-batches-py/"),
        download="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (keras.datasets.cifar10)",
        checksums={"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
        loader=load_cifar10,
        description="CIFAR-10, 50k train / 10k test, 32x32 RGB",
    )
)
register_dataset(
    DatasetSpec(
        name="svhn",
        image_shape=(32, 32, 3),
        num_classes=10,
        label_names=DIGIT_NAMES,
        splits=("train", "test"),
        official_val=False,
        source="svhn-mat",
        files=("train_32x32.mat + test_32x32.mat",),
        download="http://ufldl.stanford.edu/housenumbers/ (or tensorflow-datasets svhn_cropped)",
        checksums={
            "train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "md5:eb5a983be6a315427106f1b8bed2e8ac",
        },
        loader=load_svhn,
        description="SVHN cropped street-view digits, 73,257 train / 26,032 test, 32x32 RGB",
    )
)
register_dataset(
    DatasetSpec(
        name="digits",
        image_shape=(28, 28, 1),
        num_classes=10,
        label_names=DIGIT_NAMES,
        splits=("all",),
        official_val=False,
        source="sklearn",
        files=(),
        download="(bundled with scikit-learn)",
        loader=load_digits,
        description="scikit-learn's 1,797 8x8 handwritten digits upsampled to 28x28 (offline default)",
    )
)
register_dataset(
    DatasetSpec(
        name="folder",
        image_shape=None,
        num_classes=None,
        label_names=None,
        splits=("all",),
        official_val=False,
        source="image-folder",
        files=("TREE/<class>/<images>",),
        download="(your own files)",
        loader=load_folder,
        description="a class-per-subfolder tree of image files of any size, resized to --image-size",
    )
)
