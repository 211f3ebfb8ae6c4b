"""Export and runtime backends: the FORMATS table (formats.py), one module per format family that builds and
loads its artifacts (torchfile, onnx, openvino, tensorrt, torch_tensorrt), the parity gate and `load_artifact`.
Importing the package registers every family and embedder backend (their runtimes are imported only when used)."""

# The format families: importing each registers its build / load (FAMILIES) and embedder backend.
from . import onnx, openvino, tensorrt, torch_tensorrt, torchfile  # noqa: F401
