#!/usr/bin/env python
"""Evaluate a compressed ImageNet ε-ResNet (top-1/top-5), e.g. `imagenetCompressedResnet.py --cfg DIR/compressed_model_S.cfg --data DIR --gpu 2`."""
from epsilon_resnet.cli import imagenet_compressed_main

if __name__ == "__main__":
    imagenet_compressed_main()
