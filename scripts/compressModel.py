#!/usr/bin/env python
"""Compress an ε-ResNet run at a step, e.g. `compressModel.py --dir train_log.cifar10-e_2.5-n_18 --step 303420`."""
from epsilon_resnet.cli import compress_main

if __name__ == "__main__":
    compress_main()
