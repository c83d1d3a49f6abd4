"""Several replicas: MirroredStrategy on 2 logical CPUs and MultiWorkerMirroredStrategy with 2 local
workers, each in fresh processes (logical devices and clusters must be set up before TensorFlow starts).

The gate must take one decision per step over the global batch: a block is open on every
replica as soon as one replica's share has some |F| > ε, and its moving averages are the
same on every replica and equal to a single device's over the whole batch.
"""
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from epsilon_resnet import distribute
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import cifar_main
from cli_helpers import write_tiny_config

# ε near max |F| in this tiny network: gates open on some steps only
write_config = functools.partial(write_tiny_config, max_epoch=1,
                                 model={"n": 1, "epsilon": 5.0, "gate_ema_decay": 0.0})

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cifarEpsilonResnet.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}

# The gate alone on a global batch of 4 whose |F| exceeds ε = 2.5 at most in one element, in the
# replica-0 half, the replica-1 half or nowhere: distributed over replicas (or workers) vs one device.
GATE_CASES = textwrap.dedent('''
    import keras
    import numpy as np
    import tensorflow as tf

    from epsilon_resnet.gate import StrictIdentity
    from epsilon_resnet.structures import GATE_METRICS as MONITORED

    def gate_cases(strategy):
        """{case: {"single": ..., "replicas": ...}}: gate (output / F) and moving averages."""
        results = {}
        for case, big in (("replica 0 above eps", 0), ("replica 1 above eps", 3), ("none above eps", None)):
            f = np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 8)).astype(np.float32)
            if big is not None:
                f[big, 1, 2, 3] = -3.0
            single = StrictIdentity(epsilon=2.5, block="b")
            out = single(tf.constant(f), training=True).numpy()
            with strategy.scope():
                layer = StrictIdentity(epsilon=2.5, block="b")
                layer.build(f.shape)
            share = 4 // strategy.num_replicas_in_sync
            values = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(
                f[ctx.replica_id_in_sync_group * share:(ctx.replica_id_in_sync_group + 1) * share]))
            outputs = tf.function(lambda v: strategy.run(lambda x: layer(x, training=True), (v,)))(values)
            results[case] = {
                "single": {"gate": float(np.abs(out).max() > 0), **{s: float(getattr(single, s).numpy())
                                                                    for s in MONITORED}},
                "replicas": [{"gate": float(np.abs(o.numpy()).max() > 0),
                              **{s: float(v.numpy()) for s, v in zip(MONITORED, copies)}}
                             for o, *copies in zip(strategy.experimental_local_results(outputs),
                                                   *(getattr(layer, s).value.values for s in MONITORED))]}
        return results
''')

# One training epoch under a strategy, with the gates' moving averages at decay 0 (= the last
# step's values) recorded on every local replica after every step.
RECORDER = textwrap.dedent('''
    import keras

    from epsilon_resnet.gate import gates_of
    from epsilon_resnet.structures import GATE_METRICS as MONITORED

    class GateRecorder(keras.callbacks.Callback):
        """Per step: [per local replica: [per gate: (is_discarded, response_abs_max, response_mean_max)]]."""
        steps = []

        def on_train_batch_end(self, batch, logs=None):
            gates = gates_of(self.model)
            copies = [[getattr(g, s).value.values for s in MONITORED] for g in gates]
            replicas = len(copies[0][0])
            self.steps.append([[[float(stat[r].numpy()) for stat in gate] for gate in copies]
                               for r in range(replicas)])
''')

MIRRORED = GATE_CASES + RECORDER + textwrap.dedent('''
    import json
    import sys

    from epsilon_resnet import config as config_lib
    from epsilon_resnet import distribute, runtime, training

    strategy = distribute.make_strategy(cpu_replicas=2)
    cases = gate_cases(strategy)
    config = config_lib.load(sys.argv[1])
    runtime.configure(config.train)  # the seed: the same initial weights in every run of this test
    trainer = training.Trainer(config, sys.argv[2], strategy=strategy)
    images, _ = next(iter(trainer.distributed_dataset()))
    shapes = [list(x.shape) for x in strategy.experimental_local_results(images)]
    trainer.fit(progress=False, extra_callbacks=[GateRecorder()])
    print("RESULT " + json.dumps({"cases": cases, "shapes": shapes, "steps": GateRecorder.steps}))
''')

WORKER = GATE_CASES + RECORDER + textwrap.dedent('''
    import json
    import sys

    from epsilon_resnet import config as config_lib
    from epsilon_resnet import distribute, training

    strategy = distribute.make_strategy()
    cases = gate_cases(strategy)  # one replica per worker: worker i holds share i
    config = config_lib.replace(config_lib.load(sys.argv[1]), **{"train.max_epoch": int(sys.argv[2])})
    training.train_and_evaluate(config, "train_log.mw", strategy=strategy, progress=False,
                                extra_callbacks=[GateRecorder()])
    print("RESULT " + json.dumps({"cases": cases, "steps": GateRecorder.steps,
                                  "chief": distribute.is_chief(strategy)}))
''')


