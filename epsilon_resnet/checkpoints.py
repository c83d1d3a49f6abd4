"""Checkpoints: writing one atomically, restoring a network from one (a run's, or a compressed
network's from its .cfg), and a run's checkpoint policy (`RunCheckpoints`). Their names and
places in the run folder are `run_folder`'s.
"""
import os
import re
import shutil
import tempfile

import tensorflow as tf

from epsilon_resnet import data, run_folder
from epsilon_resnet.atomic import temporary_path
from epsilon_resnet.errors import CheckpointError, WeightsDoNotFit
from epsilon_resnet.networks import build_from_config, build_resnet


def latest_checkpoint(run_dir):
    return tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None


def write_checkpoint(checkpoint, folder, name):
    """Write `checkpoint` as folder/name.* without ever showing a half-written one.

    The files are written into a temporary folder beside them and moved into place with
    the .index last (the index names the data files, so a reader never finds an index
    without its data). An existing checkpoint of that name is never replaced.
    """
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, name + ".index")):
        raise CheckpointError(f"{os.path.join(folder, name)} exists already; it was left untouched")
    tmp = temporary_path(os.path.join(folder, name))
    shutil.rmtree(tmp, ignore_errors=True)  # a dead writer's of the same PID
    os.mkdir(tmp)
    try:
        checkpoint.write(os.path.join(tmp, name))
        for file in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
            os.replace(os.path.join(tmp, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(folder, name)


def restore_model(model, path, exact):
    """Load a model's weights from a checkpoint prefix written with tf.train.Checkpoint(model=...).

    exact: every value of the checkpoint must be used (a compressed network's own
    checkpoint); otherwise the rest of a training checkpoint (optimizer, run state) is
    ignored. Either way every weight of the model must be found, with its shape.
    """
    if not os.path.isfile(path + ".index"):
        raise CheckpointError(f"no checkpoint {path!r}: the file {path}.index does not exist")
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        if exact:
            status.assert_consumed()
        else:
            status.expect_partial()
            status.assert_existing_objects_matched()
    except (IndexError, tf.errors.DataLossError) as err:  # a cut .data file, a checksum that does not match
        raise CheckpointError(f"the checkpoint files of {path} are damaged ({brief(err)}): expected {path}.index "
                              f"and its .data-* files complete, as they were written; use another step's "
                              f"checkpoint") from None
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise WeightsDoNotFit(f"the weights in {path} do not fit the network {model.name!r}: "
                              f"{brief(err, [v.path for v in model.weights])}") from None


def brief(err, network_order=()):
    """TensorFlow's message for a checkpoint that cannot be read, without its op prefix and the
    values of the variables it lists (kilobytes of numbers): their names stand for them, the
    first in the network's order (TensorFlow lists them in an order that changes from run to run)."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", str(err))
    names = re.findall(r"path=([^,]+), shape", text)
    if names:
        rank = {name: i for i, name in enumerate(network_order)}
        first = sorted(names, key=lambda name: (rank.get(name, len(rank)), name))[:5]
        text = text.split(" Showing")[0].split(": [")[0].rstrip(".") + f", among them {', '.join(first)}"
    return text.strip()


def load_network(config, checkpoint, data_dir=None, source=None):
    """(data source, the config's network with a checkpoint's weights), for evaluating or
    compressing it: ε, the gate averages and the pixel mean come from the checkpoint.

    The checkpoint is checked before the dataset is opened; `source` replaces the config's
    dataset (tests), `data_dir` its folder.
    """
    run_folder.check_checkpoint(checkpoint)
    source = source or data.get_source(config.data.name, data_dir or config.data.dir, **config.data.options)
    model = build_from_config(config.model, source)
    restore_model(model, checkpoint, exact=False)
    return source, model


def load_compressed(spec):
    """The plain network a compressed_cfg.CompressedSpec describes, with its weights; every weight must fit."""
    model = build_resnet(spec.architecture, spec.num_classes, name="compressed_resnet")
    restore_model(model, spec.weights_path, exact=True)
    return model


class RunCheckpoints:
    """A run's checkpoint policy: model-<step> at every save, the last train.keep_checkpoints
    of them and one every train.keep_checkpoint_every_minutes; kept/model-<step> for good for
    the steps of train.keep_checkpoint_steps; and on a worker other than the chief the same
    saves (they may hold collective ops) into a temporary folder deleted at once.

    CheckpointManager writes atomically: the `checkpoint` file names the new one only once it
    is complete, so a crash mid-save leaves the previous one as the latest.
    """

    def __init__(self, run_dir, train, chief, **objects):
        self.run_dir, self.chief, self.kept_steps = run_dir, chief, set(train.keep_checkpoint_steps)
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, run_dir, max_to_keep=train.keep_checkpoints, checkpoint_name=run_folder.CHECKPOINT_NAME,
            keep_checkpoint_every_n_hours=train.keep_checkpoint_every_minutes / 60)

    def save(self, step):
        """Checkpoint the objects as model-<step>; returns its path (None off the chief).
        OSError and tf.errors.OpError reach the caller, who knows what the run was doing."""
        folder = self.run_dir if self.chief else tempfile.mkdtemp(prefix="epsilon_resnet-worker-")
        try:
            if step in self.kept_steps:
                write_checkpoint(self.checkpoint, os.path.join(folder, run_folder.KEPT_FOLDER),
                                 f"{run_folder.CHECKPOINT_NAME}-{step}")
            manager = self.manager if self.chief else tf.train.CheckpointManager(
                self.checkpoint, folder, max_to_keep=1, checkpoint_name=run_folder.CHECKPOINT_NAME)
            path = manager.save(checkpoint_number=step)
        finally:
            if not self.chief:
                shutil.rmtree(folder, ignore_errors=True)
        return path if self.chief else None

    def restore(self, path):
        """Every object from a full checkpoint of this run."""
        run_folder.check_checkpoint(path)
        try:
            self.checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError) as err:
            raise CheckpointError(f"cannot load checkpoint {path!r}: {err}") from None
