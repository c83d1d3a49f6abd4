#!/usr/bin/env bash
# The paper's ImageNet experiments (global batch 256, split across the GPUs): ResNet-101 with ε = 2.0
# and 2.1 on 4 GPUs, ResNet-152 with ε = 1.8 on 6 GPUs as the original ran it (256 // 6 = 42 images per
# GPU, 252 per step); 110 epochs of 5000 steps each. Then compress a run at a step of your
# choice (a checkpoint model-<STEP> in its run folder) and evaluate the compressed network (top-1/top-5).
# --gate-scope per_replica gates each GPU's share of the batch, as the original's towers did: the paper's
# ε values were found with that gate (a gate over the whole batch of 256 closes fewer blocks at the same ε).
# --data_format NCHW is faster on GPUs; drop it on a machine without one.
set -euo pipefail
IMAGENET_DIR=${IMAGENET_DIR:-$HOME/data/imagenet}   # holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG
GPUS=${GPUS:-0,1,2,3}                               # ResNet-101
GPUS_152=${GPUS_152:-0,1,2,3,4,5}                   # ResNet-152
EVAL_GPU=${EVAL_GPU:-0}
STEP=${STEP:-}                                      # set to a checkpoint step to compress, e.g. STEP=550000

for run in "101 2.0 $GPUS" "101 2.1 $GPUS" "152 1.8 $GPUS_152"; do
  read -r depth eps gpus <<< "$run"
  name=imagenet-d_${depth}-e_${eps}
  python scripts/imagenetEpsilonResnet.py -d "$depth" -e "$eps" --gpu "$gpus" -o "$name" --data "$IMAGENET_DIR" --data_format NCHW \
    --gate-scope per_replica
  if [ -n "$STEP" ]; then
    python scripts/compressModel.py --dir "train_log.$name" --step "$STEP" --data "$IMAGENET_DIR"
    python scripts/imagenetCompressedResnet.py --cfg "train_log.$name/compressed_model_$STEP.cfg" --data "$IMAGENET_DIR" --gpu "$EVAL_GPU"
  fi
done
