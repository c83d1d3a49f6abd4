"""Training and evaluation of an ε-ResNet: one small loop that runs unchanged under the
default strategy, MirroredStrategy and MultiWorkerMirroredStrategy (where `model.fit` is
broken with Keras 3, keras#20585), driving ordinary Keras callbacks.

A run folder train_log.<output>/ holds config.yaml, log.log, metrics.jsonl, TensorBoard
events and checkpoints model-<global step>; re-running the same command resumes from the
latest checkpoint.
"""
import json
import logging
import math
import os
import sys

import keras
import tensorflow as tf

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import config as config_lib
from epsilon_resnet import data
from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import build_resnet, cifar_structure, imagenet_structure, kernels, set_normalization
from epsilon_resnet.schedules import AdaptiveLearningRate

logger = logging.getLogger("epsilon_resnet")


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


class TrainingState(tf.train.experimental.PythonState):
    """The Python side of a run (epoch, learning-rate policy) stored inside each checkpoint."""

    def __init__(self):
        self.values = {"epoch": 0}

    def serialize(self):
        return json.dumps(self.values)

    def deserialize(self, string_value):
        self.values = json.loads(string_value)


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
    """log.log in the run folder (appended, never truncated) plus the console."""
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%m%d %H:%M:%S")
    file_handler = logging.FileHandler(os.path.join(run_dir, "log.log"))
    file_handler.setFormatter(formatter)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO)
    logger.addHandler(file_handler)
    logger.addHandler(console)
    logger.propagate = False


