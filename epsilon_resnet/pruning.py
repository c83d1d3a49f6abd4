"""Compression for any functional Keras model with StrictIdentity gates, not only this package's ResNets.

`without_closed_blocks(model)` rebuilds the model's graph with every gate replaced: a gate
closed at inference (gate.StrictIdentity.closed_at_inference) by its shortcut, so the
layers of its residual branch fall out of the graph, and an open one by a plain Add. The
result has no gates and computes the gated model's inference logits (docs/tensorflow.md,
"The gate at inference").
"""
import keras

from epsilon_resnet.gate import StrictIdentity, gates_of


def without_closed_blocks(model):
    """A plain functional model without the closed blocks' branches and without gates, its
    weights copied from `model` (a functional model; its gates called on [shortcut, F])."""
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(f"without_closed_blocks takes a functional Keras model, got {type(model).__name__}")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model) and gates_of(layer)]
    if nested:
        raise ValueError(f"the gates of nested model(s) {nested} are not reached: build the model flat")

    closed = {g.name for g in gates_of(model) if g.closed_at_inference()}

    def call(layer, *args, **kwargs):  # layer: the clone, so its decision is looked up by name
        if not isinstance(layer, StrictIdentity):
            return layer(*args, **kwargs)
        inputs = args[0]
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"gate {layer.name!r} is called on F alone: only a gate called on [shortcut, F] "
                             f"can be replaced by its shortcut")
        shortcut, residual = inputs
        if layer.name in closed:
            return shortcut
        return keras.layers.Add(name=f"{layer.name}_add")([shortcut, residual])

    plain = keras.models.clone_model(model, call_function=call)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain
