"""Quantization, each quantizer in its own module: `onnx` (export + ONNX Runtime int8, the fast CPU path, and
`OnnxModelForSequenceClassification` / `...ForTokenClassification` / `...ForQuestionAnswering` to run it), `dynamic` (PyTorch dynamic
int8), `bnb` (bitsandbytes 8-bit and 4-bit). `QuantizationConfig` chooses one for `scripts/quantize.py`."""

from .bnb import load_quantized, reload_quantized, save_quantized
from .config import QuantizationConfig
from .dynamic import load_dynamic_int8, quantize_dynamic_int8, save_dynamic_int8
from .onnx import (
    OnnxModelForQuestionAnswering,
    OnnxModelForSequenceClassification,
    OnnxModelForTokenClassification,
    export_onnx,
    is_quantized_onnx,
    measure_onnx_latency,
    onnx_size_mb,
    quantize_onnx,
    read_onnx_metadata,
)

__all__ = [
    "QuantizationConfig",
    "load_dynamic_int8",
    "load_quantized",
    "quantize_dynamic_int8",
    "reload_quantized",
    "save_dynamic_int8",
    "save_quantized",
    "OnnxModelForSequenceClassification",
    "OnnxModelForQuestionAnswering",
    "OnnxModelForTokenClassification",
    "export_onnx",
    "is_quantized_onnx",
    "measure_onnx_latency",
    "onnx_size_mb",
    "quantize_onnx",
    "read_onnx_metadata",
]
