#!/bin/bash
# The reference card of a three-stage compression made by separate commands, each on the previous one's output, as a
# user runs them (model_cards/minilm-l6-distil3-prune50-onnx-int8/): distil a 3-block student from a fine-tuned
# MiniLM-L6, prune half of its heads and FFN neurons with distillation, quantize it to ONNX int8, then write the
# upload a push would make (its card names the Hub id).
#
#   bash benchmarks/card_chain.sh OUT_DIR TEACHER_DIR
#
# TEACHER_DIR: MiniLM-L6 fine-tuned on Rotten Tomatoes (the card of 2026-12-06 used the lowbit benchmark's 0.5-epoch
# teacher, validation accuracy 0.766: `python scripts/benchmark_lowbit.py` writes it to
# benchmarks/cache/lowbit/teacher-minilm-l6-rt-e05-s42). Short budgets (2,000 training rows, 1 epoch per stage) so
# the three stages take ~30 minutes on a busy 2-core CPU.
set -euo pipefail
OUT=${1:?output folder}
TEACHER=${2:?fine-tuned teacher folder}
HFC="${PYTHON:-python} -m hfcompress"
COMMON="--dataset rotten-tomatoes --max_train_samples 2000 --max_length 128 --seed 42 --use_cpu
        --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 10"
$HFC distill --teacher_model "$TEACHER" --base_model_id sentence-transformers/all-MiniLM-L6-v2 --student_layers 1,3,5 \
  --num_train_epochs 1 --learning_rate 1e-4 $COMMON --output_dir "$OUT/distill"
$HFC prune --teacher_model "$OUT/distill/model" --granularity structured --method taylor --target_sparsity 0.5 \
  --num_train_epochs 1 --learning_rate 5e-5 $COMMON --output_dir "$OUT/prune"
$HFC quantize --model "$OUT/prune/model" --dataset rotten-tomatoes --max_length 128 --quantization onnx_int8 \
  --output_dir "$OUT/quantize"
$HFC push "$OUT/quantize/model" --hub_model_id hfcompress/minilm-l6-distil3-prune50-onnx-int8 --push_dry_run
