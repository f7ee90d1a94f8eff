#!/usr/bin/env python
"""Distil a sequence classifier, or a Whisper speech recognizer, into a smaller student.

    accelerate launch scripts/distill.py --output_dir out           # embedded offline default
    accelerate launch scripts/distill.py --teacher_model mpnet-base --output_dir out-mpnet
    accelerate launch scripts/distill.py --dataset my_data/ --text_column body --label_column topic --output_dir out
    python scripts/distill.py --config recipe.yaml                   # flags and YAML/JSON config files both work
    accelerate launch scripts/distill.py --student_model out-prune/model --lora_r 8 --output_dir out-lora  # LoRA
    accelerate launch scripts/distill.py --lora_r 8 --lora_quantization 4bit --output_dir out-qlora       # QLoRA
    python scripts/distill.py --teacher_model whisper-tiny-en --student_decoder_layers 0,3 --output_dir out-whisper

Default: Rotten Tomatoes; teacher = MiniLM-L6 fine-tuned on it for 2 epochs (done once and cached, since the
checkpoint has no task head); student = blocks 1, 3, 5 of that teacher; logit + hidden-state + attention-relation
KD (the 3-block recipe measured best in benchmarks/results/distill.json), from cached teacher outputs. Writes the student alone to <output_dir>/model,
checkpoints to <output_dir>/checkpoints, what distillation learned beside the student to <output_dir>/distillation,
and the run record to <output_dir>/distill_summary.json.
With --lora_r: only LoRA factors and the classifier train; <output_dir>/adapter holds the adapter (classifier
included), <output_dir>/base_model the base it was trained on, <output_dir>/model the two merged (a plain checkpoint).

A Whisper teacher makes it sequence-to-sequence distillation (distil-whisper): the student keeps the teacher's encoder
(frozen by default; its outputs on the training set are cached once) and the decoder layers --student_decoder_layers;
loss = temperature KL on the decoder's logits + cross-entropy on the transcripts (or, with --pseudo_labels, the
teacher's own transcripts), per target token; evaluation by greedy generation (WER/CER). Data: --dataset speech-synth
(the default then), a CSV/JSON of audio file paths and transcripts (--audio_column, --text_column), or a saved
DatasetDict. <output_dir>/model holds the student and its processor.
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import (
    DistillScriptArguments,  # noqa: F401  (the argument groups, for readers)
    command_main,
    script,
)

SCRIPT = script("distill")
main = command_main("distill", description=__doc__.split("\n\n")[0])  # the same as `hfcompress distill`

if __name__ == "__main__":
    run_script(main)
