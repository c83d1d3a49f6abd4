"""Command lines of the training scripts, with the original's flags (SPEC §7).

TensorFlow is imported only after the flags are parsed, because `--gpu` must set
CUDA_VISIBLE_DEVICES before TensorFlow initialises.
"""
import argparse
import sys

from epsilon_resnet import distribute


def training_parser(description):
    """The flags every training script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gpu", help="comma-separated GPUs to use, e.g. 0,1,2,3; their count is the number "
                                      "of replicas (the global batch is split across them)")
    parser.add_argument("-e", "--epsilon", type=float, help="ε of the strict-identity gates")
    parser.add_argument("-o", "--output", help="run name: everything goes to train_log.<output>/")
    parser.add_argument("--load", help="checkpoint to start from, e.g. train_log.x/model-39000")
    parser.add_argument("--data", help="folder holding the dataset files (nothing is downloaded)")
    parser.add_argument("--config", help="YAML config to use instead of the shipped configs/<dataset>.yaml")
    parser.add_argument("--max-epoch", type=int, help="train up to this epoch")
    parser.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: images // batch size)")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--cpu-replicas", type=int, help="train on N logical CPU devices with MirroredStrategy "
                                                        "(the multi-GPU code path, on a machine without GPUs)")
    return parser


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def resolve_config(args, dataset, **overrides):
    """The shipped (or --config) YAML with the command line's values on top; dataset None keeps --config's."""
    from epsilon_resnet import config as config_lib

    config = config_lib.load(args.config) if args.config else config_lib.shipped(dataset)
    flags = {"data.name": dataset, "data.dir": args.data, "model.epsilon": args.epsilon,
             "train.max_epoch": args.max_epoch, "train.steps_per_epoch": args.steps_per_epoch,
             "train.batch_size": args.batch_size, **overrides}
    return config_lib.replace(config, **{k: v for k, v in flags.items() if v is not None})


def run_training(args, dataset, default_output, **overrides):
    """Parse-time checks done: select devices, build the config, train; user errors exit 1."""
    distribute.select_devices(args.gpu)
    from epsilon_resnet import training
    from epsilon_resnet.config import ConfigError

    try:
        config = resolve_config(args, dataset, **overrides)
        run_dir = f"train_log.{args.output or default_output(config)}"
        training.train_and_evaluate(config, run_dir, load=args.load,
                                    strategy=distribute.make_strategy(args.cpu_replicas))
    except (ConfigError, training.RunError, FileNotFoundError, ValueError) as err:
        fail(err)
    except KeyboardInterrupt:
        fail("interrupted")


def cifar_main(argv=None):
    parser = training_parser("Train an ε-ResNet on CIFAR-10 or CIFAR-100.")
    parser.add_argument("-n", type=int, help="blocks per stage: depth 6n+2 (18 → ResNet-110)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cifar10", action="store_true", help="train on CIFAR-10 (the default)")
    which.add_argument("--cifar100", action="store_true", help="train on CIFAR-100")
    args = parser.parse_args(argv)
    # With --config and no dataset flag, the config's own dataset stands.
    dataset = "cifar100" if args.cifar100 else "cifar10" if args.cifar10 or not args.config else None
    run_training(args, dataset, lambda c: f"{c.data.name}-e_{c.model.epsilon:g}-n_{c.model.n}",
                 **{"model.n": args.n})
