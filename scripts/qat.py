#!/usr/bin/env python
"""Quantization-aware training with distillation from the full-precision model: ternary (TernaryBERT), binary or
int8 (Q8BERT) weights per row, 8-bit activations, packed checkpoints.

    accelerate launch scripts/qat.py --output_dir out/ternary                               # offline default: ternary
    accelerate launch scripts/qat.py --qat_weight_bits 1 --output_dir out/binary
    accelerate launch scripts/qat.py --qat_weight_bits 7 --output_dir out/q8      # int8 (7-bit grid): out/q8/model_onnx
    accelerate launch scripts/qat.py --qat_weight_bits 1 --qat_split_ternary --student_model out/ternary/model_dense \
        --output_dir out/binary-split                                          # BinaryBERT's ternary weight splitting

Default: Rotten Tomatoes; teacher = MiniLM-L6 fine-tuned on it (done once and cached); the student is a full copy of
the teacher whose Linear layers outside the task head and word embeddings are fake-quantized (2-bit ternary by
default), trained for 2 epochs with distillation of logits and hidden states (no hard labels).

Writes <output_dir>/model (qat_model.safetensors: packed codes + a scale per row; load with hfcompress.qat.load_qat or
hfcompress.load_model: the same logits as the trained model), <output_dir>/model_dense (the quantized weights as a
plain transformers checkpoint), <output_dir>/qat (its configuration), checkpoints and <output_dir>/qat_summary.json.
Size, not speed: 1- and 2-bit weights have no CPU kernels in PyTorch or ONNX Runtime.
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import command_main

main = command_main("qat", description=__doc__.split("\n\n")[0])  # the same as `hfcompress qat`

if __name__ == "__main__":
    run_script(main)
