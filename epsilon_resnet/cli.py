"""Command lines of the training scripts, with the original's flags (SPEC §7).

TensorFlow is imported only after the flags are parsed, because `--gpu` must set
CUDA_VISIBLE_DEVICES before TensorFlow initialises.
"""
import argparse
import os
import sys

from epsilon_resnet import distribute


def training_parser(description):
    """The flags every training script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gpu", type=distribute.gpu_flag,
                        help="comma-separated GPUs to use, e.g. 0,1,2,3; their count is the number "
                             "of replicas (the global batch is split across them)")
    parser.add_argument("-e", "--epsilon", type=float, help="ε of the strict-identity gates")
    parser.add_argument("-o", "--output", type=run_name, help="run name: everything goes to train_log.<output>/")
    parser.add_argument("--load", help="checkpoint to start from, e.g. train_log.x/model-39000")
    parser.add_argument("--data", help="folder holding the dataset files (nothing is downloaded)")
    parser.add_argument("--config", help="YAML config to use instead of the shipped configs/<dataset>.yaml")
    parser.add_argument("--max-epoch", type=int, help="train up to this epoch")
    parser.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: images // batch size)")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--cpu-replicas", type=int, help="train on N logical CPU devices with MirroredStrategy "
                                                        "(the multi-GPU code path, on a machine without GPUs)")
    parser.add_argument("--resume", action="store_true", help="continue the run folder's latest checkpoint (what "
                                                              "re-running the same command does), and fail if "
                                                              "there is none")
    parser.add_argument("--keep-checkpoints", type=int, metavar="K", help="keep the last K checkpoints (default: "
                                                                          "the config's train.keep_checkpoints)")
    parser.add_argument("--keep-step", type=int, action="append", metavar="S",
                        help="also keep the checkpoint of global step S for good, in <run folder>/kept/ "
                             "(an epoch end; repeat the flag for several; replaces train.keep_checkpoint_steps)")
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
             "train.batch_size": args.batch_size, "train.keep_checkpoints": args.keep_checkpoints,
             "train.keep_checkpoint_steps": args.keep_step, **overrides}
    return config_lib.replace(config, **{k: v for k, v in flags.items() if v is not None})


def run_name(text):
    """argparse type of -o: a name, since the run folder is train_log.<name>/ in the current folder."""
    if not text or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"-o takes a run name like cifar10-e_2.5-n_18 (the run goes to "
                                         f"train_log.<name>/ in the current folder), not a path: {text!r}")
    return text


def run_training(args, dataset, default_output, **overrides):
    """Parse-time checks done: select devices, build the config, train; user errors exit 1."""
    distribute.select_devices(args.gpu)
    from epsilon_resnet import training
    from epsilon_resnet.config import ConfigError

    try:
        config = resolve_config(args, dataset, **overrides)
        run_dir = f"train_log.{args.output or default_output(config)}"
        training.train_and_evaluate(config, run_dir, load=args.load, resume=args.resume,
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


def svhn_main(argv=None):
    parser = training_parser("Train an ε-ResNet on SVHN (train + extra; validated on test).")
    parser.add_argument("-n", type=int, help="blocks per stage: depth 6n+2 (18 → ResNet-110)")
    args = parser.parse_args(argv)
    run_training(args, "svhn", lambda c: f"svhn-e_{c.model.epsilon:g}-n_{c.model.n}", **{"model.n": args.n})


IMAGENET_DEPTH_CHOICES = (18, 34, 50, 101, 152)  # networks.IMAGENET_DEPTHS, which would import TensorFlow too early
DATA_FORMAT_FLAGS = {"NHWC": "channels_last", "NCHW": "channels_first"}


def imagenet_main(argv=None):
    parser = training_parser("Train an ε-ResNet on ImageNet, or (--eval --load CKPT) evaluate a checkpoint.")
    parser.add_argument("-d", "--depth", type=int, choices=IMAGENET_DEPTH_CHOICES, help="ResNet depth (default 101)")
    parser.add_argument("--fake", action="store_true", help="random images instead of ImageNet, for benchmarking")
    parser.add_argument("--eval", action="store_true", help="only evaluate the --load checkpoint: print its top-1 "
                                                            "and top-5 validation error (weights and ε from the "
                                                            "checkpoint; writes nothing)")
    parser.add_argument("--data_format", choices=sorted(DATA_FORMAT_FLAGS),
                        help="layout inside the network: NCHW is faster on GPUs, the CPU needs NHWC "
                             "(default: the config's, NHWC)")
    parser.add_argument("--image-size", type=int, help="side of the square input images (default: the "
                                                       "config's, 224); smaller for quick runs")
    args = parser.parse_args(argv)
    if args.eval and not args.load:
        parser.error("--eval needs --load CKPT, the checkpoint to evaluate")
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image-size must be a positive number of pixels, got {args.image_size}")
    distribute.select_devices(args.gpu)
    from epsilon_resnet.config import ConfigError

    # --fake keeps configs/imagenet.yaml (or --config) and swaps only the data source.
    overrides = {"data.name": "fake-imagenet" if args.fake else "imagenet", "model.depth": args.depth,
                 "model.data_format": DATA_FORMAT_FLAGS.get(args.data_format)}
    try:
        if args.image_size:  # one option changes; the config's other data options stay
            options = resolve_config(args, "imagenet").data.options
            overrides["data.options"] = {**options, "image_size": args.image_size}
        config = resolve_config(args, "imagenet", **overrides)
    except ConfigError as err:
        fail(err)
    if config.model.data_format == "channels_first":
        require_gpu_for_nchw()
    if args.eval:
        evaluate_checkpoint(config, args.load)
    else:
        run_training(args, "imagenet", lambda c: f"imagenet-d_{c.model.depth}-e_{c.model.epsilon:g}", **overrides)


def require_gpu_for_nchw():
    """Refuse NCHW without a GPU: TensorFlow's CPU kernels are written for NHWC."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        fail("--data_format NCHW (model.data_format: channels_first) is for GPUs, and TensorFlow sees no GPU "
             "here. Its CPU convolutions only support NHWC (the stock CPU Conv2D rejects NCHW; where oneDNN "
             "accepts it, it and Keras's pooling transpose to NHWC and back, which only costs time). "
             "Use --data_format NHWC.")


def evaluate_checkpoint(config, path):
    """--eval: the config's network with a checkpoint's weights, scored on the validation set.

    Nothing is written: no run folder is made, and the checkpoint's folder is only read.
    """
    import tensorflow as tf

    from epsilon_resnet import training

    try:
        training.check_checkpoint(path)
        trainer = training.Trainer(config, os.path.dirname(path) or ".")  # never fit or saved: writes nothing
        try:  # the model's weights only (ε too); every one must be found
            tf.train.Checkpoint(model=trainer.model).read(path).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError) as err:
            raise training.RunError(f"{path} is not a checkpoint of this network (ResNet-{config.model.depth}, "
                                    f"gated={config.model.gated}); -d must be the run's depth: {err}") from None
        errors = trainer.evaluate()
    except (training.RunError, tf.errors.OpError, FileNotFoundError, ValueError) as err:
        fail(err)
    epsilon = "" if trainer.model.epsilon is None else f", ε {float(trainer.model.epsilon.numpy()):g}"
    print(f"{path}: ResNet-{config.model.depth}{epsilon} on {trainer.source.num_eval} {config.data.name} "
          f"validation images")
    print(f"top-1 error: {errors['val_error']:.6f}")
    if "val_error_top5" in errors:
        print(f"top-5 error: {errors['val_error_top5']:.6f}")
    print(f"val_cost: {errors['val_cost']:.6f}")
