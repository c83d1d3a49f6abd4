"""Command lines of compressModel.py and the *CompressedResnet.py scripts (SPEC §7, §8).

TensorFlow is imported only after the flags are parsed, because `--gpu` must set
CUDA_VISIBLE_DEVICES before TensorFlow initialises.
"""
import argparse
import sys

from epsilon_resnet import distribute
from epsilon_resnet.cli import fail


def compress_main(argv=None):
    parser = argparse.ArgumentParser(description="Compress an ε-ResNet run at a step: drop the blocks whose "
                                                 "is_discarded average reached 1, check the result is lossless.")
    parser.add_argument("--dir", required=True, help="the run folder train_log.<output>/, or a folder holding one")
    parser.add_argument("--step", type=int, required=True, help="global step of the checkpoint model-<step>")
    parser.add_argument("--check-batches", type=int, help="compare the networks on the first K validation "
                                                          "batches only (default: the whole validation set)")
    parser.add_argument("--strict", action="store_true", help="keep a discarded block whose gate opens on "
                                                              "validation data (default: warn)")
    parser.add_argument("--data", help="dataset folder (default: the run's data.dir)")
    args = parser.parse_args(argv)
    if args.check_batches is not None and args.check_batches < 1:
        parser.error(f"--check-batches must be >= 1, got {args.check_batches}")
    from epsilon_resnet import compression, training
    from epsilon_resnet.config import ConfigError

    try:
        cfg_path, cfg = compression.compress_run(args.dir, args.step, check_batches=args.check_batches,
                                                 strict=args.strict, data_dir=args.data)
    except (compression.CompressionError, ConfigError, training.RunError, FileNotFoundError, ValueError) as err:
        fail(err)
    for warning in cfg["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary(cfg_path, cfg))


def summary(cfg_path, cfg):
    """What compressModel did, in a few lines."""
    full, small, check = cfg["cost"]["full"], cfg["cost"]["compressed"], cfg["check"]
    blocks = sum(cfg["stage_units"]) - cfg["first_block_kept"].count(False) + len(cfg["discarded_blocks"])
    return "\n".join([
        f"step {cfg['step']} (epoch {cfg['epoch']}), ε = {cfg['epsilon']:g}: discarded "
        f"{len(cfg['discarded_blocks'])} of {blocks} blocks {cfg['discarded_blocks']}",
        f"kept structure: stage_units {cfg['stage_units']}, first_block_kept {cfg['first_block_kept']}",
        f"parameters {full['params']:,} -> {small['params']:,} ({small['params'] / full['params']:.1%}), "
        f"MACs per image {full['macs']:,} -> {small['macs']:,} ({small['macs'] / full['macs']:.1%})",
        f"check on {check['images']} validation images: "
        f"max |logit difference| {check['max_abs_logit_difference']:.3g}, "
        f"error gated {check['gated_error']:.4f}, compressed {check['compressed_error']:.4f}",
        f"wrote {cfg_path}",
    ])


def evaluation_parser(description, data_help="dataset folder (default: the one in the .cfg)"):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", required=True, help="compressed_model_<step>.cfg written by compressModel.py")
    parser.add_argument("--gpu", help="comma-separated GPUs to use, e.g. 0")
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--export", help="also write the network as a TensorFlow SavedModel into this new folder")
    return parser


def run_evaluation(args, datasets):
    """Build the .cfg's network, load its weights, evaluate on the whole validation set, maybe export it.

    datasets: the .cfg datasets this script accepts. Prints Error (and Top-5 error for
    ImageNet); user errors exit 1.
    """
    distribute.select_devices(args.gpu)
    from epsilon_resnet import compression, data

    try:
        spec = compression.read_cfg(args.cfg)
        if spec.dataset not in datasets:
            raise compression.CompressionError(f"{args.cfg} is a compressed {spec.dataset} network; this command "
                                               f"evaluates {' or '.join(datasets)}")
        if args.export:
            compression.check_export_target(args.export)
        model = compression.load_compressed(spec)
        source = data.get_source(spec.dataset, args.data or spec.data_dir, **spec.data_options)
        compression.check_source_fits(spec, source)
        errors = compression.evaluate(model, source.eval_dataset(spec.eval_batch_size))
        if spec.dataset in compression.IMAGENET_DATASETS:
            print(f"Top-1 error: {errors['val_error']}\nTop-5 error: {errors['val_error_top5']}")
        else:
            print(f"Error: {errors['val_error']}")
        if args.export:
            print(f"exported the network to {compression.export_saved_model(model, args.export)}: "
                  f"m = tf.saved_model.load(DIR); m.serve(images) -> logits")
    except (compression.CompressionError, FileNotFoundError, ValueError) as err:
        fail(err)


def cifar_compressed_main(argv=None):
    parser = evaluation_parser("Evaluate a compressed ε-ResNet on the CIFAR-10/100 test set.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cifar10", action="store_true", help="the .cfg must be a CIFAR-10 network")
    which.add_argument("--cifar100", action="store_true", help="the .cfg must be a CIFAR-100 network")
    args = parser.parse_args(argv)
    datasets = ("cifar10",) if args.cifar10 else ("cifar100",) if args.cifar100 else ("cifar10", "cifar100")
    run_evaluation(args, datasets)


def svhn_compressed_main(argv=None):
    args = evaluation_parser("Evaluate a compressed ε-ResNet on the SVHN test set.").parse_args(argv)
    run_evaluation(args, ("svhn",))


def imagenet_compressed_main(argv=None):
    parser = evaluation_parser("Evaluate a compressed ε-ResNet on the ImageNet validation set (top-1, top-5).",
                               data_help="ImageNet folder (default: the one in the .cfg)")
    run_evaluation(parser.parse_args(argv), ("imagenet", "fake-imagenet"))
