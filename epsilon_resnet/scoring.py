"""Scoring saved networks on their validation set: a training checkpoint with its run's
config (the training scripts' --eval), and a compressed network from its .cfg (the
*CompressedResnet.py scripts). Each returns the lines a command prints; nothing is written
but the evaluation.json asked for.
"""
import dataclasses
import os

from epsilon_resnet import checkpoints, compressed_cfg, data, run_folder
from epsilon_resnet.errors import CompressionError, WeightsDoNotFit
from epsilon_resnet.evaluation import Evaluator
from epsilon_resnet.gate import epsilon_of
from epsilon_resnet.structures import cifar_resnet

# The original's --eval set BATCH_SIZE = 128 whatever the GPUs (docs/original.md §10); training's
# validation batch is another (config.eval_batch_size).
EVAL_BATCH_SIZE = 128


def score_checkpoint(config, path):
    """(errors, a line naming the network, the data and the batch) of the config's network with
    a checkpoint's weights, in batches of train.eval_batch_size, or when it is null of 128 as the
    original's --eval; under the per-batch gate the batch decides which blocks close."""
    depth = config.model.depth or 6 * config.model.n + 2  # ImageNet's, or CIFAR/SVHN's 6n+2
    try:
        source, model = checkpoints.load_network(config, path)
    except WeightsDoNotFit as err:
        size = "`model.depth`" if config.model.depth else "`model.n`"
        raise WeightsDoNotFit(f"{path} is not a checkpoint of this network (ResNet-{depth}, "
                              f"gated={config.model.gated}): {err}; {size} must be the run's") from None
    batch = config.train.eval_batch_size or EVAL_BATCH_SIZE
    errors = Evaluator(model)(source.eval_dataset(batch), config.train.eval_batches)
    epsilon = epsilon_of(model)
    what = (f"{path}: ResNet-{depth}{'' if epsilon is None else f', ε {epsilon:g}'} on "
            f"{source.num_eval} {config.data.name} validation images in batches of {batch}")
    return errors, what


def checkpoint_report(config, path):
    """The lines --eval prints: the network, its top-1 (and top-5) error and its cost."""
    errors, what = score_checkpoint(config, path)
    top5 = [f"top-5 error: {errors['val_error_top5']:.6f}"] if "val_error_top5" in errors else []
    return [what, f"top-1 error: {errors['val_error']:.6f}", *top5, f"val_cost: {errors['val_cost']:.6f}"]


@dataclasses.dataclass
class CompressedEvaluation:
    """A compressed network scored on its validation set, and the lines to print about it."""
    spec: compressed_cfg.CompressedSpec
    model: object  # the keras.Model
    source: object  # its data source (data.source.DataSource)
    errors: dict
    lines: list


def evaluate_compressed(cfg_path, datasets, size=None, data_dir=None, output=None):
    """Score a .cfg's network on its whole validation set (top-1, and top-5 for ImageNet); with
    `output`, also write the errors to train_log.<output>/evaluation.json (a new file)."""
    spec, model = load_compressed_for(cfg_path, datasets, size)
    source = source_of(spec, data_dir)
    errors = Evaluator(model)(source.eval_dataset(spec.eval_batch_size))
    if data.family_of(spec.dataset) == "imagenet":
        lines = [f"Top-1 error: {errors['val_error']}", f"Top-5 error: {errors['val_error_top5']}"]
    else:
        lines = [f"Error: {errors['val_error']}"]
    if output:
        record = {"cfg": os.path.abspath(cfg_path), **errors}
        lines.append(f"wrote {run_folder.write_evaluation(output, record)}")
    return CompressedEvaluation(spec, model, source, errors, lines)


def load_compressed_for(cfg_path, datasets, size=None):
    """(CompressedSpec, network) of a .cfg, which must be of one of `datasets` (what the command
    evaluates) and, when `size` is given, pruned from a network of that n (stages of n blocks each)."""
    spec = compressed_cfg.read(cfg_path)
    if spec.dataset not in datasets:
        raise CompressionError(f"{cfg_path} is a compressed {spec.dataset} network; this command evaluates "
                               f"{' or '.join(datasets)}")
    units = spec.architecture.stage_units
    if size is not None and units != cifar_resnet(size).stage_units:
        pruned_from = f"n = {units[0]}" if len(set(units)) == 1 else f"{list(units)} blocks per stage"
        raise CompressionError(f"{cfg_path} was pruned from a network with {pruned_from}, not `size` {size}")
    return spec, checkpoints.load_compressed(spec)


def source_of(spec, data_dir=None):
    """The data source of a compressed network's .cfg (data_dir: instead of the .cfg's), checked to fit it."""
    source = data.get_source(spec.dataset, data_dir or spec.data_dir, **spec.data_options)
    compressed_cfg.check_source_fits(spec, source)
    return source
