#!/usr/bin/env python
"""Evaluate a compressed SVHN ε-ResNet, e.g. `svhnCompressedResnet.py --cfg DIR/compressed_model_S.cfg --gpu 0`."""
from epsilon_resnet.cli import svhn_compressed_main

if __name__ == "__main__":
    svhn_compressed_main()