def result_of(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def assert_one_decision(cases, replicas):
    """Every replica opens or closes with the single device, and its averages equal the single device's."""
    assert [c["single"]["gate"] for c in cases.values()] == [1.0, 1.0, 0.0]
    for case, result in cases.items():
        assert len(result["replicas"]) == replicas
        for replica in result["replicas"]:
            assert replica == pytest.approx(result["single"], rel=1e-6, abs=1e-7), case


def test_gpu_list_sets_the_visible_devices_and_a_bad_one_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    distribute.select_devices("0, 2,3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,2,3"
    with pytest.raises(SystemExit) as exit_:
        cifar_main(["--gpu", "0;1"])
    assert exit_.value.code == 2
    assert "--gpu takes comma-separated GPU indices such as 0,1,2,3; got '0;1'" in capsys.readouterr().err


@pytest.mark.parametrize("tf_config, cpu_replicas, message", [
    ("{", None, "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', None, "TF_CONFIG needs a 'cluster' and a 'task' mapping"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}', None,
     "is not one of its cluster's members"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}', "2",
     "--cpu-replicas cannot be combined with TF_CONFIG"),
])
def test_bad_cluster_settings_fail_before_anything_is_written(tmp_path, monkeypatch, capsys, tiny_cifar, tf_config,
                                                              cpu_replicas, message):
    monkeypatch.chdir(tmp_path)
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    argv = ["--config", write_config(str(tmp_path), tiny_cifar), "-o", "bad"]
    with pytest.raises(SystemExit) as exit_:
        cifar_main(argv + (["--cpu-replicas", cpu_replicas] if cpu_replicas else []))
    assert exit_.value.code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "train_log.bad").exists()


class ClusterTask:
    """Stands for a strategy in a cluster: is_chief only reads its cluster_resolver."""

    def __init__(self, cluster, task_type, task_id):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)


def test_the_chief_is_the_chief_task_or_else_worker_0():
    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert distribute.is_chief(tf.distribute.get_strategy())
    assert distribute.is_chief(ClusterTask(workers, "worker", 0))
    assert not distribute.is_chief(ClusterTask(workers, "worker", 1))
    assert distribute.is_chief(ClusterTask(with_chief, "chief", 0))
    assert not distribute.is_chief(ClusterTask(with_chief, "worker", 0))


