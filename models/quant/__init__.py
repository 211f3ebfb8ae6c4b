"""Fake quantization (QuantFace-style): formulas, quantized layers, BN folding and the quantization spec.
Saving and packing live in pipeline/quant/storage.py, the QDQ ONNX export in export/onnx_qdq.py."""

from .formulas import (check_bits, dequantize, fake_quantize, qrange, quantize, scale_zero_point, tensor_range,
                       to_onnx_qparams)
from .modules import ActQuantizer, QConv2d, QLinear, WeightQuantizer
from .overflow import safe_weight_bits, saturates_without_vnni
from .prepare import QuantizedModel, fold_batchnorm, prepare_quantized

__all__ = [
    "ActQuantizer", "QConv2d", "QLinear", "QuantizedModel", "WeightQuantizer", "check_bits", "dequantize",
    "fake_quantize", "fold_batchnorm", "prepare_quantized", "qrange", "quantize", "safe_weight_bits",
    "saturates_without_vnni", "scale_zero_point", "tensor_range", "to_onnx_qparams",
]
