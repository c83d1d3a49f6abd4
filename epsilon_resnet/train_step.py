"""The compiled training step of an ε-ResNet run: on every replica the losses, weight decay,
(under float16) loss scaling and the SGD update, with the step's statistics summed over the
replicas. It runs unchanged under the default strategy and the mirrored ones."""
import tensorflow as tf

from epsilon_resnet import losses
from epsilon_resnet.gate import discarded_count, gates_of
from epsilon_resnet.networks import kernels


def loss_scaled(train):
    """Whether the loss is scaled: under float16 only, whose range small gradients fall out of;
    bfloat16 has float32's range."""
    return train.precision == "mixed_float16"


def replica_step(model, optimizer, config, global_batch, images, labels, stop):
    """One step on this replica's batch; its statistics are this replica's share, so their
    sum over the replicas is the step's value."""
    train, replicas = config.train, tf.distribute.get_replica_context().num_replicas_in_sync
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss, stats = losses.classification_losses(outputs, labels, global_batch, config.model.side_loss_weight)
        coefficient = losses.weight_decay_coefficient(optimizer.iterations, train.weight_decay,
                                                      train.weight_decay_rate, train.weight_decay_steps)
        wd_cost = losses.weight_decay_cost(kernels(model), coefficient)
        loss += tf.nn.scale_regularization_loss(wd_cost)
        scaled = optimizer.scale_loss(loss) if loss_scaled(train) else loss
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
    stats.update(cost=loss, wd_cost=wd_cost / replicas, stop_requests=tf.cast(stop, tf.float32))
    gates = gates_of(model)
    if gates:  # identical on every replica (global, or replica 0's per replica): sum, then divide
        stats["discarded_cnt"] = discarded_count(gates) / replicas
    return stats


def compile_train_step(model, optimizer, config, strategy, global_batch):
    """The step as one tf.function (iterator, stop) -> {statistic: value over the global batch}.

    XLA compiles the per-replica step only on one device: under a strategy the gate's
    cross-replica all_gather does not compile on CPU replicas (docs/tensorflow.md).
    """
    def step_on_replica(images, labels, stop):
        return replica_step(model, optimizer, config, global_batch, images, labels, stop)

    jit = config.train.jit_compile and strategy.num_replicas_in_sync == 1
    on_replica = tf.function(step_on_replica, jit_compile=True) if jit else step_on_replica

    @tf.function
    def step(iterator, stop):
        images, labels = next(iterator)
        per_replica = strategy.run(on_replica, (images, labels, stop))
        return {k: strategy.reduce("SUM", v, axis=None) for k, v in per_replica.items()}
    return step
