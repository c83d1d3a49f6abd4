"""Removing the blocks whose gates are closed at inference, for any functional Keras model with
StrictIdentity gates (`without_closed_blocks`) and for this package's ResNets (compression.py).

A block goes the same way in both: a gate closed at inference (`closed_gates`) gives way to
its shortcut, so the layers of its residual branch fall out of the graph, and an open gate to
a plain Add; every remaining layer keeps its name and takes the weights of the gated model's
layer of that name (`copy_weights`). The result has no gates and computes the gated model's
inference logits (docs/tensorflow.md, "The gate at inference").

The two differ in how the graph is rebuilt, and must: `without_closed_blocks` clones the
gated graph, which only a gated model in memory can give, while compressModel.py's .cfg must
let the *CompressedResnet.py scripts rebuild the compressed network from the .cfg alone. So
compression.compress_model builds it from the network's Architecture with the closed blocks
removed; the builder names every layer after its block, so that network has exactly the
clone's layers (tests/test_pruning.py holds both to the same layers and logits).
"""
import keras

from epsilon_resnet.errors import CompressionError
from epsilon_resnet.gate import StrictIdentity, gates_of


def closed_gates(model):
    """The model's gates closed at inference, in network order: their blocks are removed."""
    return [g for g in gates_of(model) if g.closed_at_inference()]


def copy_weights(source, target):
    """Assign every weight of `target` from the layer of the same name in `source`, which must
    be of the same type with weights of the same shapes."""
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            origin = source.get_layer(layer.name)
        except ValueError:
            raise CompressionError(f"layer {layer.name!r} of {target.name} has no layer of that name in "
                                   f"{source.name} to take its weights from") from None
        if type(origin) is not type(layer) or len(origin.weights) != len(layer.weights):
            raise CompressionError(f"layer {layer.name!r} ({type(layer).__name__}) does not match its source "
                                   f"({type(origin).__name__}, {len(origin.weights)} weights)")
        for weight, value in zip(layer.weights, origin.weights):
            if tuple(value.shape) != tuple(weight.shape):
                raise CompressionError(f"layer {layer.name!r}: weight {weight.name!r} has shape "
                                       f"{tuple(weight.shape)} but its source has {tuple(value.shape)}")
            weight.assign(value)


def without_closed_blocks(model):
    """A plain functional model without the closed blocks' branches and without gates, its
    weights copied from `model` (a functional model; its gates called on [shortcut, F])."""
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(f"without_closed_blocks takes a functional Keras model, got {type(model).__name__}")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model) and gates_of(layer)]
    if nested:
        raise ValueError(f"the gates of nested model(s) {nested} are not reached: build the model flat")

    closed = {g.name for g in closed_gates(model)}

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
    copy_weights(model, plain)
    return plain
