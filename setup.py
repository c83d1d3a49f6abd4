"""ε-ResNet (Yu, Yu & Ramalingam, CVPR 2018) on TensorFlow 2 / Keras 3."""
import glob

from setuptools import find_packages, setup

setup(
    name="epsilon-resnet",
    version="0.1.0",
    description="ε-ResNet: residual networks that discard their own redundant blocks, on TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["epsilon_resnet", "epsilon_resnet.*"]),
    scripts=sorted(glob.glob("scripts/*.py")),
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.16",
        "tensorboard",          # TensorFlow 2.21 no longer installs it; the runs write TensorBoard logs
        "numpy",
        "opencv-python-headless",
        "tensorflow-datasets",
        "importlib_resources",  # tensorflow-datasets needs it on Python 3.11 (tensorflow/datasets#11212)
        "pyyaml",
        "scipy",                # SVHN's .mat files
        "matplotlib",           # figures
    ],
    extras_require={
        "test": ["pytest"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # What Keras' Model.export(format="onnx" | "litert") and the runtimes that check its files
        # need, at the versions tested together with TensorFlow 2.21 (protobuf 7, numpy 2): tf2onnx
        # 1.16 requires protobuf ~= 3.20, which TensorFlow's protobuf >= 6.31 rules out.
        "export": ["tf2onnx>=1.17", "onnx>=1.23", "onnxruntime>=1.32", "ai-edge-litert>=2.3"],
    },
)
