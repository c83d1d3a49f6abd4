"""Every command line of the project, with the original's script names and flags (docs/original.md §7).

TensorFlow is imported only after the flags are parsed: `--gpu` must set
CUDA_VISIBLE_DEVICES before TensorFlow initialises, and the import is made quiet
(console.quiet_tensorflow). Every user error is an errors.UserError, printed as one line.
"""
import argparse
import contextlib
import errno
import os
import re
import sys

from epsilon_resnet import console, data, distribute, export, run_folder
from epsilon_resnet.errors import ConfigError, UserError
from epsilon_resnet.structures import DATA_FORMATS, GATE_INFERENCE_MODES, GATE_SCOPES, IMAGENET_DEPTHS

DATA_FORMAT_FLAGS = dict(zip(("NHWC", "NCHW"), DATA_FORMATS))  # the original's flag values
IMAGENET_DATASETS = tuple(name for name in data.DATASETS if data.family_of(name) == "imagenet")
# The library names its arguments (and config keys) in backquotes; on the command line they are these flags.
FLAGS = {"resume": "--resume", "load": "--load", "run_dir": "output name (-o)", "directory": "--dir",
         "check_batches": "--check-batches", "export_dir": "--export", "cpu_replicas": "--cpu-replicas",
         "gpus": "--gpu", "size": "-n", "model.n": "-n", "model.depth": "-d", "formats": "--format",
         "quantize": "--quantize"}
BACKQUOTED = re.compile(r"`([\w.]+)`")


def in_flags(message):
    """A library message in the command line's words: each backquoted argument that is a flag here becomes it."""
    return BACKQUOTED.sub(lambda name: FLAGS.get(name[1], name[0]), message)


def fail(message):
    print(f"error: {in_flags(str(message))}", file=sys.stderr)
    sys.exit(1)


@contextlib.contextmanager
def command(args):
    """Start TensorFlow for a command, and turn its user errors into one line and exit code 1."""
    distribute.select_devices(getattr(args, "gpu", None))
    console.quiet_tensorflow(args.verbose)
    try:
        yield
    except UserError as err:
        fail(err)
    except OSError as err:  # a file or folder that cannot be read or written: a full or read-only disk, ...
        fail(os_error_line(err))
    except KeyboardInterrupt:
        fail("interrupted")


def os_error_line(err):
    """An OSError as one line naming the file and what the error number means."""
    name = errno.errorcode.get(err.errno, "")
    return f"{err.filename or 'a file'}: {err.strerror or err}" + (f" ({name})" if name else "")


def gpu_list(spec):
    """argparse type of --gpu: a bad list is a usage error that says what is expected."""
    try:
        distribute.parse_gpus(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(in_flags(str(err))) from None
    return spec


def run_name(text):
    """argparse type of -o: a name, since the run folder is train_log.<name>/ in the current folder."""
    if not text.strip(".") or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"-o takes a run name like cifar10-e_2.5-n_18 (the run goes to "
                                         f"train_log.<name>/ in the current folder), not a path: {text!r}")
    return text


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def add_common(parser):
    parser.add_argument("--gpu", type=gpu_list,
                        help="comma-separated GPUs to use, e.g. 0,1,2,3; their count is the number of replicas")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own start-up and log messages")


