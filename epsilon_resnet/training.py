"""Training an ε-ResNet: one small loop that runs unchanged under the default strategy,
MirroredStrategy and MultiWorkerMirroredStrategy (where `model.fit` is broken with Keras 3,
docs/tensorflow.md), driving ordinary Keras callbacks.

Training into the same run folder again continues exactly from the run folder's latest
checkpoint: weights, optimizer, step, learning-rate and ε schedules, gate averages, the
partial sums of an interrupted epoch and the position in the training data stream. In a
multi-worker run only the chief writes the run folder.
"""
import contextlib
import errno
import json
import math
import os
import random

import keras
import tensorflow as tf

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import config as config_lib
from epsilon_resnet import checkpoints, console, data, distribute, run_folder, runtime, structures
from epsilon_resnet.console import logger, setup_logging
from epsilon_resnet.data import files
from epsilon_resnet.errors import ConfigError, Interrupted, RunError
from epsilon_resnet.evaluation import Evaluator
from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import build_from_config
from epsilon_resnet.optimizers import TF1Momentum
from epsilon_resnet.schedules import AdaptiveLearningRate
from epsilon_resnet.signals import StopRequest
from epsilon_resnet.train_step import compile_train_step, loss_scaled


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


def global_batch_size(train, replicas):
    """Images per step over all replicas; a global batch that does not split evenly loses its
    remainder, with a warning that names the batch actually trained on."""
    per_replica = config_lib.per_replica_batch(train, replicas)
    if not train.batch_per_replica and train.batch_size % replicas:
        logger.warning("the global batch of %d images does not split evenly across %d replicas: each replica "
                       "trains on %d, %d images per step (the original's integer division)",
                       train.batch_size, replicas, per_replica, per_replica * replicas)
    return per_replica * replicas


def build_optimizer(train, learning_rate):
    """TF1's momentum rule (docs/original.md §4), loss-scaled under float16."""
    optimizer = TF1Momentum(learning_rate, momentum=train.momentum, nesterov=train.nesterov)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaled(train) else optimizer


# ---- build -------------------------------------------------------------------------------
def build_model(config, source, learning_rate):
    """The run's network, its gates given the training-step settings, and its optimizer, built
    for the network's variables (so a checkpoint restores its slots); under the strategy's scope."""
    model = build_from_config(config.model, source, skip_closed_backward=config.train.skip_closed_backward)
    model.optimizer = build_optimizer(config.train, learning_rate)
    model.optimizer.build(model.trainable_variables)
    return model, model.optimizer


# ---- data --------------------------------------------------------------------------------
def steps_per_epoch(train, source):
    """train.steps_per_epoch, or as many whole batches as the training set holds."""
    steps = train.steps_per_epoch or source.num_train // train.batch_size
    if steps < 1:
        raise RunError(f"{source.num_train} training images are fewer than one batch of {train.batch_size}")
    return steps


def data_seed_variable(train):
    """The training stream's seed: train.seed, or one drawn when the run starts. Kept in the
    checkpoint, so a resumed run continues the same stream; a strategy variable, so every
    worker starts from the chief's value."""
    seed = train.seed if train.seed is not None else random.SystemRandom().randrange(2 ** 31)
    return tf.Variable(seed, dtype=tf.int64, trainable=False, name="data_seed")


def distributed_stream(strategy, source, global_batch, seed, start_step):
    """The training stream from global step `start_step` on, split into per-replica batches."""
    return strategy.distribute_datasets_from_function(
        lambda ctx: source.train_dataset(global_batch, seed=seed, input_context=ctx, start_step=start_step))


# ---- the workers' agreement ----------------------------------------------------------------
def check_workers_agree(strategy, iterations, run_dir):
    """Every worker must start from the same step, or their collective ops would never meet."""
    gather = tf.function(lambda: strategy.run(lambda: tf.distribute.get_replica_context().all_gather(
        tf.reshape(iterations, [1]), 0)))
    steps = sorted({int(s) for s in strategy.experimental_local_results(gather())[0].numpy()})
    if len(steps) > 1:
        raise RunError(f"the workers start from different global steps {steps}: every worker must read the "
                       f"chief's run folder {run_dir} (put it on a shared file system)")


