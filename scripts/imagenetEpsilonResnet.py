#!/usr/bin/env python
"""Train an ε-ResNet on ImageNet, e.g. `imagenetEpsilonResnet.py -d 101 -e 2.0 --gpu 0,1,2,3 --data DIR`;
`--fake` for random images, `--eval --load CKPT` to print a checkpoint's top-1/top-5 error."""
from epsilon_resnet.cli import imagenet_main

if __name__ == "__main__":
    imagenet_main()
