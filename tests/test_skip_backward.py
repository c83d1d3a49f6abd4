"""train.skip_closed_backward: a closed block's residual branch runs no backward kernels, and
training is the same as without the skip (gradients, weights, gate decisions), on one device,
with mixed precision and XLA, on two replicas, and through the CIFAR script.

In float32 the tolerances cover the order of additions only: with the skip, the gradient a
block input receives from the branch is summed inside the conditional before it meets the
shortcut's. Under mixed precision with XLA they cover float16 rounding (see
`test_a_mixed_precision_xla_step_equals_todays_to_float16_rounding`).
"""
import functools
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import common
from epsilon_resnet import config as config_lib
from epsilon_resnet import runtime, training
from epsilon_resnet.cli import cifar_main
from epsilon_resnet.data import augment
from epsilon_resnet.data.source import ArraySource
from epsilon_resnet.gate import gates_of
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.networks import build_resnet, kernels
from epsilon_resnet.structures import cifar_resnet
from cli_helpers import exit_code, write_tiny_config

CLOSED = 1e30  # an ε that closes any gate
RTOL, ATOL = 1e-5, 1e-6  # float32 weights after a few steps: the order of additions
FLOAT16_ROUNDING = 2.0 ** -8  # of a value: 4 to 8 float16 ulps (float16 keeps 10 bits after the leading one)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def float32_afterwards():
    """train.precision sets Keras' global policy for the process; restore it for later tests."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def close_every_other(model):
    """Gates 1, 3, 5, ... closed, the others open (ε 0)."""
    for index, gate in enumerate(gates_of(model)):
        gate.epsilon.assign(CLOSED if index % 2 else 0.0)


def gradients(model, skip, images, labels):
    """Every trainable variable's gradient of cross-entropy plus L2 weight decay, in a tf.function."""
    for gate in gates_of(model):
        gate.skip_closed_backward = skip

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)["logits"]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            loss += 1e-4 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels(model)])
        return tape.gradient(loss, model.trainable_variables)
    return [g.numpy() for g in step()], step


def test_gradients_equal_todays_and_closed_branches_get_exactly_weight_decay():
    keras.utils.set_random_seed(3)
    model = build_resnet(cifar_resnet(2, image_shape=(16, 16, 3), side_output=False), 10)
    close_every_other(model)
    images = tf.random.uniform((4, 16, 16, 3), 0, 255, seed=1)
    labels = tf.constant([1, 2, 3, 4])
    today, _ = gradients(model, False, images, labels)
    skipped, _ = gradients(model, True, images, labels)
    for variable, a, b in zip(model.trainable_variables, today, skipped):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    # A closed block's conv kernels get the weight decay's 2e-4·W alone, its BN parameters zero.
    for gate in gates_of(model)[1::2]:
        prefix = gate.name[:-len("_gate")]
        for variable, grad in zip(model.trainable_variables, skipped):
            if variable.path.startswith(prefix + "_conv"):
                expected = 2e-4 * variable.numpy() if variable.path.endswith("kernel") else 0.0
                np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=0, err_msg=variable.path)


def test_the_backward_kernels_of_a_branch_sit_inside_its_conditional():
    """Traced once: with the skip, only the stem's Conv2DBackpropFilter stays outside the
    branches' conditionals; without it all 1 + 2 per block do."""
    keras.utils.set_random_seed(0)
    model = build_resnet(cifar_resnet(2, image_shape=(16, 16, 3), side_output=False), 10)
    images, labels = tf.zeros((2, 16, 16, 3)), tf.constant([0, 1])
    counts = {}
    for skip in (False, True):
        _, step = gradients(model, skip, images, labels)
        ops = step.get_concrete_function().graph.get_operations()
        counts[skip] = sum(op.type == "Conv2DBackpropFilter" for op in ops)
    assert counts == {False: 1 + 2 * 6, True: 1}


@pytest.mark.parametrize("closed", [False, True])
def test_a_closed_branch_runs_no_backward_kernel(closed):
    """Profiled: all gates closed, the step executes the stem's filter gradient alone."""
    keras.utils.set_random_seed(0)
    model = build_resnet(cifar_resnet(1, image_shape=(16, 16, 3), side_output=False), 10)
    for gate in gates_of(model):
        gate.epsilon.assign(CLOSED if closed else 0.0)
    images, labels = tf.random.uniform((2, 16, 16, 3), 0, 255, seed=2), tf.constant([0, 1])
    _, step = gradients(model, True, images, labels)
    executed = common.op_seconds(step)
    # op types as executed: "Conv2DBackpropFilter", or oneDNN's "_MklNativeConv2DBackpropFilter"
    assert sum(op.endswith("Conv2DBackpropFilter") for op in executed) == (1 if closed else 1 + 2 * 3)


def train_steps(skip, steps, **train):
    """All variables (weights, BN statistics, gate averages, momentum) after `steps` steps of the
    project's training step on 8 fixed random images, every other gate closed."""
    images, labels = common.random_cifar_batch(8, seed=4)
    config = config_lib.from_dict({"model": {"n": 2, "gate_ema_decay": 0.5},
                                   "train": {"batch_size": 8, "seed": 0, "skip_closed_backward": skip, **train}})
    source = ArraySource("fixed", 10, (images, labels), (images, labels), augment.CIFAR_TRAIN, family="cifar")
    runtime.configure(config.train)
    trainer = training.Trainer(config, "unused", source=source)
    close_every_other(trainer.model)
    batches = iter(tf.data.Dataset.from_tensors((tf.constant(images, tf.float32), tf.constant(labels))).repeat())
    for _ in range(steps):
        trainer.train_step(batches, tf.constant(False))
    # The model's paths are its layers' names; the optimizer's carry a per-instance prefix.
    return {**{v.path: v.numpy() for v in trainer.model.variables},
            **{f"optimizer {i}": v.numpy() for i, v in enumerate(trainer.optimizer.variables)}}


