"""The GPU options on the CPU: mixed precision and XLA train, and the gate still decides in float32."""
import math

import keras
import pytest

from data_fixtures import write_cifar10_python
from epsilon_resnet import config as config_lib
from epsilon_resnet import training
from epsilon_resnet.run_folder import read_metrics


@pytest.fixture
def float32_afterwards():
    """train.mixed_precision sets Keras' global policy for the process; restore it for later tests."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("epsilon, expected_discarded", [(0.0, 0.0), (1000.0, 3.0)])
def test_mixed_precision_and_xla_run(tmp_path, float32_afterwards, epsilon, expected_discarded):
    data_dir = write_cifar10_python(str(tmp_path / "data"), num_train=16, num_test=8)
    config = config_lib.from_dict({
        "data": {"name": "cifar10", "dir": data_dir},
        "model": {"n": 1, "epsilon": epsilon, "gate_ema_decay": 0.0},
        "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 2, "steps_per_epoch": 2, "seed": 0,
                  "mixed_precision": True, "jit_compile": True}})
    run_dir = str(tmp_path / "train_log.mp")
    training.train_and_evaluate(config, run_dir, progress=False)

    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(math.isfinite(r["cost"]) and math.isfinite(r["val_cost"]) for r in records)
    # ε = 1000 closes all 3 blocks at the first step; in float16 the gate's L = 1e6 would overflow.
    assert records[-1]["discarded_cnt"] == pytest.approx(expected_discarded)
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
