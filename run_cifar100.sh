#!/usr/bin/env bash
# The paper's CIFAR-100 experiments (ε = 2.5; depths 110, 200, 500, 752 = 6n+2 with n = 18, 33, 83, 125).
# Each run trains up to 1000 epochs with the adaptive learning rate; then compress it at a step
# of your choice (a checkpoint model-<STEP> in its run folder) and evaluate the compressed network.
set -euo pipefail
CIFAR100_DIR=${CIFAR100_DIR:-$HOME/data/cifar100}   # holds cifar-100-python/ or cifar-100-python.tar.gz
GPU=${GPU:-0}
STEP=${STEP:-}                                   # set to a checkpoint step to compress, e.g. STEP=303420

for n in 18 33 83 125; do
  name=cifar100-e_2.5-n_${n}
  python scripts/cifarEpsilonResnet.py --gpu "$GPU" -n "$n" -e 2.5 -o "$name" --cifar100 --data "$CIFAR100_DIR"
  if [ -n "$STEP" ]; then
    python scripts/compressModel.py --dir "train_log.$name" --step "$STEP" --data "$CIFAR100_DIR"
    python scripts/cifarCompressedResnet.py --cfg "train_log.$name/compressed_model_$STEP.cfg" --gpu "$GPU" --cifar100 --data "$CIFAR100_DIR"
  fi
done