# ---- training --------------------------------------------------------------------------------
def training_parser(description, batch_help):
    """The flags every training script shares."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    add_common(parser)
    parser.add_argument("-e", "--epsilon", type=float, help="ε of the strict-identity gates")
    parser.add_argument("-o", "--output", type=run_name, help="run name: everything goes to train_log.<output>/")
    parser.add_argument("--load", help="checkpoint whose variables start a NEW run (epoch 1, schedules from "
                                       "their start), e.g. train_log.x/model-39000")
    parser.add_argument("--data", help="folder holding the dataset files (nothing is downloaded)")
    parser.add_argument("--config", help="YAML config to use instead of the shipped configs/<dataset>.yaml")
    parser.add_argument("--max-epoch", type=positive, help="train up to this epoch")
    parser.add_argument("--steps-per-epoch", type=positive, help="steps per epoch (default: images // batch size)")
    parser.add_argument("--batch-size", type=positive, help=batch_help)
    parser.add_argument("--eval-batches", type=positive, metavar="K",
                        help="validate on the first K batches only (quick runs; default: the whole validation set)")
    parser.add_argument("--gate-inference", choices=GATE_INFERENCE_MODES,
                        help="the gates at inference (val_error, --eval): stored, the decision training stored in "
                             "them (default), or per_batch, the original's decision on each evaluated batch "
                             "(val_error_per_batch records it anyway)")
    parser.add_argument("--gate-scope", choices=GATE_SCOPES,
                        help="over which images a training step's gates decide with several GPUs: global, the "
                             "whole batch (default), or per_replica, each GPU's own share as the original's towers "
                             "(the paper's ImageNet ε values were found so)")
    parser.add_argument("--cpu-replicas", type=positive, help="train on N logical CPU devices with MirroredStrategy "
                                                              "(the multi-GPU code path, on a machine without GPUs)")
    parser.add_argument("--resume", action="store_true", help="continue the run folder's latest checkpoint (what "
                                                              "re-running the same command does), and fail if "
                                                              "there is none")
    parser.add_argument("--eval", action="store_true", help="only evaluate the --load checkpoint: print its "
                                                            "validation errors (top-1, and top-5 with more than 10 "
                                                            "classes) in batches of 128 as the original (or "
                                                            "train.eval_batch_size); writes nothing")
    parser.add_argument("--keep-checkpoints", type=positive, metavar="K",
                        help="keep the last K checkpoints (default: the config's train.keep_checkpoints, 10; one "
                             "checkpoint every 30 minutes is kept as well)")
    parser.add_argument("--keep-step", type=positive, action="append", metavar="S",
                        help="also keep the checkpoint of global step S for good, in <run folder>/kept/ "
                             "(an epoch end; repeat the flag for several; replaces train.keep_checkpoint_steps)")
    return parser


PER_GPU_BATCH = "images per GPU and step (default 128: with --gpu 0,1 a step trains on 256, as in the original)"


def add_num_units(parser):
    parser.add_argument("-n", "--num_units", type=positive, help="blocks per stage: depth 6n+2 (18 → ResNet-110)")


def resolve_config(args, dataset, data_options=None, **overrides):
    """The shipped (or --config) YAML with the command line's values on top; dataset None keeps
    --config's; data_options change those options only, the config's others stay."""
    from epsilon_resnet import config as config_lib

    config = config_lib.load(args.config) if args.config else config_lib.shipped(dataset)
    if data_options:
        overrides["data.options"] = {**config.data.options, **data_options}
    flags = {"data.name": dataset, "data.dir": args.data, "model.epsilon": args.epsilon,
             "train.max_epoch": args.max_epoch, "train.steps_per_epoch": args.steps_per_epoch,
             "train.batch_size": args.batch_size, "train.keep_checkpoints": args.keep_checkpoints,
             "train.keep_checkpoint_steps": args.keep_step, "train.eval_batches": args.eval_batches,
             "model.gate_inference": args.gate_inference, "model.gate_scope": args.gate_scope, **overrides}
    config = config_lib.replace(config, **{k: v for k, v in flags.items() if v is not None})
    if args.epsilon is not None and not config_lib.epsilon_is_used(config.model):
        raise ConfigError(f"-e {args.epsilon:g} would never be in force: model.epsilon_schedule "
                          f"{config.model.epsilon_schedule} sets ε from epoch 1 on; write null for the ε of the "
                          f"points that should take -e's value (e.g. [[0, 0.0], [150, null]]), or drop -e")
    return config


def parse_training_args(parser, argv):
    args = parser.parse_args(argv)
    if args.eval and not args.load:
        parser.error("--eval needs --load CKPT, the checkpoint to evaluate")
    return args


def run_training(args, config, default_output):
    """Train a config into train_log.<-o or default_output(config)>/; with --eval, score the --load checkpoint."""
    from epsilon_resnet import training

    if args.eval:
        from epsilon_resnet import scoring

        print("\n".join(scoring.checkpoint_report(config, args.load)))
        return
    run_dir = run_folder.run_dir_of(args.output or default_output(config))
    training.train_and_evaluate(config, run_dir, load=args.load, resume=args.resume,
                                strategy=distribute.make_strategy(args.cpu_replicas))


def cifar_main(argv=None):
    parser = training_parser("Train an ε-ResNet on CIFAR-10 or CIFAR-100.", PER_GPU_BATCH)
    add_num_units(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cifar10", action="store_true", help="train on CIFAR-10 (the default)")
    which.add_argument("--cifar100", action="store_true", help="train on CIFAR-100")
    args = parse_training_args(parser, argv)
    # With --config and no dataset flag, the config's own dataset stands.
    dataset = "cifar100" if args.cifar100 else "cifar10" if args.cifar10 or not args.config else None
    with command(args):
        config = resolve_config(args, dataset, **{"model.n": args.num_units})
        run_training(args, config, lambda c: f"{c.data.name}-e_{c.model.epsilon:g}-n_{c.model.n}")


def svhn_main(argv=None):
    parser = training_parser("Train an ε-ResNet on SVHN (train + extra; validated on test).", PER_GPU_BATCH)
    add_num_units(parser)
    args = parse_training_args(parser, argv)
    with command(args):
        config = resolve_config(args, "svhn", **{"model.n": args.num_units})
        run_training(args, config, lambda c: f"svhn-e_{c.model.epsilon:g}-n_{c.model.n}")


def imagenet_parser():
    parser = training_parser("Train an ε-ResNet on ImageNet; --eval --load CKPT evaluates a checkpoint, --cfg "
                             "FILE a compressed network.",
                             "global batch, split across the GPUs (default 256, as in the original)")
    parser.add_argument("-d", "--depth", type=int, choices=sorted(IMAGENET_DEPTHS),
                        help="ResNet depth (default: the config's, 18 as in the original)")
    parser.add_argument("--fake", action="store_true", help="random images instead of ImageNet, for benchmarking")
    parser.add_argument("--cfg", help="evaluate the compressed network of this compressed_model_<step>.cfg "
                                      "(as imagenetCompressedResnet.py does)")
    parser.add_argument("--data_format", choices=sorted(DATA_FORMAT_FLAGS),
                        help="layout inside the network: NCHW is faster on GPUs, the CPU needs NHWC "
                             "(default: the config's, NHWC)")
    parser.add_argument("--image-size", type=positive, help="side of the square input images (default: the "
                                                            "config's, 224); smaller for quick runs")
    add_export_flags(parser)
    return parser


def imagenet_main(argv=None):
    parser = imagenet_parser()
    args = parse_training_args(parser, argv)
    if (args.export or args.format or args.quantize) and not args.cfg:
        parser.error("--export, --format and --quantize export a compressed network: they go with --cfg")
    if args.cfg:
        return run_evaluation(args, IMAGENET_DATASETS)
    with command(args):
        # --fake keeps configs/imagenet.yaml (or --config) and swaps only the data source.
        config = resolve_config(args, "imagenet", data_options=args.image_size and {"image_size": args.image_size},
                                **{"data.name": "fake-imagenet" if args.fake else "imagenet", "model.depth": args.depth,
                                   "model.data_format": DATA_FORMAT_FLAGS.get(args.data_format)})
        if config.model.data_format == "channels_first":
            require_gpu_for_nchw()
        run_training(args, config, lambda c: f"imagenet-d_{c.model.depth}-e_{c.model.epsilon:g}")


def require_gpu_for_nchw():
    """Refuse NCHW without a GPU: TensorFlow's CPU kernels are written for NHWC."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        fail("--data_format NCHW (model.data_format: channels_first) is for GPUs, and TensorFlow sees no GPU "
             "here. Its CPU convolutions only support NHWC (the stock CPU Conv2D rejects NCHW; where oneDNN "
             "accepts it, it and Keras's pooling transpose to NHWC and back, which only costs time). "
             "Use --data_format NHWC.")


