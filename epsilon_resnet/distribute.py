"""Choosing the tf.distribute strategy from the command line and the environment.

`--gpu 0,1,2,3` → MirroredStrategy over those GPUs (the global batch split across them);
a TF_CONFIG in the environment → MultiWorkerMirroredStrategy; otherwise the default
strategy. `cpu_replicas` splits the CPU into logical devices, to exercise the multi-replica
path on a machine without GPUs.
"""
import logging
import os

logger = logging.getLogger("epsilon_resnet")


def parse_gpus(spec):
    """'0,1,2,3' -> ['0', '1', '2', '3'], with a clear error for anything else."""
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise ValueError(f"--gpu takes comma-separated GPU indices such as 0,1,2,3; got {spec!r}")
    return gpus


def select_devices(gpu_spec):
    """Make only the requested GPUs visible; must run before TensorFlow initialises."""
    if gpu_spec:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(parse_gpus(gpu_spec))


def make_strategy(cpu_replicas=None):
    import tensorflow as tf

    if "TF_CONFIG" in os.environ:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas and cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    gpus = tf.config.list_physical_devices("GPU")
    if os.environ.get("CUDA_VISIBLE_DEVICES") and not gpus:
        logger.warning("--gpu %s was given but TensorFlow sees no GPU: training on the CPU",
                       os.environ["CUDA_VISIBLE_DEVICES"])
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
