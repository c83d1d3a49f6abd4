"""Checkpoints: writing one atomically, finding a run's newest complete one, restoring a network
from one (a run's, or a compressed network's from its .cfg), and a run's checkpoint policy (`RunCheckpoints`). Their names and places in the run
folder are `run_folder`'s.

A run's checkpoints are the model-<step> files themselves: a checkpoint is complete when its
.index and every .data shard it names read back. The `checkpoint` file (TensorFlow's
CheckpointState, written after each save so that TensorFlow's tools read the run) is only a
hint of which is the latest.
"""
import contextlib
import errno
import glob
import json
import os
import re
import shutil
import tempfile
import time

import tensorflow as tf
from google.protobuf import text_format

from epsilon_resnet import data, run_folder
from epsilon_resnet.atomic import temporary_path, write_atomic
from epsilon_resnet.errors import CheckpointError, WeightsDoNotFit
from epsilon_resnet.networks import build_from_config, build_resnet


@contextlib.contextmanager
def file_errors_as_os_errors(path):
    """TensorFlow's errors while it writes files under `path` as the OSError they stand for, so
    that callers handle a full or read-only disk one way (cli.command: one line)."""
    try:
        yield
    except tf.errors.OpError as err:
        text = str(err).lower()
        code = (errno.ENOSPC if isinstance(err, tf.errors.ResourceExhaustedError) or "no space left" in text
                else errno.EROFS if "read-only file system" in text
                else errno.EACCES if isinstance(err, tf.errors.PermissionDeniedError)
                else errno.ENOENT if isinstance(err, tf.errors.NotFoundError) else errno.EIO)
        raise OSError(code, os.strerror(code), path) from None


def write_checkpoint(checkpoint, folder, name):
    """Write `checkpoint` as folder/name.* without ever showing a half-written one.

    The files are written into a temporary folder beside them (atomic.temporary_path)
    and moved into place with the .index last (the index names the data files, so a reader
    never finds an index without its data). An existing checkpoint (its .index) is never
    replaced; .data files without an .index are the rest of an interrupted write of this
    same checkpoint, and are replaced.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if os.path.lexists(path + ".index"):
        raise CheckpointError(f"{path} exists already; it was left untouched")
    tmp = temporary_path(path)
    os.mkdir(tmp)
    try:
        with file_errors_as_os_errors(path):
            checkpoint.write(os.path.join(tmp, name))
        for file in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
            os.replace(os.path.join(tmp, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def damage(path):
    """None when the checkpoint prefix `path` is complete (its .index and every value in its
    .data shards read back, checksums included); otherwise what is wrong, in a few words."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (IndexError, tf.errors.OpError, ValueError) as err:  # IndexError: a cut .data file
        file, _, reason = str(err).partition("; ")
        return f"{file} is missing" if reason.startswith("No such file or directory") else brief(err)
    return None


def read_hint(run_dir):
    """(the `checkpoint` file's CheckpointState or None, what is wrong with the file or None)."""
    path = os.path.join(run_dir, run_folder.CHECKPOINT_HINT)
    if not os.path.lexists(path):
        return None, f"{path} is missing"
    try:
        state = tf.train.get_checkpoint_state(run_dir)
    except (ValueError, tf.errors.OpError, UnicodeDecodeError):
        state = None
    if state is None or not state.model_checkpoint_path:
        return None, f"{path} cannot be read (empty or not a CheckpointState)"
    return state, None


def find_latest(run_dir):
    """(the newest complete checkpoint of a run folder or None, a note when the `checkpoint`
    file disagrees with the files, else None).

    Raises CheckpointError when a damaged checkpoint is newer than the newest complete one
    (resuming would have to write its step again, and a checkpoint is never overwritten), or
    when the `checkpoint` file names a checkpoint and none is left.
    """
    hint, problem = read_hint(run_dir) if os.path.isdir(run_dir) else (None, None)
    named = os.path.basename(hint.model_checkpoint_path) if hint else None
    damaged = []
    for step in reversed(run_folder.steps_in(run_dir)):
        path = os.path.join(run_dir, f"{run_folder.CHECKPOINT_NAME}-{step}")
        why = damage(path)
        if why is None:
            break
        damaged.append(f"{path} ({why})")
    else:
        path = None
    if damaged:
        raise CheckpointError(f"damaged checkpoint {', '.join(damaged)}; the newest complete checkpoint is {path}. "
                              f"A checkpoint is never overwritten: move the damaged one's files out of {run_dir} "
                              f"to resume from {path or 'step 0'}")
    if path is None:
        if named:
            raise CheckpointError(f"{run_dir}/{run_folder.CHECKPOINT_HINT} names {named}, but {run_dir} holds no "
                                  f"complete model-<step> checkpoint; put the checkpoints back, or choose another "
                                  f"`run_dir`")
        return None, None
    if problem:
        return path, f"{problem}: resuming from the newest complete checkpoint found, {path}"
    if named != os.path.basename(path):
        return path, (f"{run_dir}/{run_folder.CHECKPOINT_HINT} names {named}, but the newest complete checkpoint is "
                      f"{path}: resuming from it")
    return path, None


def newest(run_dir):
    """The newest complete checkpoint's path, or None (for messages: never raises)."""
    try:
        return find_latest(run_dir)[0]
    except CheckpointError:
        return None


