"""ε-ResNet (Yu, Yu & Ramalingam, CVPR 2018) on TensorFlow 2 / Keras 3."""
import os

# TensorFlow's C++ INFO lines (oneDNN, CUDA probing) drown the progress bar; warnings, such
# as a skipped corrupt JPEG, still show. Set before TensorFlow is first imported; a user's
# own TF_CPP_MIN_LOG_LEVEL wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
