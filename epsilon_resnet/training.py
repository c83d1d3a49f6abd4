"""Training and evaluation of an ε-ResNet: one small loop that runs unchanged under the
default strategy, MirroredStrategy and MultiWorkerMirroredStrategy (where `model.fit` is
broken with Keras 3, keras#20585), driving ordinary Keras callbacks.

A run folder train_log.<output>/ holds config.yaml, log.log, metrics.jsonl, TensorBoard
events and checkpoints model-<global step> (the last train.keep_checkpoints of them, plus
kept/model-<step> for each step of train.keep_checkpoint_steps). Re-running the same command
(or adding --resume) continues exactly from the latest checkpoint: weights, optimizer, step,
learning-rate and ε schedules, gate averages, the partial sums of an interrupted epoch and the
position in the training data stream. In a multi-worker run only the chief writes it.
"""
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading

import keras
import tensorflow as tf

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import config as config_lib
from epsilon_resnet import data, distribute
from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import build_resnet, cifar_structure, imagenet_structure, kernels, set_normalization
from epsilon_resnet.schedules import AdaptiveLearningRate

logger = logging.getLogger("epsilon_resnet")


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


class Interrupted(RunError):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint of the current step."""


KEPT_FOLDER = "kept"  # <run folder>/kept/model-<step>: checkpoints that CheckpointManager never deletes


class TrainingState(tf.train.experimental.PythonState):
    """The Python side of a run, stored inside each checkpoint.

    epoch: epochs completed; step_in_epoch and sums: the steps done in the next epoch and
    their metric sums (non-zero after an interruption mid-epoch); lr: LearningRateSetter's state.
    """

    def __init__(self):
        self.values = self.initial()

    @staticmethod
    def initial():
        return {"epoch": 0, "step_in_epoch": 0, "sums": {}}

    def serialize(self):
        return json.dumps(self.values)

    def deserialize(self, string_value):
        self.values = {**self.initial(), **json.loads(string_value)}


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request to save and stop at the next step boundary.

    The request is fed into the next training step and summed across replicas, so every
    worker of a multi-worker run sees it after the same step and takes part in the same
    save. A second signal acts at once: the previous handlers are back after the first. A
    signal the process was started ignoring stays ignored (a non-interactive shell starts
    background jobs ignoring SIGINT, so that Ctrl-C meant for the shell spares them).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python only signals the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc):
        self._restore()

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self._restore()
        print(f"\n{self.signal}: saving a checkpoint after the next training step, then stopping "
              f"(send it again to stop at once without saving)", file=sys.stderr, flush=True)

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def tensor(self):
        return tf.constant(self.signal is not None)


def structure_for(config):
    imagenet = config.data.name in ("imagenet", "fake-imagenet")
    return imagenet_structure(config.model.depth) if imagenet else cifar_structure(config.model.n)


def build_model(config, source):
    """The network a config describes, with the data source's input normalisation stored in it."""
    model = build_resnet(structure_for(config), source.num_classes, gated=config.model.gated,
                         side_output=config.model.side_output, epsilon=config.model.epsilon,
                         image_shape=source.image_shape, data_format=config.model.data_format)
    for gate in gates_of(model):
        gate.ema_decay = config.model.gate_ema_decay
    set_normalization(model, source.pixel_mean, source.pixel_scale)
    return model


def setup_logging(run_dir):
    """log.log in the run folder (appended, never truncated; none when run_dir is None) plus the console."""
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%m%d %H:%M:%S")
    if run_dir is not None:
        file_handler = logging.FileHandler(os.path.join(run_dir, "log.log"))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO)
    logger.addHandler(console)
    logger.propagate = False


def prepare_run_dir(run_dir, config, write=True):
    """Create the run folder or check that an existing one belongs to the same model and data.

    config.yaml is written once; a resumed run may change training settings (e.g. more
    epochs) but not the network or dataset its checkpoints belong to. write=False (a
    non-chief worker) only checks.
    """
    if write:
        os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    if os.path.exists(path):
        saved = config_lib.load(path)
        for section in ("model", "data"):
            if getattr(saved, section) != getattr(config, section):
                raise RunError(f"{run_dir} holds a run with a different '{section}' configuration "
                               f"({getattr(saved, section)} vs {getattr(config, section)}); "
                               f"choose another output name (-o) or move that folder away")
    elif write:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config_lib.dump(config))
        os.replace(tmp, path)


