"""Quantization-aware training: ternary (TernaryBERT), binary (BinaryBERT's baseline) and int8 (Q8BERT) weights,
per-row scales, 8-bit activations, straight-through gradients, with distillation from the full-precision model
through hfcompress's one `DistillationLoss`; packed 1/2/8-bit checkpoints that reload with the same logits.

    from hfcompress.qat import QATCallback, QATConfig, save_qat, load_qat
    trainer = Trainer(..., callbacks=[QATCallback(QATConfig(qat_weight_bits=2))])
    trainer.train()
    save_qat(trainer.model, "out/model", tokenizer)   # save_qat_dense: the quantized weights as a plain checkpoint
    model = load_qat("out/model")                     # or hfcompress.load_model("out/model")

With distillation: `hfcompress qat` (`scripts/qat.py`). Size, not speed, for 1/2 bits: see `hfcompress.qat.qat_io`.
int8 (``qat_weight_bits=7`` or 8): `export_qat_onnx` writes an ONNX Runtime int8 graph with the trained scales (static
activation ranges observed in training), loaded by ``OnnxModelForSequenceClassification``. BinaryBERT's ternary
weight splitting: `split_ternary` (``qat_split_ternary`` in a run).
"""

from .callback import QATCallback
from .config import QATConfig
from .modules import (
    QAT_KEY,
    QATEmbedding,
    QATLinear,
    apply_qat,
    calibrate_activation_ranges,
    check_qat,
    qat_modules,
    qat_targets,
)
from .onnx_export import export_qat_onnx
from .qat_io import QAT_WEIGHTS_NAME, is_qat_checkpoint, load_qat, quantized_state_dict, save_qat, save_qat_dense
from .quantizers import dequantize, fake_quantize_activation, fake_quantize_weight, quantize_rows
from .split import split_ternary

__all__ = [
    "QAT_KEY",
    "QAT_WEIGHTS_NAME",
    "QATCallback",
    "QATConfig",
    "QATEmbedding",
    "QATLinear",
    "apply_qat",
    "calibrate_activation_ranges",
    "check_qat",
    "dequantize",
    "export_qat_onnx",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "is_qat_checkpoint",
    "load_qat",
    "qat_modules",
    "qat_targets",
    "quantize_rows",
    "quantized_state_dict",
    "save_qat",
    "save_qat_dense",
    "split_ternary",
]