def gate_decisions(path):
    return path.endswith(("_gate/is_discarded", "_gate/updates"))


@pytest.mark.parametrize("train", [{}, pytest.param({"precision": "mixed_float16"}, marks=pytest.mark.slow),
                                   pytest.param({"jit_compile": True}, marks=pytest.mark.slow)],
                         ids=["float32", "mixed-precision", "xla"])
def test_weights_after_training_steps_equal_todays(float32_afterwards, train):
    today, skipped = (train_steps(skip, 4, **train) for skip in (False, True))
    assert today.keys() == skipped.keys()
    for path in today:
        if gate_decisions(path):  # exactly today's
            assert skipped[path] == today[path], path
        else:
            np.testing.assert_allclose(skipped[path], today[path], rtol=RTOL, atol=ATOL, err_msg=path)


@pytest.mark.slow
def test_a_mixed_precision_xla_step_equals_todays_to_float16_rounding(float32_afterwards):
    """XLA fuses the float16 ops on either side of the branch's conditional differently and
    rounds their intermediates at other places, so one step differs from today's by float16
    rounding (measured: at most 1.2e-3 of a variable's largest value, 1 to 2 ulps). Over more
    steps such differences grow in this tiny network to the size they reach between XLA on and
    off without the skip (after 4 steps 1.3% and 1.8% of conv0's largest weight), so the
    comparison is of one step: weights, batch-norm statistics and momentum (the first
    gradient) within FLOAT16_ROUNDING of each variable's largest value."""
    today, skipped = (train_steps(skip, 1, precision="mixed_float16", jit_compile=True) for skip in (False, True))
    for path in today:
        if gate_decisions(path):
            assert skipped[path] == today[path], path
        else:
            scale = float(np.max(np.abs(today[path])))
            np.testing.assert_allclose(skipped[path], today[path], rtol=0, atol=FLOAT16_ROUNDING * scale,
                                       err_msg=path)


MIRRORED = textwrap.dedent('''
    import json, sys
    import numpy as np
    from epsilon_resnet import distribute
    strategy = distribute.make_strategy(cpu_replicas=2)
    import test_skip_backward
    results = {}
    for skip in (False, True):
        results[skip] = test_skip_backward.mirrored_train_steps(strategy, skip, 3)
    # |difference| over the single-device float32 tolerance (atol + rtol·|today's|): below 1 passes
    worst = max(float(np.max(np.abs(results[True][p] - results[False][p])
                             / (test_skip_backward.ATOL + test_skip_backward.RTOL * np.abs(results[False][p]))))
                for p in results[False])
    gates_equal = all(np.array_equal(results[True][p], results[False][p]) for p in results[False]
                      if test_skip_backward.gate_decisions(p))
    print("RESULT " + json.dumps({"worst": worst, "gates_equal": gates_equal, "count": len(results[False])}))
''')


def mirrored_train_steps(strategy, skip, steps):
    """`train_steps` under a strategy (for the subprocess of the two-replica test)."""
    images, labels = common.random_cifar_batch(8, seed=4)
    config = config_lib.from_dict({"model": {"n": 2, "gate_ema_decay": 0.5},
                                   "train": {"batch_size": 4, "seed": 0, "skip_closed_backward": skip}})
    source = ArraySource("fixed", 10, (images, labels), (images, labels), augment.CIFAR_TRAIN, family="cifar")
    runtime.configure(config.train)
    trainer = training.Trainer(config, "unused", source=source, strategy=strategy)
    close_every_other(trainer.model)
    iterator = iter(trainer.distributed_dataset())
    for _ in range(steps):
        trainer.train_step(iterator, tf.constant(False))
    return {v.path: np.asarray(strategy.experimental_local_results(v)[0]) for v in trainer.model.variables}


@pytest.mark.slow
def test_two_replicas_train_the_same_with_and_without_the_skip(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", MIRRORED], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result = __import__("json").loads(lines[-1][len("RESULT "):])
    assert result["gates_equal"] and result["count"] > 50
    assert result["worst"] < 1


run = functools.partial(exit_code, cifar_main)


def test_a_cifar_run_with_and_without_the_skip_ends_the_same(tmp_path, monkeypatch, tiny_cifar):
    """Deterministic mode, ε near max |F| so blocks open and close from step to step."""
    checkpoints = {}
    for skip in (False, True):
        folder = tmp_path / str(skip)
        folder.mkdir()
        monkeypatch.chdir(folder)
        config = write_tiny_config(str(folder), tiny_cifar, model={"n": 1, "epsilon": 5.0, "gate_ema_decay": 0.0},
                                   deterministic=True, skip_closed_backward=skip)
        assert run("--config", config, "-o", "s") == 0
        run_dir = str(folder / "train_log.s")
        checkpoints[skip] = (read_metrics(run_dir), tf.train.load_checkpoint(tf.train.latest_checkpoint(run_dir)))
    (metrics_off, off), (metrics_on, on) = checkpoints[False], checkpoints[True]
    assert [r["discarded_cnt"] for r in metrics_on] == [r["discarded_cnt"] for r in metrics_off]
    names = [n for n in off.get_variable_to_shape_map() if "model" in n]
    assert names and sorted(names) == sorted(n for n in on.get_variable_to_shape_map() if "model" in n)
    for name in names:
        np.testing.assert_allclose(on.get_tensor(name), off.get_tensor(name), rtol=1e-5, atol=1e-6, err_msg=name)
