"""ε-ResNet (Yu, Yu & Ramalingam, CVPR 2018) on TensorFlow 2 / Keras 3."""
from epsilon_resnet import console as _console

_console.quiet_tensorflow_import()  # before anything imports TensorFlow