def prepare_run_dir(run_dir, config):
    """Create the run folder or check that an existing one belongs to the same model and data.

    config.yaml is written once; a resumed run may change training settings (e.g. more
    epochs) but not the network or dataset its checkpoints belong to.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    if os.path.exists(path):
        saved = config_lib.load(path)
        for section in ("model", "data"):
            if getattr(saved, section) != getattr(config, section):
                raise RunError(f"{run_dir} holds a run with a different '{section}' configuration "
                               f"({getattr(saved, section)} vs {getattr(config, section)}); "
                               f"choose another output name (-o) or move that folder away")
    else:
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
        if train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        if train.seed is not None:
            keras.utils.set_random_seed(train.seed)
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
        self.state = TrainingState()
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, state=self.state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, run_dir, max_to_keep=train.keep_checkpoints,
                                                  checkpoint_name="model")
        self.lr_setter = cbs.LearningRateSetter(self.policy, self.optimizer)
        self._train_step = self._compile_train_step()
        self._eval_step = tf.function(self._eval_batch, jit_compile=train.jit_compile)

    # ---- steps -------------------------------------------------------------------------
    def _losses(self, outputs, labels, global_batch):
        ce = keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"], from_logits=True)
        loss = tf.nn.compute_average_loss(ce, global_batch_size=global_batch)
        stats = {"cross_entropy_loss": loss,
                 "train_error": tf.reduce_sum(_wrong(outputs["logits"], labels)) / global_batch}
        if "side_logits" in outputs:
            side_ce = keras.losses.sparse_categorical_crossentropy(labels, outputs["side_logits"], from_logits=True)
            side = tf.nn.compute_average_loss(side_ce, global_batch_size=global_batch)
            loss += self.config.model.side_loss_weight * side
            stats["side_cross_entropy_loss"] = side
            stats["train_error_side"] = tf.reduce_sum(_wrong(outputs["side_logits"], labels)) / global_batch
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

        def replica_step(images, labels):
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
            return stats

        @tf.function(jit_compile=False)  # XLA under a strategy fails on CPU replicas (TF2-NOTES)
        def step(iterator):
            images, labels = next(iterator)
            per_replica = self.strategy.run(replica_step, (images, labels))
            return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in per_replica.items()}
        return step

    def _eval_batch(self, images, labels):
        # Evaluation runs outside strategy.run, on whole batches, so gate decisions at test
        # time depend only on the batch, never on the number of replicas.
        outputs = self.model(images, training=False)
        sums = {"val_error": _wrong(outputs["logits"], labels),
                "val_cost": keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"],
                                                                         from_logits=True)}
        if self.source.num_classes > 10:
            sums["val_error_top5"] = 1.0 - tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32),
                                                                    tf.cast(outputs["logits"], tf.float32), 5),
                                                   tf.float32)
        if "side_logits" in outputs:
            sums["val_error_side"] = _wrong(outputs["side_logits"], labels)
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
        """Restore a full checkpoint (weights, optimizer, step, schedule state)."""
        check_checkpoint(path)
        try:
            self.checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError) as err:
            raise RunError(f"cannot load checkpoint {path!r}: {err}") from None
        if "lr" in self.state.values:
            self.lr_setter.load_state(self.state.values["lr"])

    def save(self):
        self.state.values["lr"] = self.lr_setter.state()
        return self.manager.save(checkpoint_number=self.global_step)

    # ---- the loop ----------------------------------------------------------------------
    def callbacks(self, extra=()):
        items = [self.lr_setter]
        if self.model.epsilon is not None:
            items.append(cbs.EpsilonScheduler(self.model.epsilon, self.config.model.epsilon_schedule,
                                              self.config.model.epsilon))
        items += [cbs.GateMonitor(), *extra, cbs.EpochLogger(),
                  cbs.MetricsWriter(os.path.join(self.run_dir, "metrics.jsonl")),
                  keras.callbacks.TensorBoard(self.run_dir, write_graph=False, update_freq="epoch")]
        return keras.callbacks.CallbackList(items, model=self.model)

    def fit(self, progress=True, extra_callbacks=()):
        """Train from the current state to max_epoch, evaluating and checkpointing each epoch."""
        train = self.config.train
        callbacks = self.callbacks(extra_callbacks)
        dataset = self.strategy.distribute_datasets_from_function(
            lambda ctx: self.source.train_dataset(train.batch_size, seed=train.seed, input_context=ctx))
        iterator = iter(dataset)
        first_epoch = self.state.values["epoch"] + 1
        logger.info("training %s epochs %d..%d, %d steps each, from global step %d", self.model.name,
                    first_epoch, train.max_epoch, self.steps_per_epoch, self.global_step)
        callbacks.on_train_begin()
        for epoch in range(first_epoch, train.max_epoch + 1):
            callbacks.on_epoch_begin(epoch)
            logs = {"learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))}
            if self.model.epsilon is not None:
                logs["epsilon"] = float(self.model.epsilon.numpy())
            bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["cost", "discarded_cnt"],
                                      verbose=1 if progress else 0)
            if progress:
                print(f"Epoch {epoch}/{train.max_epoch}")
            sums = {}
            for step in range(self.steps_per_epoch):
                values = {k: float(v) for k, v in self._train_step(iterator).items()}
                if not math.isfinite(values["cost"]):
                    raise RunError(f"the loss became {values['cost']} at global step {self.global_step} "
                                   f"(epoch {epoch}); the last good checkpoint is {self.manager.latest_checkpoint}")
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                if (step + 1) % train.log_every == 0 or step + 1 == self.steps_per_epoch:
                    bar.update(step + 1, [(k, values[k]) for k in ("cost", "train_error", "discarded_cnt")
                                          if k in values])
            logs.update({key: value / self.steps_per_epoch for key, value in sums.items()})
            logs.update(self.evaluate())
            logs["global_step"] = self.global_step
            callbacks.on_epoch_end(epoch, logs)
            self.state.values["epoch"] = epoch
            path = self.save()
            logger.info("saved %s", path)
        callbacks.on_train_end()
        return self.model


def check_checkpoint(path):
    """A checkpoint is named by its prefix, e.g. train_log.x/model-3900 (files .index and .data-*)."""
    if not tf.io.gfile.exists(path + ".index"):
        folder = os.path.dirname(path) or "."
        steps = sorted(int(f[6:-6]) for f in os.listdir(folder) if f.startswith("model-")
                       and f.endswith(".index") and f[6:-6].isdigit()) if os.path.isdir(folder) else []
        raise RunError(f"no checkpoint {path!r}: expected the file {path}.index"
                       + (f"; {folder} has checkpoints at steps {steps}" if steps else ""))


def _wrong(logits, labels):
    return tf.cast(tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32)


def train_and_evaluate(config, run_dir, load=None, strategy=None, progress=True):
    """Train a config into run_dir: resume from its latest checkpoint, else start from `load` or scratch.

    The dataset and the --load checkpoint are checked before the run folder is created, so
    a mistyped path leaves nothing behind.
    """
    source = data.get_source(config.data.name, config.data.dir, **config.data.options)
    if load:
        check_checkpoint(load)
    latest = tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if latest and load:
        raise RunError(f"{run_dir} already has checkpoints (latest {latest}); it resumes by itself. "
                       f"Drop --load, or choose another output name to start from {load}")
    prepare_run_dir(run_dir, config)
    setup_logging(run_dir)
    trainer = Trainer(config, run_dir, source=source, strategy=strategy)
    if latest or load:
        trainer.restore(latest or load)
        logger.info("%s from %s at global step %d, epoch %d", "resumed" if latest else "loaded",
                    latest or load, trainer.global_step, trainer.state.values["epoch"])
    return trainer.fit(progress=progress)
