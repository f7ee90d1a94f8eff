"""A small real job through the *installed* `hfcompress` command, run from a folder outside the checkout: a tiny
BERT teacher (random weights, a word-level tokenizer) and a tiny CSV written here, then `hfcompress distill`,
`hfcompress prune --granularity structured`, `hfcompress quantize` and `hfcompress compress --recipe`, each writing
its model and card. Used by `.ci/run` (a wheel installed into a fresh virtual environment) and by
`tests/test_package.py` (a wheel installed into a temporary folder).

    python .ci/smoke.py WORK_DIR [--hfcompress "python -m hfcompress"] [--jobs distill,prune,quantize,compress]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shlex
import subprocess
import sys


def write_tiny_assets(work: str) -> tuple[str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["good", "bad", "great", "awful", "movie", "plot", "acting", "boring", "fun", "dull", "the", "was", "a"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    teacher = os.path.join(work, "teacher")
    BertForSequenceClassification(config).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    rng = random.Random(0)
    data = os.path.join(work, "reviews.csv")
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _ in range(80):
            label = rng.random() < 0.5
            good = ["good", "great", "fun"] if label else ["bad", "awful", "boring", "dull"]
            w.writerow([" ".join(rng.choice(good + words[4:]) for _ in range(6)), "pos" if label else "neg"])
    return teacher, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work")
    parser.add_argument("--hfcompress", default="hfcompress", help="how to call the installed command")
    parser.add_argument("--jobs", default="distill,prune,quantize,compress", help="which commands to run, in order")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    teacher, data = write_tiny_assets(args.work)
    cmd = shlex.split(args.hfcompress)
    fast = ["--latency_rounds", "1", "--no_measure_memory"]
    train = ["--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "no", "--per_device_train_batch_size", "8"]
    recipe = os.path.join(args.work, "recipe.yaml")
    with open(recipe, "w") as fh:
        fh.write(f"name: smoke\nbase_model: {teacher}\nseed: 0\ndata: {{dataset: {data}}}\nmeasure: "
                 "{latency_rounds: 1, measure_memory: false}\nstages:\n"
                 "  - {method: distill, args: {student_layers: '0,2', max_steps: 4, eval_strategy: 'no', "
                 "save_strategy: 'no'}}\n  - {method: quantize, args: {quantization: onnx_int8}}\n")
    jobs = {
        "distill": [*cmd, "distill", "--teacher_model", teacher, "--dataset", data, "--student_layers", "0,2", *train,
                    *fast, "--output_dir", os.path.join(args.work, "distill")],
        "prune": [*cmd, "prune", "--teacher_model", teacher, "--dataset", data, "--granularity", "structured",
                  "--target_sparsity", "0.5", *train, *fast, "--output_dir", os.path.join(args.work, "prune")],
        "quantize": [*cmd, "quantize", "--model", os.path.join(args.work, "prune", "model"), "--dataset", data,
                     "--quantization", "onnx_int8", *fast, "--output_dir", os.path.join(args.work, "quantize")],
        "compress": [*cmd, "compress", "--recipe", recipe, "--output_dir", os.path.join(args.work, "compress")],
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name in args.jobs.split(","):
        job = jobs[name]
        res = subprocess.run(job, cwd=args.work, env=env, capture_output=True, text=True)
        card = os.path.join(args.work, name, "model", "README.md")
        if res.returncode != 0 or not os.path.isfile(card):
            print(f"smoke: {name} failed ({res.returncode}):\n{res.stderr[-4000:]}", file=sys.stderr)
            return 1
        print(f"smoke: {name}: model and card written ({card})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
