import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from data_fixtures import write_cifar10_python


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """A CIFAR-10 of 40 training and 16 test images in the python-pickle layout."""
    return write_cifar10_python(str(tmp_path_factory.mktemp("cifar")), num_train=40, num_test=16, seed=0)
