"""Export and runtime backends: the FORMATS table, exporters (ONNX, OpenVINO, TensorRT), the parity gate and
`load_artifact`. Importing the package registers the openvino / tensorrt / torch_tensorrt embedder backends
(their runtimes are imported only when used)."""

from . import openvino, tensorrt, torch_tensorrt  # noqa: F401  (register EMBEDDER_BACKENDS entries)
