"""Fake quantization (QuantFace-style): formulas, quantized layers, BN folding, spec, packed storage, QDQ export."""

from .formulas import (check_bits, dequantize, fake_quantize, qrange, quantize, scale_zero_point, tensor_range,
                       to_onnx_qparams)
from .modules import ActQuantizer, QConv2d, QLinear, WeightQuantizer
from .onnx_qdq import export_mode, export_qdq_onnx
from .overflow import safe_weight_bits, saturates_without_vnni
from .prepare import QuantizedModel, fold_batchnorm, prepare_quantized
from .storage import load_packed, load_quantized, read_packed, save_quantized, write_packed

__all__ = [
    "ActQuantizer", "QConv2d", "QLinear", "QuantizedModel", "WeightQuantizer", "check_bits", "dequantize",
    "export_mode", "export_qdq_onnx", "fake_quantize", "fold_batchnorm", "load_packed", "load_quantized",
    "prepare_quantized", "qrange", "quantize", "read_packed", "safe_weight_bits", "saturates_without_vnni",
    "save_quantized", "scale_zero_point",
    "tensor_range", "to_onnx_qparams", "write_packed",
]