def test_two_cpu_replicas_train_with_the_cifar_script(tmp_path, tiny_cifar):
    config = write_config(str(tmp_path), tiny_cifar, max_epoch=2)
    done = subprocess.run([sys.executable, SCRIPT, "--cpu-replicas", "2", "--config", config, "-o", "m"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MirroredStrategy, 2 replica(s)" in done.stdout
    run_dir = str(tmp_path / "train_log.m")
    assert [r["global_step"] for r in read_metrics(run_dir)] == [3, 6]
    assert os.path.exists(os.path.join(run_dir, "model-6.index"))


def test_replicas_share_one_gate_decision_per_step(tmp_path, tiny_cifar):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run([sys.executable, str(script), write_config(str(tmp_path), tiny_cifar),
                           str(tmp_path / "run")], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_of(done.stdout)
    assert_one_decision(result["cases"], replicas=2)
    # train.batch_size 8 per replica, as tensorpack fed each GPU its own batch: 16 images per step
    assert result["shapes"] == [[8, 32, 32, 3], [8, 32, 32, 3]]
    assert len(result["steps"]) == 3
    for step in result["steps"]:  # each replica saw its own half, yet holds the same gates and statistics
        assert step[0] == step[1]
    decisions = {gate[0] for step in result["steps"] for gate in step[0]}
    assert decisions == {0.0, 1.0}, "ε should leave some gates open and close others"


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def ctrl_c_as_in_a_terminal():
    """In the child: SIGINT's default action, even where the tests were started ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_workers(script, config, max_epoch, cwds):
    """Two workers of one cluster on localhost, each in its folder."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index, cwd in enumerate(cwds):
        env = {**ENV, "TMPDIR": str(cwd / f"tmp{index}"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        (cwd / f"tmp{index}").mkdir(parents=True, exist_ok=True)
        workers.append(subprocess.Popen([sys.executable, str(script), config, str(max_epoch)], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=ctrl_c_as_in_a_terminal))
    return workers


def finish(workers):
    """[(exit code, stdout, stderr)] of each worker; any still running after 5 minutes is killed."""
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


def run_workers(script, config, max_epoch, cwds):
    return finish(start_workers(script, config, max_epoch, cwds))


@pytest.mark.slow
def test_two_workers_agree_only_the_chief_writes_and_they_resume_and_stop_together(tmp_path, tiny_cifar):
    config = write_config(str(tmp_path), tiny_cifar)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    chief_dir, other_dir = tmp_path / "worker0", tmp_path / "worker1"
    run_dir = chief_dir / "train_log.mw"

    # Each worker in its own folder: only the chief's gets the run.
    results = run_workers(script, config, 2, [chief_dir, other_dir])
    for code, _, err in results:
        assert code == 0, err[-3000:]
    chief, other = (result_of(out) for _, out, _ in results)
    assert chief["chief"] and not other["chief"]
    assert_one_decision(chief["cases"], replicas=1)
    assert_one_decision(other["cases"], replicas=1)
    assert len(chief["steps"]) == 6
    assert chief["steps"] == other["steps"]  # each worker saw its own shard, yet the same gates and statistics
    assert [r["global_step"] for r in read_metrics(str(run_dir))] == [3, 6]
    assert {"checkpoint", "model-6.index", "log.log", "train", "validation"} <= set(os.listdir(run_dir))
    assert not (other_dir / "train_log.mw").exists()
    assert os.listdir(other_dir / "tmp1") == []  # its checkpoints went to a folder deleted at once

    # Sharing the chief's folder (as on a shared file system), both resume from model-6.
    results = run_workers(script, config, 3, [chief_dir, chief_dir])
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "resumed from train_log.mw/model-6" in out
    chief, other = (result_of(out) for _, out, _ in results)
    assert len(chief["steps"]) == 3 and chief["steps"] == other["steps"]
    assert [r["global_step"] for r in read_metrics(str(run_dir))] == [3, 6, 9]
    assert (run_dir / "log.log").read_text().count("epoch 3 done") == 1

    # A worker that cannot see the run folder would start from scratch: both stop, saying why.
    results = run_workers(script, config, 4, [chief_dir, other_dir])
    for code, _, err in results:
        assert code != 0 and "the workers start from different global steps [0, 9]" in err, err[-3000:]
    assert not (other_dir / "train_log.mw").exists()

    # Ctrl-C on the other worker only: both stop after the same step, and the chief saves it.
    workers = start_workers(script, config, 1000, [chief_dir, chief_dir])
    deadline = time.monotonic() + 300
    while int(tf.train.latest_checkpoint(str(run_dir)).rsplit("-", 1)[1]) < 12 and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), finish(workers)
        time.sleep(0.01)
    workers[1].send_signal(signal.SIGINT)
    (chief_code, _, chief_err), (other_code, _, other_err) = finish(workers)
    stopped = re.search(r"stopped by SIGINT at global step (\d+)", other_err)
    assert other_code != 0 and stopped, other_err[-3000:]
    step = stopped.group(1)
    assert chief_code != 0 and f"stopped by another worker at global step {step}" in chief_err, chief_err[-3000:]
    assert f"after saving train_log.mw/model-{step}" in chief_err
    assert tf.train.latest_checkpoint(str(run_dir)).endswith(f"model-{step}")
    assert os.listdir(chief_dir / "tmp1") == []


def test_a_global_batch_that_does_not_split_evenly_trains_on_its_integer_division_with_a_warning(
        caplog, monkeypatch):
    """ResNet-152 as the original ran it on 6 GPUs: 256 // 6 = 42 images per GPU, 252 per step."""
    from epsilon_resnet import config as config_lib
    from epsilon_resnet import training

    monkeypatch.setattr(training.logger, "propagate", True)  # setup_logging may have cut it off
    train = config_lib.shipped("imagenet").train
    with caplog.at_level("WARNING", logger="epsilon_resnet"):
        assert [training.global_batch_size(train, gpus) for gpus in (1, 4, 6)] == [256, 256, 252]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "6 replicas" in warnings[0] and "42, 252 images per step" in warnings[0]
    # tensorpack validated on one tower in batches of the per-GPU training batch
    assert [config_lib.eval_batch_size(train, gpus) for gpus in (1, 4, 6)] == [256, 64, 42]
    cifar = config_lib.shipped("cifar10").train
    assert [training.global_batch_size(cifar, gpus) for gpus in (1, 3)] == [128, 384]
    assert [config_lib.eval_batch_size(cifar, gpus) for gpus in (1, 3)] == [128, 128]
    with pytest.raises(training.RunError, match="smaller than the 6 replicas"):
        training.global_batch_size(config_lib.replace(config_lib.shipped("imagenet"),
                                                      **{"train.batch_size": 4}).train, 6)


@pytest.mark.slow
def test_three_cpu_replicas_split_a_global_batch_of_8_into_2_each(tmp_path, tiny_cifar):
    config = write_config(str(tmp_path), tiny_cifar, batch_per_replica=False, eval_batch_size=None)
    done = subprocess.run([sys.executable, SCRIPT, "--cpu-replicas", "3", "--config", config, "-o", "m"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "each replica trains on 2, 6 images per step" in output
    assert "MirroredStrategy, 3 replica(s), 6 images per step" in output
    assert [r["global_step"] for r in read_metrics(str(tmp_path / "train_log.m"))] == [3]
