"""Scoring saved networks on their validation set: a training checkpoint with its run's
config (the training scripts' --eval), and a compressed network from its .cfg (the
*CompressedResnet.py scripts). Nothing is written: the folders are only read.
"""
from epsilon_resnet import checkpoints, compressed_cfg, compression, data
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
        raise WeightsDoNotFit(f"{path} is not a checkpoint of this network (ResNet-{depth}, "
                              f"gated={config.model.gated}): {err}") from None
    batch = config.train.eval_batch_size or EVAL_BATCH_SIZE
    errors = Evaluator(model)(source.eval_dataset(batch), config.train.eval_batches)
    epsilon = epsilon_of(model)
    what = (f"{path}: ResNet-{depth}{'' if epsilon is None else f', ε {epsilon:g}'} on "
            f"{source.num_eval} {config.data.name} validation images in batches of {batch}")
    return errors, what


def load_compressed_for(cfg_path, datasets, size=None):
    """(CompressedSpec, network) of a .cfg, which must be of one of `datasets` and, when `size`
    is given, pruned from a network of that n (stages of n blocks each)."""
    spec = compressed_cfg.read(cfg_path)
    if spec.dataset not in datasets:
        raise CompressionError(f"{cfg_path} is a compressed {spec.dataset} network; `datasets` are "
                               f"{' or '.join(datasets)}")
    units = spec.architecture.stage_units
    if size is not None and units != cifar_resnet(size).stage_units:
        pruned_from = f"n = {units[0]}" if len(set(units)) == 1 else f"{list(units)} blocks per stage"
        raise CompressionError(f"{cfg_path} was pruned from a network with {pruned_from}, not `size` {size}")
    return spec, compression.load_compressed(spec)


def source_of(spec, data_dir=None):
    """The data source of a compressed network's .cfg (data_dir: instead of the .cfg's), checked to fit it."""
    source = data.get_source(spec.dataset, data_dir or spec.data_dir, **spec.data_options)
    compressed_cfg.check_source_fits(spec, source)
    return source


def score_compressed(spec, model, source):
    """The errors of a compressed network on its source's whole validation set."""
    return Evaluator(model)(source.eval_dataset(spec.eval_batch_size))