def restore_model(model, path, exact):
    """Load a model's weights from a checkpoint prefix written with tf.train.Checkpoint(model=...).

    exact: every value of the checkpoint must be used (a compressed network's own
    checkpoint); otherwise the rest of a training checkpoint (optimizer, run state) is
    ignored. Either way every weight of the model must be found, with its shape.
    """
    if not os.path.isfile(path + ".index"):
        raise CheckpointError(f"no checkpoint {path!r}: the file {path}.index does not exist")
    why = damage(path)
    if why:
        raise CheckpointError(f"the checkpoint files of {path} are damaged ({why}): expected {path}.index and its "
                              f".data-* files complete, as they were written; use another step's checkpoint")
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        if exact:
            status.assert_consumed()
        else:
            status.expect_partial()
            status.assert_existing_objects_matched()
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


class Rotation(tf.train.experimental.PythonState):
    """The rotation's state, saved inside each checkpoint (so the files, not the `checkpoint`
    hint, carry it): the recent checkpoints [name, time] after this save, the time of the last
    one kept for its interval, and the checkpoints this save rotated out (`gone`), which a run
    resumed from it deletes if an interruption left them."""

    def __init__(self):
        self.values = {"recent": [], "last_preserved": time.time(), "gone": []}

    def serialize(self):
        return json.dumps(self.values)

    def deserialize(self, string_value):
        self.values = json.loads(string_value)


class RunCheckpoints:
    """A run's checkpoint policy: model-<step> at every save, the last train.keep_checkpoints
    of them and one every train.keep_checkpoint_every_minutes (tf.train.CheckpointManager's
    rule); kept/model-<step> for good for the steps of train.keep_checkpoint_steps; and on a
    worker other than the chief the same saves (they may hold collective ops) into a temporary
    folder deleted at once.

    Rotation deletes only the checkpoints that a checkpoint of this run lists as recent
    (`Rotation`); the `checkpoint` file is written after each save for TensorFlow's tools.
    """

    def __init__(self, run_dir, train, chief, **objects):
        self.run_dir, self.chief, self.kept_steps = run_dir, chief, set(train.keep_checkpoint_steps)
        self.keep, self.interval = train.keep_checkpoints, train.keep_checkpoint_every_minutes * 60
        self.rotation = Rotation()
        self.checkpoint = tf.train.Checkpoint(**objects, rotation=self.rotation)
        self.restored = None

    def save(self, step):
        """Checkpoint the objects as model-<step>; returns its path (None off the chief).
        OSError reaches the caller, who knows what the run was doing.

        The step this run resumed from is not saved again (a checkpoint is never
        overwritten): a run stopped on an epoch's last step or during its evaluation kept
        that step, and that checkpoint, resumed, redoes only the epoch's end.
        """
        name = f"{run_folder.CHECKPOINT_NAME}-{step}"
        if name == self.restored:
            return os.path.join(self.run_dir, name) if self.chief else None
        before = self.rotation.values
        self.rotation.values = self._rotate(name)
        folder = self.run_dir if self.chief else tempfile.mkdtemp(prefix="epsilon_resnet-worker-")
        try:
            kept = os.path.join(folder, run_folder.KEPT_FOLDER)
            if step in self.kept_steps and not os.path.lexists(os.path.join(kept, name + ".index")):
                write_checkpoint(self.checkpoint, kept, name)  # (it exists when a save of this step failed after it)
            path = write_checkpoint(self.checkpoint, folder, name)
        except BaseException:
            self.rotation.values = before
            raise
        finally:
            if not self.chief:
                shutil.rmtree(folder, ignore_errors=True)
        if not self.chief:
            return None
        self._delete_gone()
        self._write_hint(name)
        return path

    def _rotate(self, name):
        """The rotation's state once `name` is saved: the recent checkpoints beyond the last
        `keep` that no interval keeps are gone."""
        recent, last_preserved, gone = [*self.rotation.values["recent"], [name, time.time()]], \
            self.rotation.values["last_preserved"], []
        while len(recent) > self.keep:
            old, when = recent.pop(0)
            if when - self.interval >= last_preserved:
                last_preserved = when
            else:
                gone.append(old)
        return {"recent": recent, "last_preserved": last_preserved, "gone": gone}

    def _delete_gone(self):
        """Delete the checkpoints the last save rotated out, .data first (an .index left by an
        interruption is a damaged checkpoint older than the one that names it gone)."""
        for gone in self.rotation.values["gone"]:
            prefix = os.path.join(self.run_dir, gone)
            for file in [*glob.glob(glob.escape(prefix) + ".data-*"), prefix + ".index"]:
                if os.path.isfile(file) and not os.path.islink(file):
                    os.remove(file)

    def _write_hint(self, latest):
        recent = self.rotation.values["recent"]
        state = tf.compat.v1.train.generate_checkpoint_state_proto(  # paths written relative to run_dir
            self.run_dir, os.path.join(self.run_dir, latest), [os.path.join(self.run_dir, n) for n, _ in recent],
            [when for _, when in recent], self.rotation.values["last_preserved"])
        write_atomic(os.path.join(self.run_dir, run_folder.CHECKPOINT_HINT),
                     text_format.MessageToString(state).encode())

    def restore(self, path):
        """Every object from a full checkpoint of this run; then what its save rotated out and
        an interruption left is deleted."""
        run_folder.check_checkpoint(path)
        try:
            self.checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError, IndexError) as err:
            raise CheckpointError(f"cannot load checkpoint {path!r}: {brief(err)}") from None
        self.restored = os.path.basename(path)
        if self.chief:
            self._delete_gone()
