"""model.gate_scope: per_replica on 2 logical CPUs (fresh processes: logical devices must be set
up before TensorFlow starts). Each replica decides on its own share of the batch as one device
would on those images, the stored averages are replica 0's on every replica, the skipped
backward works per replica, and a per-replica run's checkpoint restores and compresses exactly."""
import os
import subprocess
import sys
import textwrap

import pytest

from epsilon_resnet.cli import compress_main
from epsilon_resnet.run_folder import read_metrics
from cli_helpers import exit_code, write_tiny_config
from test_distribute import ENV, SCRIPT, result_of

PER_REPLICA = textwrap.dedent('''
    import json

    import keras
    import numpy as np
    import tensorflow as tf

    from epsilon_resnet import distribute
    from epsilon_resnet.gate import StrictIdentity, gates_of
    from epsilon_resnet.networks import build_resnet
    from epsilon_resnet.structures import GATE_METRICS as MONITORED
    from epsilon_resnet.structures import cifar_resnet

    strategy = distribute.make_strategy(cpu_replicas=2)
    split = lambda array: strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * 2:(ctx.replica_id_in_sync_group + 1) * 2]))
    local = strategy.experimental_local_results

    # The gate alone: |F| above ε = 2.5 in one element of replica 0's half, of replica 1's, or nowhere.
    cases = {}
    for case, big in (("replica 0 above eps", 0), ("replica 1 above eps", 3), ("none above eps", None)):
        f = np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 8)).astype(np.float32)
        if big is not None:
            f[big, 1, 2, 3] = -3.0
        singles = []
        for half in (f[:2], f[2:]):
            single = StrictIdentity(epsilon=2.5, block="b")
            out = single(tf.constant(half), training=True).numpy()
            singles.append({"gate": float(np.abs(out).max() > 0),
                            **{s: float(getattr(single, s).numpy()) for s in MONITORED}})
        with strategy.scope():
            layer = StrictIdentity(epsilon=2.5, block="b")
            layer.build(f.shape)
        layer.scope = "per_replica"
        outputs = tf.function(lambda v: strategy.run(lambda x: layer(x, training=True), (v,)))(split(f))
        cases[case] = {"single": singles,
                       "gates": [float(np.abs(o.numpy()).max() > 0) for o in local(outputs)],
                       "copies": [{s: float(v.numpy()) for s, v in zip(MONITORED, copies)}
                                  for copies in zip(*(getattr(layer, s).value.values for s in MONITORED))]}

    # ResNet-8: gradients of each replica's half, with the skipped backward, against one device's.
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    labels = np.array([1, 2, 3, 4], np.int32)
    keras.utils.set_random_seed(0)
    single = build_resnet(cifar_resnet(1, side_output=False, image_shape=(16, 16, 3)), 10)
    with strategy.scope():
        replicated = build_resnet(cifar_resnet(1, side_output=False, image_shape=(16, 16, 3)), 10)
    replicated.set_weights(single.get_weights())
    for gate in gates_of(single) + gates_of(replicated):
        gate.ema_decay = 0.0
    halves_max = []  # per half, per gate: max |F| (one training call, averages at decay 0)
    for half in (images[:2], images[2:]):
        single(half, training=True)
        halves_max.append([float(g.response_abs_max.numpy()) for g in gates_of(single)])
    # ε between the halves' max |F| on every gate: the replicas disagree on each block.
    epsilons = [float(np.sqrt(a * b)) for a, b in zip(*halves_max)]
    for model in (single, replicated):
        for gate, epsilon in zip(gates_of(model), epsilons):
            gate.epsilon.assign(epsilon)
            gate.scope = "per_replica"

    def gradients(model, x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)["logits"]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables), [1.0 - g.is_discarded for g in gates_of(model)]

    replica_grads, _ = tf.function(lambda x, y: strategy.run(lambda a, b: gradients(replicated, a, b), (x, y)))(
        split(images), split(labels))
    single_step = tf.function(lambda x, y: gradients(single, x, y))
    network = {"halves_max": halves_max, "epsilons": epsilons, "single_gates": [], "max_difference": []}
    for replica, half in enumerate((slice(0, 2), slice(2, 4))):
        grads, gates = single_step(tf.constant(images[half]), tf.constant(labels[half]))
        network["single_gates"].append([float(g) for g in gates])
        network["max_difference"].append(max(
            float(np.max(np.abs(local(d)[replica].numpy() - s.numpy())) / (float(np.max(np.abs(s.numpy()))) + 1e-12))
            for d, s in zip(replica_grads, grads)))
    network["stored"] = [float(g.is_discarded.numpy()) for g in gates_of(replicated)]
    print("RESULT " + json.dumps({"cases": cases, "network": network}))
''')


@pytest.mark.slow
def test_each_replica_gates_its_own_share_as_one_device_would(tmp_path):
    script = tmp_path / "per_replica.py"
    script.write_text(PER_REPLICA)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_of(done.stdout)
    expected_gates = {"replica 0 above eps": [1.0, 0.0], "replica 1 above eps": [0.0, 1.0],
                      "none above eps": [0.0, 0.0]}
    for case, outcome in result["cases"].items():
        assert [s["gate"] for s in outcome["single"]] == outcome["gates"] == expected_gates[case], case
        for copy in outcome["copies"]:  # every replica holds replica 0's averages
            assert copy == pytest.approx({k: v for k, v in outcome["single"][0].items() if k != "gate"},
                                         rel=1e-6, abs=1e-7), case
    network = result["network"]
    gates = network["single_gates"]
    assert all(a != b for a, b in zip(*gates)), network  # the replicas disagree on every block ...
    assert network["stored"] == [1.0 - g for g in gates[0]]  # ... and replica 0's decision is the one stored
    # ... and each replica's gradients (closed branches skipped) are one device's on its half.
    assert max(network["max_difference"]) < 1e-5, network


@pytest.mark.slow
def test_a_per_replica_run_resumes_and_compresses_exactly(tmp_path, tiny_cifar, capsys, monkeypatch):
    config = write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=2, model={"n": 1, "epsilon": 5.0})
    for max_epoch in ("1", "2"):  # epoch 2 resumes from epoch 1's checkpoint
        done = subprocess.run([sys.executable, SCRIPT, "--cpu-replicas", "2", "--gate-scope", "per_replica",
                               "--config", config, "--max-epoch", max_epoch, "-o", "pr"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "train_log.pr"
    assert "gate_scope: per_replica" in (run_dir / "config.yaml").read_text()
    records = read_metrics(str(run_dir))
    assert [r["global_step"] for r in records] == [3, 6]
    monkeypatch.chdir(tmp_path)
    assert exit_code(compress_main, "--dir", "train_log.pr", "--step", 6) == 0
    out = capsys.readouterr().out
    assert "logits equal (max |difference| 0," in out, out
    assert os.path.exists(run_dir / "compressed_model_6.cfg")
