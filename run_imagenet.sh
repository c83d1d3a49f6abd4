#!/usr/bin/env bash
# The paper's ImageNet experiments on 4 GPUs (global batch 256): ResNet-101 with ε = 2.0 and 2.1,
# ResNet-152 with ε = 1.8; 110 epochs of 5000 steps each. Then compress a run at a step of your
# choice (a checkpoint model-<STEP> in its run folder) and evaluate the compressed network (top-1/top-5).
# --data_format NCHW is faster on GPUs; drop it on a machine without one.
set -euo pipefail
IMAGENET_DIR=${IMAGENET_DIR:-$HOME/data/imagenet}   # holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG
GPUS=${GPUS:-0,1,2,3}
EVAL_GPU=${EVAL_GPU:-0}
STEP=${STEP:-}                                      # set to a checkpoint step to compress, e.g. STEP=550000

for run in "101 2.0" "101 2.1" "152 1.8"; do
  read -r depth eps <<< "$run"
  name=imagenet-d_${depth}-e_${eps}
  python scripts/imagenetEpsilonResnet.py -d "$depth" -e "$eps" --gpu "$GPUS" -o "$name" --data "$IMAGENET_DIR" --data_format NCHW
  if [ -n "$STEP" ]; then
    python scripts/compressModel.py --dir "train_log.$name" --step "$STEP" --data "$IMAGENET_DIR"
    python scripts/imagenetCompressedResnet.py --cfg "train_log.$name/compressed_model_$STEP.cfg" --data "$IMAGENET_DIR" --gpu "$EVAL_GPU"
  fi
done
