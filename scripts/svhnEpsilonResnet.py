#!/usr/bin/env python
"""Train an ε-ResNet on SVHN, e.g. `svhnEpsilonResnet.py --gpu 2 -n 18 -e 1.5 -o svhn-e_1.5-n_18 --data DIR`."""
from epsilon_resnet.cli import svhn_main

if __name__ == "__main__":
    svhn_main()