class Trainer:
    """Owns the model, optimizer, checkpoint and compiled steps of one run."""

    def __init__(self, config, run_dir, source=None, strategy=None):
        self.config, self.run_dir = config, run_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.source = source or data.get_source(config.data.name, config.data.dir, **config.data.options)
        train = config.train
        self.chief = distribute.is_chief(self.strategy)
        if train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        if train.seed is not None:
            keras.utils.set_random_seed(train.seed)
        if train.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.steps_per_epoch = train.steps_per_epoch or self.source.num_train // train.batch_size
        if self.steps_per_epoch < 1:
            raise RunError(f"{self.source.num_train} training images are fewer than one batch of {train.batch_size}")
        self.policy = AdaptiveLearningRate(train.lr_schedule, train.lr_restart_schedule,
                                           train.lr_restart_threshold, train.lr_restart_last_k)
        with self.strategy.scope():
            self.model = build_model(config, self.source)
            optimizer = keras.optimizers.SGD(self.policy.lr_at(1), momentum=train.momentum,
                                             nesterov=train.nesterov)
            if train.mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = self.model.optimizer = optimizer  # Keras callbacks (TensorBoard) look here
            # The training stream's seed: train.seed, or one drawn when the run starts. Kept in
            # the checkpoint, so a resumed run continues the same stream; a strategy variable,
            # so every worker starts from the chief's value.
            seed = train.seed if train.seed is not None else random.SystemRandom().randrange(2 ** 31)
            self.data_seed = tf.Variable(seed, dtype=tf.int64, trainable=False, name="data_seed")
        self.state = TrainingState()
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, state=self.state,
                                              data_seed=self.data_seed)
        self.manager = tf.train.CheckpointManager(self.checkpoint, run_dir, max_to_keep=train.keep_checkpoints,
                                                  checkpoint_name="model")
        self.lr_setter = cbs.LearningRateSetter(self.policy, self.optimizer)
        self.train_step = self._compile_train_step()  # (iterator, stop) -> step stats; benchmarks time it
        self._eval_step = tf.function(self._eval_batch, jit_compile=train.jit_compile)

    # ---- steps -------------------------------------------------------------------------
    def _losses(self, outputs, labels, global_batch):
        ce = keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"], from_logits=True)
        loss = tf.nn.compute_average_loss(ce, global_batch_size=global_batch)
        stats = {"cross_entropy_loss": loss,
                 "train_error": tf.reduce_sum(top1_wrong(outputs["logits"], labels)) / global_batch}
        if "side_logits" in outputs:
            side_ce = keras.losses.sparse_categorical_crossentropy(labels, outputs["side_logits"], from_logits=True)
            side = tf.nn.compute_average_loss(side_ce, global_batch_size=global_batch)
            loss += self.config.model.side_loss_weight * side
            stats["side_cross_entropy_loss"] = side
            stats["train_error_side"] = tf.reduce_sum(top1_wrong(outputs["side_logits"], labels)) / global_batch
        return loss, stats

    def _weight_decay(self):
        train = self.config.train
        step = tf.cast(self.optimizer.iterations, tf.float32)
        coefficient = train.weight_decay * tf.pow(train.weight_decay_rate, tf.floor(step / train.weight_decay_steps))
        return coefficient * tf.add_n([0.5 * tf.reduce_sum(tf.square(tf.cast(k, tf.float32)))
                                       for k in kernels(self.model)])

    def _compile_train_step(self):
        global_batch = self.config.train.batch_size
        gates = gates_of(self.model)

        def replica_step(images, labels, stop):
            with tf.GradientTape() as tape:
                outputs = self.model(images, training=True)
                loss, stats = self._losses(outputs, labels, global_batch)
                wd_cost = self._weight_decay()
                loss += tf.nn.scale_regularization_loss(wd_cost)
                scaled = self.optimizer.scale_loss(loss) if self.config.train.mixed_precision else loss
            variables = self.model.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            stats["cost"] = loss
            if gates:
                # Identical on every replica (the gate is a cross-replica decision); summing
                # over replicas then dividing keeps the reduction uniform.
                count = tf.add_n([tf.convert_to_tensor(g.is_discarded) for g in gates])
                stats["discarded_cnt"] = count / self.strategy.num_replicas_in_sync
            stats["wd_cost"] = wd_cost / self.strategy.num_replicas_in_sync
            stats["stop_requests"] = tf.cast(stop, tf.float32)  # > 0 after the sum: some worker must stop
            return stats

        # XLA compiles the per-replica step only on one device: under a strategy the gate's
        # cross-replica all_gather does not compile on CPU replicas (TF2-NOTES).
        jit = self.config.train.jit_compile and self.strategy.num_replicas_in_sync == 1
        compiled_step = tf.function(replica_step, jit_compile=True) if jit else replica_step

        @tf.function
        def step(iterator, stop):
            images, labels = next(iterator)
            per_replica = self.strategy.run(compiled_step, (images, labels, stop))
            return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in per_replica.items()}
        return step

    def distributed_dataset(self):
        """The training stream from the current global step on, split into per-replica batches."""
        train, start = self.config.train, self.global_step
        seed = int(self.data_seed.numpy())
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: self.source.train_dataset(train.batch_size, seed=seed, input_context=ctx, start_step=start))

    def _eval_batch(self, images, labels):
        # Evaluation runs outside strategy.run, on whole batches, so gate decisions at test
        # time depend only on the batch, never on the number of replicas.
        outputs = self.model(images, training=False)
        sums = {"val_error": top1_wrong(outputs["logits"], labels),
                "val_cost": keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"],
                                                                         from_logits=True)}
        if self.source.num_classes > 10:
            sums["val_error_top5"] = top5_wrong(outputs["logits"], labels)
        if "side_logits" in outputs:
            sums["val_error_side"] = top1_wrong(outputs["side_logits"], labels)
        return {k: tf.reduce_sum(v) for k, v in sums.items()}

    def evaluate(self, max_batches=None):
        """Errors and cost over the eval set (or its first max_batches batches)."""
        totals, count = {}, 0
        for i, (images, labels) in enumerate(self.source.eval_dataset(self.config.train.eval_batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            for key, value in self._eval_step(images, labels).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += int(labels.shape[0])
        return {key: value / max(count, 1) for key, value in totals.items()}

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def global_step(self):
        return int(self.optimizer.iterations.numpy())

    def restore(self, path):
        """Restore a full checkpoint (weights, optimizer, step, schedule state, data seed)."""
        check_checkpoint(path)
        try:
            self.checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError) as err:
            raise RunError(f"cannot load checkpoint {path!r}: {err}") from None
        if "lr" in self.state.values:
            self.lr_setter.load_state(self.state.values["lr"])

    def _check_workers_agree(self):
        """Every worker must start from the same step, or their collective ops would never meet."""
        gather = tf.function(lambda: self.strategy.run(lambda: tf.distribute.get_replica_context().all_gather(
            tf.reshape(self.optimizer.iterations, [1]), 0)))
        steps = sorted({int(s) for s in self.strategy.experimental_local_results(gather())[0].numpy()})
        if len(steps) > 1:
            raise RunError(f"the workers start from different global steps {steps}: every worker must read the "
                           f"chief's run folder {self.run_dir} (put it on a shared file system)")

    def save(self):
        """Checkpoint the current state as model-<global step>; returns its path (None off the chief).

        CheckpointManager writes atomically: the `checkpoint` file names the new one only
        once it is complete, so a crash mid-save leaves the previous one as the latest. A
        step of train.keep_checkpoint_steps is first also written to kept/, out of the
        manager's reach. A worker other than the chief makes the same saves (they may hold
        collective ops, TensorFlow's multi-worker guide) into a temporary folder deleted at once.
        """
        self.state.values["lr"] = self.lr_setter.state()
        step = self.global_step
        folder = self.run_dir if self.chief else tempfile.mkdtemp(prefix="epsilon_resnet-worker-")
        try:
            if step in self.config.train.keep_checkpoint_steps:
                self._write_kept(folder, step)
            manager = self.manager if self.chief else tf.train.CheckpointManager(
                self.checkpoint, folder, max_to_keep=1, checkpoint_name="model")
            path = manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as err:
            raise RunError(self._write_failure(err)) from None
        finally:
            if not self.chief:
                shutil.rmtree(folder, ignore_errors=True)
        return path if self.chief else None

    def _write_kept(self, folder, step):
        """folder/kept/model-<step>, written in a temporary folder and moved into place index last."""
        kept = os.path.join(folder, KEPT_FOLDER)
        os.makedirs(kept, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=kept)
        try:
            self.checkpoint.write(os.path.join(tmp, f"model-{step}"))
            for name in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
                os.replace(os.path.join(tmp, name), os.path.join(kept, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_failure(self, err):
        full = getattr(err, "errno", None) == errno.ENOSPC or "no space left" in str(err).lower()
        return (f"writing to {self.run_dir} failed at global step {self.global_step}"
                f"{' because the disk is full' if full else ''}: {err}. The last complete checkpoint is "
                f"{tf.train.latest_checkpoint(self.run_dir)}; once the problem is fixed, run the same command "
                f"again to resume")

    # ---- the loop ----------------------------------------------------------------------
    def callbacks(self, extra=()):
        """The run's Keras callbacks; only the chief has the writers (metrics, TensorBoard)."""
        items = [self.lr_setter]
        if self.model.epsilon is not None:
            items.append(cbs.EpsilonScheduler(self.model.epsilon, self.config.model.epsilon_schedule,
                                              self.config.model.epsilon))
        items += [cbs.GateMonitor(), *extra, cbs.EpochLogger()]
        if self.chief:
            items += [cbs.MetricsWriter(os.path.join(self.run_dir, "metrics.jsonl")),
                      keras.callbacks.TensorBoard(self.run_dir, write_graph=False, update_freq="epoch")]
        return keras.callbacks.CallbackList(items, model=self.model)

    def fit(self, progress=True, extra_callbacks=()):
        """Train from the current state to max_epoch, evaluating and checkpointing each epoch.

        SIGINT (Ctrl-C) or SIGTERM saves a checkpoint of the step reached and raises
        Interrupted; a non-finite loss raises RunError and saves nothing.
        """
        train = self.config.train
        not_epoch_ends = sorted(s for s in train.keep_checkpoint_steps if s % self.steps_per_epoch)
        if not_epoch_ends:
            raise RunError(f"train.keep_checkpoint_steps {not_epoch_ends} are not epoch ends: checkpoints are "
                           f"written every {self.steps_per_epoch} steps, at the end of each epoch")
        if self.strategy.cluster_resolver is not None:
            self._check_workers_agree()
        callbacks = self.callbacks(extra_callbacks)
        iterator = iter(self.distributed_dataset())
        state = self.state.values
        logger.info("training %s (%s) epochs %d..%d, %d steps each, from global step %d%s", self.model.name,
                    distribute.describe(self.strategy), state["epoch"] + 1, train.max_epoch, self.steps_per_epoch,
                    self.global_step, f" (step {state['step_in_epoch']} of epoch {state['epoch'] + 1})"
                    if state["step_in_epoch"] else "")
        callbacks.on_train_begin()
        with StopRequest() as stop:
            for epoch in range(state["epoch"] + 1, train.max_epoch + 1):
                self._train_epoch(epoch, iterator, callbacks, stop, progress)
        callbacks.on_train_end()
        return self.model

    def _train_epoch(self, epoch, iterator, callbacks, stop, progress):
        train, state = self.config.train, self.state.values
        callbacks.on_epoch_begin(epoch)
        logs = {"learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))}
        if self.model.epsilon is not None:
            logs["epsilon"] = float(self.model.epsilon.numpy())
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["cost", "discarded_cnt"],
                                  verbose=1 if progress else 0)
        if progress:
            print(f"Epoch {epoch}/{train.max_epoch}")
        sums = state["sums"]  # partial sums of an interrupted epoch, or empty
        for step in range(state["step_in_epoch"], self.steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            values = {k: float(v) for k, v in self.train_step(iterator, stop.tensor()).items()}
            stopping = values.pop("stop_requests") > 0
            if not math.isfinite(values["cost"]):
                raise RunError(f"the loss became {values['cost']} at global step {self.global_step} (step {step + 1} "
                               f"of epoch {epoch}); nothing was saved after it: the last good checkpoint is "
                               f"{tf.train.latest_checkpoint(self.run_dir)}")
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            state["step_in_epoch"] = step + 1
            callbacks.on_train_batch_end(step, values)
            if (step + 1) % train.log_every == 0 or step + 1 == self.steps_per_epoch:
                bar.update(step + 1, [(k, values[k]) for k in ("cost", "train_error", "discarded_cnt")
                                      if k in values])
            if stopping:
                if progress:
                    print()  # end the progress bar's line
                saved = self.save() or "the chief's checkpoint"
                raise Interrupted(f"stopped by {stop.signal or 'another worker'} at global step {self.global_step} "
                                  f"(step {step + 1} of epoch {epoch}) after saving {saved}; "
                                  f"run the same command again (or add --resume) to continue")
        logs.update({key: value / self.steps_per_epoch for key, value in sums.items()})
        logs.update(self.evaluate())
        logs["global_step"] = self.global_step
        try:
            callbacks.on_epoch_end(epoch, logs)
        except (OSError, tf.errors.OpError) as err:  # metrics.jsonl or the TensorBoard events
            raise RunError(self._write_failure(err)) from None
        state.update(epoch=epoch, step_in_epoch=0, sums={})
        path = self.save()
        if path:
            logger.info("saved %s", path)


def _steps_in(folder):
    return sorted(int(f[6:-6]) for f in os.listdir(folder) if f.startswith("model-")
                  and f.endswith(".index") and f[6:-6].isdigit()) if os.path.isdir(folder) else []


def check_checkpoint(path):
    """A checkpoint is named by its prefix, e.g. train_log.x/model-3900 (files .index and .data-*)."""
    if not tf.io.gfile.exists(path + ".index"):
        folder = os.path.dirname(path) or "."
        steps, kept = _steps_in(folder), _steps_in(os.path.join(folder, KEPT_FOLDER))
        raise RunError(f"no checkpoint {path!r}: expected the file {path}.index"
                       + (f"; {folder} has checkpoints at steps {steps}" if steps else "")
                       + (f"; {os.path.join(folder, KEPT_FOLDER)} has steps {kept}" if kept else ""))


def checkpoint_path(run_dir, step):
    """The prefix of a run's checkpoint at `step`: model-<step>, or kept/model-<step> once rotated out."""
    recent = os.path.join(run_dir, f"model-{step}")
    kept = os.path.join(run_dir, KEPT_FOLDER, f"model-{step}")
    return kept if not tf.io.gfile.exists(recent + ".index") and tf.io.gfile.exists(kept + ".index") else recent


def top1_wrong(logits, labels):
    """1.0 for each example whose top logit is not its label, else 0.0."""
    return tf.cast(tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)


def top5_wrong(logits, labels):
    """1.0 for each example whose label is not among its five top logits, else 0.0."""
    return 1.0 - tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), 5), tf.float32)


def train_and_evaluate(config, run_dir, load=None, resume=False, strategy=None, progress=True, extra_callbacks=()):
    """Train a config into run_dir: resume from its latest checkpoint, else start from `load` or scratch.

    resume=True insists on a checkpoint to resume from. The dataset and the --load
    checkpoint are checked before the run folder is created, so a mistyped path leaves
    nothing behind. In a multi-worker run only the chief writes run_dir.
    """
    source = data.get_source(config.data.name, config.data.dir, **config.data.options)
    if load:
        check_checkpoint(load)
    latest = tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if resume and load:
        raise RunError("--resume continues the run folder's own latest checkpoint; --load starts a new run from "
                       "another one: give only one of them")
    if resume and not latest:
        raise RunError(f"--resume: {run_dir} " + ("has no checkpoint to resume from (its 'checkpoint' file names "
                                                  "none)" if os.path.isdir(run_dir) else "does not exist")
                       + "; check the output name (-o), or drop --resume to start a new run")
    if latest and load:
        raise RunError(f"{run_dir} already has checkpoints (latest {latest}); it resumes by itself. "
                       f"Drop --load, or choose another output name to start from {load}")
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    prepare_run_dir(run_dir, config, write=chief)
    setup_logging(run_dir if chief else None)
    trainer = Trainer(config, run_dir, source=source, strategy=strategy)
    if latest or load:
        trainer.restore(latest or load)
        logger.info("%s from %s at global step %d, epoch %d", "resumed" if latest else "loaded",
                    latest or load, trainer.global_step, trainer.state.values["epoch"])
    try:
        return trainer.fit(progress=progress, extra_callbacks=extra_callbacks)
    except RunError as err:
        logger.debug("%s", err)  # into log.log only: the caller shows it on the console
        raise
