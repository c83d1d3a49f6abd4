"""Datasets for ε-ResNet: CIFAR-10/100, SVHN, ImageNet and a fake ImageNet.

`get_source(name, data_dir, **options)` returns a DataSource whose `train_dataset` and
`eval_dataset` feed the network float32 images in 0..255 and int32 labels; the network
normalises with the source's `pixel_mean` and `pixel_scale`. Nothing is ever downloaded.
"""
import inspect

from epsilon_resnet.data.cifar import cifar10, cifar100
from epsilon_resnet.data.fake import fake_imagenet
from epsilon_resnet.data.imagenet import imagenet
from epsilon_resnet.data.source import DataSource
from epsilon_resnet.data.svhn import svhn

LOADERS = {"cifar10": cifar10, "cifar100": cifar100, "svhn": svhn, "imagenet": imagenet,
           "fake-imagenet": fake_imagenet}

__all__ = ["DataSource", "LOADERS", "get_source"]


def get_source(name: str, data_dir: str | None = None, **options) -> DataSource:
    """The named dataset, read from data_dir (the folder holding its files, or the data folder itself)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    loader = LOADERS[name]
    try:
        inspect.signature(loader).bind(data_dir, **options)
    except TypeError as error:
        allowed = [p for p in inspect.signature(loader).parameters if p != "data_dir"]
        raise ValueError(f"{name}: bad options {options} ({error}); it takes {', '.join(allowed) or 'none'}") from None
    return loader(data_dir, **options)