# ---- callbacks ---------------------------------------------------------------------------
def run_callbacks(config, model, lr_setter, run_dir, chief, extra=()):
    """The run's Keras callbacks; only the chief has the writers (metrics, TensorBoard). The
    gate summary, learning rate and ε join the epoch's logs before the writers see them."""
    items = [cbs.GateMonitor(), lr_setter]
    if gates_of(model):
        items.append(cbs.EpsilonScheduler(config.model.epsilon_schedule, config.model.epsilon))
    items += [*extra, cbs.EpochLogger()]
    if chief:
        items += [cbs.MetricsWriter(os.path.join(run_dir, run_folder.METRICS_FILE)),
                  keras.callbacks.TensorBoard(run_dir, write_graph=False, update_freq="epoch")]
    return keras.callbacks.CallbackList(items, model=model)


# ---- checkpoints -------------------------------------------------------------------------
def check_kept_steps(train, run_dir, last_end, steps_per_epoch):
    """Refuse train.keep_checkpoint_steps this run will not write: a step that is no epoch end
    after `last_end` (the step of the last epoch end), unless kept/ already holds it."""
    kept = run_folder.steps_in(os.path.join(run_dir, run_folder.KEPT_FOLDER))
    refused = sorted(s for s in train.keep_checkpoint_steps
                     if (s <= last_end or (s - last_end) % steps_per_epoch) and s not in kept)
    if refused:
        ends = [last_end + k * steps_per_epoch for k in (1, 2)]
        raise RunError(f"train.keep_checkpoint_steps {refused} are not checkpoints this run will write: it "
                       f"writes one at the end of each epoch, every {steps_per_epoch} steps, the next at "
                       f"global steps {ends[0]}, {ends[1]}, ... (a step already passed is kept only if "
                       f"{run_folder.KEPT_FOLDER}/ holds it)")


