#!/usr/bin/env python
"""Evaluate a compressed CIFAR ε-ResNet, e.g. `cifarCompressedResnet.py --cfg DIR/compressed_model_303420.cfg --gpu 0 --cifar10`."""
from epsilon_resnet.cli import cifar_compressed_main

if __name__ == "__main__":
    cifar_compressed_main()
