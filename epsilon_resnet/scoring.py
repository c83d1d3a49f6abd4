"""Scoring saved networks on their validation set: a training checkpoint with its run's
config (imagenetEpsilonResnet.py --eval), and a compressed network from its .cfg (the
*CompressedResnet.py scripts). Nothing is written: the folders are only read.
"""
from epsilon_resnet import checkpoints, compressed_cfg, compression, data
from epsilon_resnet.errors import CompressionError, WeightsDoNotFit
from epsilon_resnet.evaluation import Evaluator
from epsilon_resnet.gate import epsilon_of
from epsilon_resnet.training import eval_batch_size


def score_checkpoint(config, path, replicas=1):
    """(errors, a line naming the network and the data) of the config's network with a
    checkpoint's weights; a null eval batch is the training batch per GPU of `replicas` GPUs,
    as the original's --eval."""
    try:
        source, model = checkpoints.load_network(config, path)
    except WeightsDoNotFit as err:
        raise WeightsDoNotFit(f"{path} is not a checkpoint of this network (ResNet-{config.model.depth}, "
                              f"gated={config.model.gated}): {err}") from None
    errors = Evaluator(model)(source.eval_dataset(eval_batch_size(config.train, replicas)), config.train.eval_batches)
    epsilon = epsilon_of(model)
    what = (f"{path}: ResNet-{config.model.depth}{'' if epsilon is None else f', ε {epsilon:g}'} on "
            f"{source.num_eval} {config.data.name} validation images")
    return errors, what


def load_compressed_for(cfg_path, datasets, size=None):
    """(CompressedSpec, network) of a .cfg, which must be of one of `datasets` and, when `size`
    is given, pruned from a network of that n."""
    spec = compressed_cfg.read(cfg_path)
    if spec.dataset not in datasets:
        raise CompressionError(f"{cfg_path} is a compressed {spec.dataset} network; `datasets` are "
                               f"{' or '.join(datasets)}")
    if size is not None and size != spec.size:
        raise CompressionError(f"{cfg_path} was pruned from a network with n = {spec.size}, not `size` {size}")
    return spec, compression.load_compressed(spec)


def source_of(spec, data_dir=None):
    """The data source of a compressed network's .cfg (data_dir: instead of the .cfg's), checked to fit it."""
    source = data.get_source(spec.dataset, data_dir or spec.data_dir, **spec.data_options)
    compressed_cfg.check_source_fits(spec, source)
    return source


def score_compressed(spec, model, source):
    """The errors of a compressed network on its source's whole validation set."""
    return Evaluator(model)(source.eval_dataset(spec.eval_batch_size))
