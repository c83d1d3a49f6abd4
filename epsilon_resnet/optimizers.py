"""TF1's MomentumOptimizer as a Keras 3 optimizer (docs/original.md §4).

The original trained with tf.train.MomentumOptimizer, whose accumulator does not carry the
learning rate:

    a ← μ·a + g;   w ← w − lr·a                 (use_nesterov: w ← w − lr·(g + μ·a))

Keras' SGD keeps v ← μ·v − lr·g instead. The two agree only while lr is constant: when an
ε-ResNet restart lifts lr from 0.0002 to 0.1, TF1's rule applies 0.1 to the whole
accumulated momentum at once, SGD only to the new gradients. Restarts are the central event
of ε-ResNet training, so the original's rule is kept.
"""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="epsilon_resnet")
class TF1Momentum(keras.optimizers.Optimizer):
    """Momentum SGD with TF1 MomentumOptimizer's update rule.

    Built with a float learning rate, `optimizer.learning_rate = x` changes it between steps
    (the learning-rate callback does that); it works inside tf.function, under a
    distribution strategy and wrapped in keras.optimizers.LossScaleOptimizer, like any
    Keras optimizer. Other keyword arguments (clipnorm, ...) are the base Optimizer's.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, name="TF1Momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.accumulators = self.add_optimizer_variables(variables, "accumulator")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        accumulator = self.accumulators[self._get_variable_index(variable)]
        updated = ops.add(ops.multiply(accumulator, momentum), gradient)
        self.assign(accumulator, updated)
        step = ops.add(gradient, ops.multiply(updated, momentum)) if self.nesterov else updated
        self.assign_sub(variable, ops.multiply(step, lr))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}
