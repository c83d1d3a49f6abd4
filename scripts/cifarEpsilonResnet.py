#!/usr/bin/env python
"""Train an ε-ResNet on CIFAR-10/100, e.g. `cifarEpsilonResnet.py --gpu 1 -n 18 -e 2.5 -o cifar10-e_2.5-n_18 --cifar10`."""
from epsilon_resnet.cli import cifar_main

if __name__ == "__main__":
    cifar_main()
