"""Choosing the tf.distribute strategy from the requested GPUs and the environment.

GPUs "0,1,2,3" (the scripts' --gpu) → MirroredStrategy over those GPUs (the global batch split across them);
a TF_CONFIG in the environment → MultiWorkerMirroredStrategy, where only the chief writes
the run folder; otherwise the default strategy. `cpu_replicas` splits the CPU into logical
devices, to exercise the multi-replica path on a machine without GPUs.
"""
import json
import logging
import os

from epsilon_resnet.errors import RunError

logger = logging.getLogger("epsilon_resnet")


def parse_gpus(spec):
    """'0,1,2,3' -> ['0', '1', '2', '3'], with a clear error for anything else."""
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise ValueError(f"`gpus` takes comma-separated GPU indices such as 0,1,2,3; got {spec!r}")
    return gpus


def select_devices(gpu_spec):
    """Make only the requested GPUs visible; must run before TensorFlow initialises."""
    if gpu_spec:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(parse_gpus(gpu_spec))


def check_tf_config(text):
    """The parsed TF_CONFIG, or a clear error: MultiWorkerMirroredStrategy's own are cryptic."""
    example = '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunError(f"TF_CONFIG is not valid JSON ({err}); expected e.g. {example}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict) \
            or not isinstance(tf_config.get("task"), dict):
        raise RunError(f"TF_CONFIG needs a 'cluster' and a 'task' mapping, e.g. {example}; got {text}")
    task = tf_config["task"]
    members = tf_config["cluster"].get(task.get("type"))
    if not isinstance(members, list) or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(members):
        raise RunError(f"TF_CONFIG's task {task} is not one of its cluster's members {tf_config['cluster']}")
    return tf_config


def make_strategy(cpu_replicas=None):
    import tensorflow as tf

    if cpu_replicas is not None and cpu_replicas < 1:
        raise RunError(f"`cpu_replicas` must be at least 1, got {cpu_replicas}")
    if "TF_CONFIG" in os.environ:
        if cpu_replicas:
            raise RunError("`cpu_replicas` cannot be combined with TF_CONFIG: a multi-worker run uses "
                             "each worker's own devices")
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas and cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:  # TensorFlow already initialised its devices (e.g. in-process tests)
            if len(tf.config.list_logical_devices("CPU")) != cpu_replicas:
                raise RunError(f"`cpu_replicas` {cpu_replicas}: TensorFlow has already set up "
                                 f"{len(tf.config.list_logical_devices('CPU'))} CPU devices in this "
                                 f"process; run in a new process") from None
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    gpus = tf.config.list_physical_devices("GPU")
    if os.environ.get("CUDA_VISIBLE_DEVICES") and not gpus:
        logger.warning("CUDA_VISIBLE_DEVICES is %s but TensorFlow sees no GPU: training on the CPU",
                       os.environ["CUDA_VISIBLE_DEVICES"])
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes the run folder: the only process, or in a cluster its 'chief'
    task, or worker 0 when the cluster names no chief (the rule of TensorFlow's multi-worker guide)."""
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


STRATEGY_NAMES = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
                  "_DefaultDistributionStrategy": "no tf.distribute strategy"}


def describe(strategy):
    """E.g. 'MirroredStrategy, 2 replica(s)' for the log."""
    resolver = strategy.cluster_resolver
    task = f", task {resolver.task_type} {resolver.task_id}" if resolver is not None and resolver.task_type else ""
    name = type(strategy).__name__
    return f"{STRATEGY_NAMES.get(name, name)}, {strategy.num_replicas_in_sync} replica(s){task}"
