"""The GPU options on the CPU: mixed precision (float16 and bfloat16) and XLA train, and the
gate still decides in float32."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import common
from data_fixtures import write_cifar10_python
from epsilon_resnet import config as config_lib
from epsilon_resnet import runtime, training
from epsilon_resnet.data import augment
from epsilon_resnet.data.source import ArraySource
from epsilon_resnet.gate import gates_of
from epsilon_resnet.run_folder import read_metrics


@pytest.fixture
def float32_afterwards():
    """train.precision sets Keras' global policy for the process; restore it for later tests."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("epsilon, expected_discarded", [(0.0, 0.0), (1000.0, 3.0)])
def test_mixed_precision_and_xla_run(tmp_path, float32_afterwards, epsilon, expected_discarded):
    data_dir = write_cifar10_python(str(tmp_path / "data"), num_train=16, num_test=8)
    config = config_lib.from_dict({
        "data": {"name": "cifar10", "dir": data_dir},
        "model": {"n": 1, "epsilon": epsilon, "gate_ema_decay": 0.0},
        "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 2, "steps_per_epoch": 2, "seed": 0,
                  "precision": "mixed_float16", "jit_compile": True}})
    run_dir = str(tmp_path / "train_log.mp")
    training.train_and_evaluate(config, run_dir, progress=False)

    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(math.isfinite(r["cost"]) and math.isfinite(r["val_cost"]) for r in records)
    # ε = 1000 closes all 3 blocks at the first step; in float16 the gate's L = 1e6 would overflow.
    assert records[-1]["discarded_cnt"] == pytest.approx(expected_discarded)
    assert keras.mixed_precision.global_policy().name == "mixed_float16"


def gate_trace(precision, epsilons, steps=3):
    """Per training step, per gate: (is_discarded, max |F|) of that step (gate_ema_decay 0), for
    ResNet-8 on 8 fixed random images with the gates' ε set one by one; and the trainer."""
    images, labels = common.random_cifar_batch(8, seed=5)
    config = config_lib.from_dict({"model": {"n": 1, "gate_ema_decay": 0.0},
                                   "train": {"batch_size": 8, "seed": 0, "precision": precision}})
    source = ArraySource("fixed", 10, (images, labels), (images, labels), augment.CIFAR_TRAIN, family="cifar")
    runtime.configure(config.train)
    trainer = training.Trainer(config, "unused", source=source)
    gates = gates_of(trainer.model)
    for gate, epsilon in zip(gates, epsilons):
        gate.epsilon.assign(epsilon)
    batches = iter(tf.data.Dataset.from_tensors((tf.constant(images, tf.float32), tf.constant(labels))).repeat())
    trace = []
    for _ in range(steps):
        trainer.train_step(batches, tf.constant(False))
        trace.append([(float(g.is_discarded.numpy()), float(g.response_abs_max.numpy())) for g in gates])
    return trace, trainer


def test_bfloat16_steps_take_float32s_gate_decisions_and_keep_the_statistics_in_float32(float32_afterwards):
    """With each gate's ε at half or twice its block's max |F| (no |F| near ε), three bfloat16
    training steps close and open the same blocks as float32; bfloat16 ran the convolutions,
    without loss scaling, and the gate's averages, batch norm's statistics and the logits are float32."""
    opened, _ = gate_trace("float32", [0.0] * 3, steps=1)
    epsilons = [max_abs * (2.0 if index == 1 else 0.5) for index, (_, max_abs) in enumerate(opened[0])]
    traces = {}
    for precision in ("float32", "mixed_bfloat16"):
        traces[precision], trainer = gate_trace(precision, epsilons)
        for step in traces[precision]:
            for epsilon, (_, max_abs) in zip(epsilons, step):
                assert not 0.8 < max_abs / epsilon < 1.25, (precision, step)  # no |F| near ε
    decisions = {precision: [[closed for closed, _ in step] for step in trace] for precision, trace in traces.items()}
    assert decisions["mixed_bfloat16"] == decisions["float32"] == [[0.0, 1.0, 0.0]] * 3

    model = trainer.model
    assert model.get_layer("res1.0_conv1").compute_dtype == "bfloat16"
    assert not isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert {v.dtype for g in gates_of(model) for v in (g.is_discarded, g.response_abs_max, g.epsilon)} == {"float32"}
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {v.dtype for layer in batch_norms for v in (layer.moving_mean, layer.moving_variance)} == {"float32"}
    outputs = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert outputs["logits"].dtype == outputs["side_logits"].dtype == tf.float32
    # float16 is the precision that scales the loss
    assert isinstance(training.build_optimizer(config_lib.from_dict({"train": {"precision": "mixed_float16"}}).train,
                                               0.1), keras.optimizers.LossScaleOptimizer)
