#!/usr/bin/env python
"""Quantize a trained classifier, token classifier or extractive QA reader (after distillation, pruning, vocabulary
trimming or low rank) and measure it against the model it came from: the task's metric (accuracy; entity F1; exact
match and F1), size of the whole checkpoint, CPU latency, peak memory.

    python scripts/quantize.py --output_dir out/q                              # offline default: MiniLM-L6, ONNX int8
    python scripts/quantize.py --model out/prune-heads/model --output_dir out/q-pruned   # a structurally pruned model
    python scripts/quantize.py --quantization torch_int8 --output_dir out/q-torch         # stay in PyTorch
    python scripts/quantize.py --load_in_4bit --output_dir out/q-nf4                      # bitsandbytes nf4
    python scripts/quantize.py --vocab_trim --quantization onnx_int8 --output_dir out/q-small
    python scripts/quantize.py --lowrank_energy 0.9 --quantization none --output_dir out/svd
    python scripts/quantize.py --model my-model/ --dataset my_data.csv --output_dir out/q
    python scripts/quantize.py --model out/ner/model --dataset wnut16-ner --max_length 64 --output_dir out/ner-q  # a tagger
    python scripts/quantize.py --model out/qa/model --dataset disfl-qa --max_length 384 --doc_stride 128 --output_dir out/qa-q

Default: MiniLM-L6 fine-tuned on Rotten Tomatoes (done once and cached, shared with the other scripts), exported to
ONNX and quantized by ONNX Runtime to int8 (about 2x faster on a CPU, within a few tenths of a point). Post-training:
nothing is trained here (a low-rank model regains accuracy by training: scripts/lowrank.py).

Writes <output_dir>/model (the compressed model; load it with hfcompress.loading.load_model, or, for ONNX, with
hfcompress.quantize.OnnxModelFor{SequenceClassification,TokenClassification,QuestionAnswering}.from_pretrained),
<output_dir>/reference (the source as a user downloads it, measured the same way) and
<output_dir>/quantize_summary.json (settings and measurements).
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import command_main, script

SCRIPT = script("quantize")
main = command_main("quantize", description=__doc__.split("\n\n")[0])  # the same as `hfcompress quantize`

if __name__ == "__main__":
    run_script(main)