# ---- compression -----------------------------------------------------------------------------
def compress_main(argv=None):
    parser = argparse.ArgumentParser(description="Compress an ε-ResNet run at a step: remove the blocks closed at "
                                                 "inference, and check that the result computes the same logits.",
                                     allow_abbrev=False)
    parser.add_argument("--dir", required=True, help="the run folder train_log.<output>/, or a folder holding one")
    parser.add_argument("--step", type=int, required=True, help="global step of the checkpoint model-<step>")
    parser.add_argument("--check-batches", type=positive, metavar="K",
                        help="compare the networks on the first K validation batches only (default: all)")
    parser.add_argument("--data", help="dataset folder (default: the run's data.dir)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own start-up and log messages")
    args = parser.parse_args(argv)
    with command(args):
        from epsilon_resnet import compression

        cfg_path, spec = compression.compress_run(args.dir, args.step, check_batches=args.check_batches,
                                                  data_dir=args.data)
        for warning in spec.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(compression.describe(spec, cfg_path))


def evaluation_parser(description, data_help="dataset folder (default: the one in the .cfg)"):
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    add_common(parser)
    parser.add_argument("--cfg", required=True, help="compressed_model_<step>.cfg written by compressModel.py")
    parser.add_argument("--data", help=data_help)
    add_export_flags(parser)
    parser.add_argument("-o", "--output", type=run_name,
                        help="also write the errors to train_log.<output>/evaluation.json (a new file)")
    return parser


