#!/usr/bin/env bash
# The paper's SVHN experiments (ε = 1.5; depths 110, 200, 302 = 6n+2 with n = 18, 33, 50), on GPU 0.
# Each run trains on train + extra up to 200 epochs with the adaptive learning rate; then compress it
# at a step of your choice (a checkpoint model-<STEP> in its run folder) and evaluate the compressed network.
set -euo pipefail
SVHN_DIR=${SVHN_DIR:-$HOME/data/svhn}   # holds train_32x32.mat, extra_32x32.mat, test_32x32.mat
GPU=${GPU:-0}
STEP=${STEP:-}                          # set to a checkpoint step to compress, e.g. STEP=236050

for n in 18 33 50; do
  name=svhn-e_1.5-n_${n}
  python scripts/svhnEpsilonResnet.py --gpu "$GPU" -n "$n" -e 1.5 -o "$name" --data "$SVHN_DIR"
  if [ -n "$STEP" ]; then
    python scripts/compressModel.py --dir "train_log.$name" --step "$STEP" --data "$SVHN_DIR"
    python scripts/svhnCompressedResnet.py --cfg "train_log.$name/compressed_model_$STEP.cfg" --gpu "$GPU" --data "$SVHN_DIR"
  fi
done