class Trainer:
    """The loop of one run, over the pieces it assembles: the model and optimizer
    (`build_model`), the compiled step (`train_step.compile_train_step`), the training stream
    (`distributed_stream`), the checkpoints (`checkpoints.RunCheckpoints`), the workers'
    agreement (`check_workers_agree`) and the callbacks (`run_callbacks`)."""

    def __init__(self, config, run_dir, source=None, strategy=None):
        self.config, self.run_dir = config, run_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.source = source or data.get_source(config.data.name, config.data.dir, **config.data.options)
        self.chief = distribute.is_chief(self.strategy)
        train = config.train
        self.global_batch = global_batch_size(train, self.strategy.num_replicas_in_sync)
        self.steps_per_epoch = steps_per_epoch(train, self.source)
        policy = AdaptiveLearningRate(train.lr_schedule, train.lr_restart_schedule,
                                      train.lr_restart_threshold, train.lr_restart_last_k)
        with self.strategy.scope():
            self.model, self.optimizer = build_model(config, self.source, policy.lr_at(1))
            self.data_seed = data_seed_variable(train)
        self.state = TrainingState()
        self.checkpoints = checkpoints.RunCheckpoints(run_dir, train, self.chief, model=self.model,
                                                      optimizer=self.optimizer, state=self.state,
                                                      data_seed=self.data_seed)
        self.lr_setter = cbs.LearningRateSetter(policy, self.optimizer)
        # (iterator, stop) -> the step's statistics; benchmarks time it
        self.train_step = compile_train_step(self.model, self.optimizer, config, self.strategy, self.global_batch)
        self.evaluate = Evaluator(self.model, jit_compile=train.jit_compile)

    def distributed_dataset(self):
        """The training stream from the current global step on."""
        return distributed_stream(self.strategy, self.source, self.global_batch, int(self.data_seed.numpy()),
                                  self.global_step)

    def validation_errors(self, stop=None):
        """Errors and cost over the validation set (its first train.eval_batches batches, if set)."""
        replicas = self.strategy.num_replicas_in_sync
        batches = self.source.eval_dataset(config_lib.eval_batch_size(self.config.train, replicas))
        return self.evaluate(batches, max_batches=self.config.train.eval_batches, stop=stop)

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def global_step(self):
        return int(self.optimizer.iterations.numpy())

    def resume(self, path):
        """Restore a full checkpoint of this run (weights, optimizer, step, schedules, data seed)."""
        self.checkpoints.restore(path)
        if "lr" in self.state.values:
            self.lr_setter.load_state(self.state.values["lr"])

    def load_variables(self, path):
        """Every variable of another checkpoint (weights, statistics, gate averages, momentum,
        global step), but a new run: epoch 1, schedules from their start."""
        checkpoints.restore_model(self.model, path, exact=False)
        tf.train.Checkpoint(optimizer=self.optimizer).read(path).expect_partial()

    def save(self):
        """Checkpoint the current state as model-<global step> (`checkpoints.RunCheckpoints`);
        returns its path (None off the chief)."""
        self.state.values["lr"] = self.lr_setter.state()
        with self._writing():
            return self.checkpoints.save(self.global_step)

    @contextlib.contextmanager
    def _writing(self):
        """A failed write into the run folder (checkpoint, metrics.jsonl, TensorBoard events) as
        RunError: it names the step, the reason and the checkpoint to resume from."""
        try:
            yield
        except (OSError, tf.errors.OpError) as err:
            raise RunError(self._write_failure(err)) from None

    def _write_failure(self, err):
        full = getattr(err, "errno", None) == errno.ENOSPC or "no space left" in str(err).lower()
        return (f"writing to {self.run_dir} failed at global step {self.global_step}"
                f"{' because the disk is full' if full else ''}: {err}. The last complete checkpoint is "
                f"{checkpoints.newest(self.run_dir)}; once the problem is fixed, train into "
                f"the same run folder again to resume")

    # ---- the loop ----------------------------------------------------------------------
    def fit(self, progress=True, extra_callbacks=()):
        """Train from the current state to max_epoch, evaluating and checkpointing each epoch.

        SIGINT (Ctrl-C) or SIGTERM, during training or evaluation, keeps a checkpoint of the
        step reached and raises Interrupted; a non-finite loss raises RunError and saves nothing.
        """
        if self.strategy.cluster_resolver is not None:
            check_workers_agree(self.strategy, self.optimizer.iterations, self.run_dir)
        callbacks = run_callbacks(self.config, self.model, self.lr_setter, self.run_dir, self.chief, extra_callbacks)
        iterator = iter(self.distributed_dataset())
        self._log_start()
        with self._writing():
            callbacks.on_train_begin()
        with StopRequest() as stop:
            for epoch in range(self.state.values["epoch"] + 1, self.config.train.max_epoch + 1):
                callbacks.on_epoch_begin(epoch)
                self._train_epoch(epoch, iterator, callbacks, stop, progress)
                self._end_epoch(epoch, callbacks, stop)
        with self._writing():
            callbacks.on_train_end()
        return self.model

    def start(self, latest=None, load=None):
        """Restore the run's `latest` checkpoint, or `load` another's variables (refused when its
        weights do not fit), and check that every kept step is a checkpoint this run writes: an
        epoch end after its last one, or one kept/ already holds. Writes nothing."""
        if latest:
            self.resume(latest)
        elif load:
            self.load_variables(load)
        last_end = self.global_step - self.state.values["step_in_epoch"]
        check_kept_steps(self.config.train, self.run_dir, last_end, self.steps_per_epoch)

    def position(self):
        """Where the run stands, in the log's words: "step 2 of epoch 3" or "the end of epoch 2"."""
        state = self.state.values
        return (f"step {state['step_in_epoch']} of epoch {state['epoch'] + 1}" if state["step_in_epoch"]
                else f"the end of epoch {state['epoch']}")

    def finished(self):
        """Whether the run has trained its max_epoch epochs; if so, says so and how to extend it."""
        epoch, max_epoch = self.state.values["epoch"], self.config.train.max_epoch
        if epoch < max_epoch:
            return False
        logger.info("%s is finished: its last checkpoint ends epoch %d (global step %d) and train.max_epoch is %d; "
                    "nothing was written. To train it further, run again with a higher max epoch (--max-epoch %d)",
                    self.run_dir, epoch, self.global_step, max_epoch, epoch + 1)
        return True

    def _log_start(self):
        state = self.state.values
        logger.info("training %s (%s, %d images per step) epochs %d..%d, %d steps each, from global step %d%s",
                    self.model.name, distribute.describe(self.strategy), self.global_batch, state["epoch"] + 1,
                    self.config.train.max_epoch, self.steps_per_epoch, self.global_step,
                    f" (step {state['step_in_epoch']} of epoch {state['epoch'] + 1})" if state["step_in_epoch"] else "")

    def _train_epoch(self, epoch, iterator, callbacks, stop, progress):
        """The epoch's remaining training steps; their metric sums go into the run state."""
        state = self.state.values
        bar = console.epoch_progress(epoch, self.config.train.max_epoch, self.steps_per_epoch, self.global_batch,
                                     state["step_in_epoch"], show=progress)
        for step in range(state["step_in_epoch"], self.steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            values = {k: float(v) for k, v in self.train_step(iterator, stop.tensor()).items()}
            stopping = values.pop("stop_requests") > 0
            if not math.isfinite(values["cost"]):
                raise RunError(f"the loss became {values['cost']} at global step {self.global_step} (step {step + 1} "
                               f"of epoch {epoch}); nothing was saved after it: the last good checkpoint is "
                               f"{checkpoints.newest(self.run_dir)}")
            for key, value in values.items():
                state["sums"][key] = state["sums"].get(key, 0.0) + value
            state["step_in_epoch"] = step + 1
            callbacks.on_train_batch_end(step, values)
            if (step + 1) % self.config.train.log_every == 0 or step + 1 == self.steps_per_epoch:
                bar.update(step + 1, [(k, values[k]) for k in ("cost", "train_error", "discarded_cnt") if k in values])
            if stopping:
                bar.end_line()
                raise self._stop(stop.signal or "another worker", f"step {step + 1} of epoch {epoch}")

    def _end_epoch(self, epoch, callbacks, stop):
        """Evaluate, hand the epoch's logs to the callbacks (which add the gate summary, learning
        rate and ε), checkpoint."""
        # Evaluation is not collective, so only a lone process may cut it short: a worker of a
        # cluster acts on a signal at the next training step, with the others.
        alone = self.strategy.cluster_resolver is None
        try:
            logs = self.validation_errors(stop=stop if alone else None)
        except Interrupted:
            raise self._stop(stop.signal, f"the evaluation after epoch {epoch}") from None
        state = self.state.values
        logs.update({key: value / self.steps_per_epoch for key, value in state["sums"].items()})
        logs["global_step"] = self.global_step
        with self._writing():  # metrics.jsonl, the TensorBoard events
            callbacks.on_epoch_end(epoch, logs)
        state.update(epoch=epoch, step_in_epoch=0, sums={})
        path = self.save()
        if path:
            logger.info("saved %s", path)

    def _stop(self, reason, where):
        """Save the current step and return the Interrupted error that ends the run."""
        saved = self.save() or "the chief's checkpoint"
        return Interrupted(f"stopped by {reason} at global step {self.global_step} ({where}) after saving "
                           f"{saved}; train into the same run folder again to continue")


def _start_point(run_dir, load, resume):
    """(the checkpoint a run starts from: its own newest complete one (resume), `load`'s (a new
    run), or None; a note when the run folder's `checkpoint` file disagrees with its files)."""
    if load:
        run_folder.check_checkpoint(load)
    latest, note = checkpoints.find_latest(run_dir)
    if resume and load:
        raise RunError("`resume` continues the run folder's own latest checkpoint; `load` starts a new run from "
                       "another one: give only one of them")
    if resume and not latest:
        raise RunError(f"`resume`: {run_dir} " + ("has no checkpoint to resume from (no complete model-<step>)"
                                                  if os.path.isdir(run_dir) else "does not exist")
                       + "; check the `run_dir`, or drop `resume` to start a new run")
    if latest and load:
        raise RunError(f"{run_dir} already has checkpoints (latest {latest}); it resumes by itself. "
                       f"Drop `load`, or choose another `run_dir` to start from {load}")
    return latest, note


def check_fits_in_memory(config, source, replicas):
    """Refuse a network whose training cannot fit in this machine's memory, before it is built
    (a huge -n would hang building the graph)."""
    architecture = structures.architecture_for(config.model, source.family, source.image_shape)
    batch = config_lib.per_replica_batch(config.train, replicas)
    needed = structures.training_bytes(architecture, source.image_shape[0], batch)
    available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > available:
        raise ConfigError(f"the network of {architecture.gated_blocks} residual blocks needs at least "
                          f"{needed / 2 ** 30:,.1f} GiB to train on batches of {batch} images (an estimate from "
                          f"its architecture: kernels, their gradients and momentum, and every convolution's input), "
                          f"more than the {available / 2 ** 30:,.1f} GiB of memory of this machine; choose a "
                          f"smaller network or batch")


def train_and_evaluate(config, run_dir, load=None, resume=False, strategy=None, progress=True, extra_callbacks=()):
    """Train a config into run_dir: resume from its latest checkpoint, else start from `load` or scratch.

    resume=True insists on a checkpoint to resume from. Everything is checked before the run
    folder is created or written (a start that fails leaves the working folder as it found
    it): that a run already in run_dir is the same run (`run_folder.same_run`), the dataset,
    the memory the network needs, the network built, `load`'s weights and the kept steps. A
    finished run writes nothing. In a multi-worker run only the chief writes run_dir.
    """
    setup_logging(None)  # the console only, until the run folder is written
    if config.data.dir:  # absolute in config.yaml, so that compressModel finds the data from any folder
        config = config_lib.replace(config, **{"data.dir": files.resolve(config.data.dir)})
    saved = run_folder.same_run(run_dir, config)
    if saved and config.data.dir is None:  # no data folder given: the one the run was started with
        config = config_lib.replace(config, **{"data.dir": saved.data.dir})
    source = data.get_source(config.data.name, config.data.dir, **config.data.options)
    latest, note = _start_point(run_dir, load, resume)
    strategy = strategy or tf.distribute.get_strategy()
    check_fits_in_memory(config, source, strategy.num_replicas_in_sync)
    runtime.configure(config.train)
    trainer = Trainer(config, run_dir, source=source, strategy=strategy)
    trainer.start(latest, load)
    chief = distribute.is_chief(strategy)
    with run_folder.locked(run_dir, "training") if chief else contextlib.nullcontext():
        # Again under the lock: a run that held the folder until now may have saved since.
        now, note = _start_point(run_dir, load, resume)
        if now != latest:
            latest = now
            trainer.start(latest, load)
        if trainer.finished():  # under the lock, whose sweep removes what a killed writer left
            return trainer.model
        run_folder.prepare(run_dir, config, write=chief)
        setup_logging(run_dir if chief else None)
        if note:
            logger.warning("%s", note)
        if saved and saved.data.dir != config.data.dir:
            logger.info("the data now comes from %s: where it is is not part of the run, so it resumes; the run's "
                        "config.yaml, written once, keeps %s (compressModel.py reads that folder unless given "
                        "--data)", config.data.dir, saved.data.dir)
        if latest:
            logger.info("resumed from %s at global step %d, %s", latest, trainer.global_step, trainer.position())
        elif load:
            logger.info("loaded the variables of %s (global step %d); a new run starts at epoch 1", load,
                        trainer.global_step)
        try:
            return trainer.fit(progress=progress, extra_callbacks=extra_callbacks)
        except RunError as err:
            logger.debug("%s", err)  # into log.log only: the caller shows it on the console
            raise
