#!/usr/bin/env bash
# The paper's CIFAR-10 experiments (ε = 2.5; depths 110, 200, 500, 752 = 6n+2 with n = 18, 33, 83, 125).
# Each run trains up to 1000 epochs with the adaptive learning rate; then compress it at a step
# of your choice (a checkpoint model-<STEP> in its run folder) and evaluate the compressed network.
set -euo pipefail
CIFAR10_DIR=${CIFAR10_DIR:-$HOME/data/cifar10}   # holds cifar-10-batches-py/ or cifar-10-python.tar.gz
GPU=${GPU:-0}
STEP=${STEP:-}                                   # set to a checkpoint step to compress, e.g. STEP=303420

for n in 18 33 83 125; do
  name=cifar10-e_2.5-n_${n}
  python scripts/cifarEpsilonResnet.py --gpu "$GPU" -n "$n" -e 2.5 -o "$name" --cifar10 --data "$CIFAR10_DIR"
  if [ -n "$STEP" ]; then
    python scripts/compressModel.py --dir "train_log.$name" --step "$STEP" --data "$CIFAR10_DIR"
    python scripts/cifarCompressedResnet.py --cfg "train_log.$name/compressed_model_$STEP.cfg" --gpu "$GPU" --cifar10 --data "$CIFAR10_DIR"
  fi
done
