"""ε-ResNet (Yu, Yu & Ramalingam, CVPR 2018) on TensorFlow 2 / Keras 3."""
