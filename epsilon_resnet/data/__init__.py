"""Datasets for ε-ResNet: CIFAR-10/100, SVHN, ImageNet and a fake ImageNet.

`get_source(name, data_dir, **options)` returns a DataSource whose `train_dataset` and
`eval_dataset` feed the network float32 images in 0..255 and int32 labels; the network
normalises with the source's `pixel_mean` and `pixel_scale`. Nothing is ever downloaded.

Importing this package does not import TensorFlow: the command lines import it before
`--gpu` sets CUDA_VISIBLE_DEVICES, which TensorFlow reads once, when it is first imported.
A dataset's loader module (and TensorFlow with it) is imported by the first `get_source`.
"""
import dataclasses
import importlib
import inspect

from epsilon_resnet.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What the rest of the package needs to know of a dataset before reading it.

    family: "cifar" (32x32 images: the CIFAR networks, docs/original.md §3) or "imagenet".
    loader: "module:function" in this package; the function takes (data_dir, **options).
    """
    family: str
    loader: str

    def load_function(self):
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)


DATASETS = {
    "cifar10": Dataset("cifar", "cifar:cifar10"),
    "cifar100": Dataset("cifar", "cifar:cifar100"),
    "svhn": Dataset("cifar", "svhn:svhn"),
    "imagenet": Dataset("imagenet", "imagenet:imagenet"),
    "fake-imagenet": Dataset("imagenet", "fake:fake_imagenet"),
}

__all__ = ["DATASETS", "DataSource", "Dataset", "family_of", "get_source"]


def _entry(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def family_of(name: str) -> str:
    """The named dataset's family, "cifar" or "imagenet": which networks and input recipe it uses."""
    return _entry(name).family


def get_source(name: str, data_dir: str | None = None, **options):
    """The named dataset, read from data_dir (the folder holding its files, or the data folder itself).

    `options` are the loader's keyword arguments (a config's `data.options`), e.g.
    `holdout=5000` for CIFAR/SVHN or `num_eval=50000` for fake-imagenet.
    """
    entry = _entry(name)
    loader = entry.load_function()
    allowed = [p for p in inspect.signature(loader).parameters if p != "data_dir"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                        f"{name} takes {', '.join(allowed) or 'no options'}")
    try:
        source = loader(data_dir, **options)
    except PermissionError as err:
        raise DataError(f"{name}: {err.filename} cannot be read ({err.strerror}); the dataset's files and "
                        f"folders must be readable by this user") from None
    source.family = entry.family
    return source


def __getattr__(attribute):
    # `data.DataSource` without importing TensorFlow at package import (PEP 562).
    if attribute == "DataSource":
        from epsilon_resnet.data.source import DataSource
        return DataSource
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