def add_export_flags(parser):
    parser.add_argument("--export", metavar="DIR",
                        help="also write the network into this new folder, one entry per --format: saved_model/ "
                             "(serve(images) -> logits), onnx/float32.onnx and onnx/uint8.onnx, litert/float32.tflite "
                             "and litert/uint8.tflite (litert_int8/ with --quantize int8); each file takes raw 0-255 "
                             "pixels of its dtype at any batch size, and is run in its own runtime on the validation "
                             "images and kept only if its logits match the network's")
    parser.add_argument("--format", nargs="+", choices=export.FORMATS,
                        help="the formats --export writes, one or several (default: saved_model)")
    parser.add_argument("--quantize", choices=export.QUANTIZATIONS,
                        help=f"with --format litert: a full-integer LiteRT model instead of the float one, calibrated "
                             f"on {export.CALIBRATION_IMAGES} training images (never test or held-out images; "
                             f"their indices go to litert_int8/{export.CALIBRATION_RECORD})")


def run_evaluation(args, datasets, size=None, output=None):
    """Evaluate a .cfg's network (scoring.evaluate_compressed) and, with --export, export it."""
    if (args.format or args.quantize) and not args.export:
        fail("--format and --quantize say what --export DIR writes: add --export DIR")
    formats = args.format or ["saved_model"]
    with command(args):
        from epsilon_resnet import scoring

        if args.export:
            export.check_request(args.export, formats, args.quantize)
        evaluated = scoring.evaluate_compressed(args.cfg, datasets, size, args.data, output)
        print("\n".join(evaluated.lines))
        if args.export:
            print("\n".join(export.export_evaluated(evaluated.model, evaluated.source, evaluated.spec.eval_batch_size,
                                                    args.export, formats, args.quantize)))


def cifar_compressed_main(argv=None):
    parser = evaluation_parser("Evaluate a compressed ε-ResNet on the CIFAR-10/100 test set.")
    add_num_units(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cifar10", action="store_true", help="the .cfg must be a CIFAR-10 network")
    which.add_argument("--cifar100", action="store_true", help="the .cfg must be a CIFAR-100 network")
    args = parser.parse_args(argv)
    datasets = ("cifar10",) if args.cifar10 else ("cifar100",) if args.cifar100 else ("cifar10", "cifar100")
    run_evaluation(args, datasets, args.num_units, args.output)


def svhn_compressed_main(argv=None):
    parser = evaluation_parser("Evaluate a compressed ε-ResNet on the SVHN test set.")
    add_num_units(parser)
    args = parser.parse_args(argv)
    run_evaluation(args, ("svhn",), args.num_units, args.output)


def imagenet_compressed_main(argv=None):
    parser = evaluation_parser("Evaluate a compressed ε-ResNet on the ImageNet validation set (top-1, top-5).",
                               data_help="ImageNet folder (default: the one in the .cfg)")
    args = parser.parse_args(argv)
    run_evaluation(args, IMAGENET_DATASETS, output=args.output)
