"""Step time of distillation from a teacher-output cache vs plain fine-tuning (the 1.15x floor).

Student: MiniLM-L6 (width 384, real weights). Teacher: described by a config only (width 768, 12 blocks), its
outputs synthetic but stored exactly as `compute_teacher_outputs` stores them: float32 logits, float16 hidden
states of 3 layers and float16 query/key/value of 1 relation block, per row. ~35 tokens per row, batch 32.

Measured (median over steps, from one optimizer step's end to the next, so the DataLoader's `dataset[i]` fetch and
the collator are inside): plain `Trainer` fine-tuning; `DistillationTrainer` on cached logits; the intermediate stage
(hidden states + relations from the cache, `intermediate_fraction=0.5`) and the prediction stage of the same run.
Also the fetch + collate time of one batch alone, with the current byte storage and with nested float16 lists (the
storage before cache format 2). Runs are interleaved (a busy machine slows all of them alike).

    .venv/bin/python benchmarks/cached_kd_step_time.py [--steps 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset, Sequence, Value
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hfcompress import DistillationArguments, DistillationDataCollator, DistillationTrainer
from hfcompress.assets import resolve_model_path
from hfcompress.distill.cache import encode_array
from hfcompress.distill.loss import CACHED_HIDDEN, CACHED_LOGITS, CACHED_QKV

TEACHER_WIDTH, HIDDEN_LAYERS, RELATION_LAYERS = 768, [4, 8, 12], [12]
STUDENT_BLOCKS = 6  # --student_blocks 3: blocks 1, 3, 5 of MiniLM-L6 (the 3-block student of `make distill`)


def load_student(path: str):
    """(student, hidden layer map, relation layer map) for STUDENT_BLOCKS blocks."""
    from hfcompress import init_student_from_teacher

    student = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if STUDENT_BLOCKS == 3:
        return init_student_from_teacher(student, layers=[0, 2, 4]), "1:4,2:8,3:12", "3:12"
    return student, "2:4,4:8,6:12", "6:12"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.last, self.times, self.stages = None, [], []
        self.loss = None

    def on_train_begin(self, args, state, control, **kw):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.stages.append(self.loss.stage if self.loss is not None else 0)
        self.last = now


def make_data(tok, n_rows: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(byte-stored cache, nested-list cache) with the same content."""
    rng = np.random.default_rng(seed)
    vocab = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2][:5000]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(25, 40)))) for _ in range(n_rows)]
    enc = tok(texts, truncation=True, max_length=48)
    lengths = [len(x) for x in enc["input_ids"]]
    hidden = [rng.standard_normal((len(HIDDEN_LAYERS), t, TEACHER_WIDTH)).astype(np.float16) for t in lengths]
    qkv = [rng.standard_normal((3 * len(RELATION_LAYERS), t, TEACHER_WIDTH)).astype(np.float16) for t in lengths]
    base = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"],
            "labels": rng.integers(0, 2, n_rows).tolist(),
            CACHED_LOGITS: rng.standard_normal((n_rows, 2)).astype(np.float32).tolist()}
    ds = Dataset.from_dict(base).cast_column(CACHED_LOGITS, Sequence(Value("float32")))
    as_bytes = ds.add_column(CACHED_HIDDEN, [encode_array(h) for h in hidden], feature=Value("large_binary"))
    as_bytes = as_bytes.add_column(CACHED_QKV, [encode_array(q) for q in qkv], feature=Value("large_binary"))
    nested = Sequence(Sequence(Sequence(Value("float16"))))
    as_lists = ds.add_column(CACHED_HIDDEN, [h.tolist() for h in hidden], feature=nested)
    as_lists = as_lists.add_column(CACHED_QKV, [q.tolist() for q in qkv], feature=nested)
    print(f"rows {n_rows}, tokens per row mean {np.mean(lengths):.1f} (min {min(lengths)}, max {max(lengths)})")
    return as_bytes, as_lists


def time_fetch_collate(ds: Dataset, collator, batch: int, reps: int) -> float:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(reps):
        idx = rng.choice(len(ds), batch, replace=False).tolist()
        t0 = time.perf_counter()
        collator(ds.__getitems__(idx))
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def run(kind: str, path: str, train: Dataset, tok, steps: int, batch: int, out: str) -> StepTimer:
    torch.manual_seed(0)
    student, layer_map, relation_map = load_student(path)
    common = dict(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, report_to="none",
                  save_strategy="no", logging_steps=1000, use_cpu=True, seed=0, dataloader_num_workers=0,
                  disable_tqdm=True)
    timer = StepTimer()
    if kind == "plain":
        plain = train.remove_columns([CACHED_LOGITS, CACHED_HIDDEN, CACHED_QKV])
        args = TrainingArguments(**common)
        trainer = Trainer(model=student, args=args, train_dataset=plain, callbacks=[timer],
                          data_collator=DistillationDataCollator(tok))
    else:
        teacher_cfg = BertConfig(hidden_size=TEACHER_WIDTH, num_hidden_layers=12, num_attention_heads=12, num_labels=2)
        kd = dict(alpha=0.5, temperature=2.0)
        if kind == "staged":
            kd.update(hidden_weight=1.0, layer_map=layer_map, relation_weight=1.0, relation_layer_map=relation_map,
                      intermediate_fraction=0.5)
        args = DistillationArguments(**common, **kd)
        data = train if kind == "staged" else train.remove_columns([CACHED_HIDDEN, CACHED_QKV])
        trainer = DistillationTrainer(model=student, args=args, train_dataset=data, teacher_config=teacher_cfg,
                                      cached_hidden_layers=HIDDEN_LAYERS, cached_relation_layers=RELATION_LAYERS,
                                      data_collator=DistillationDataCollator(tok), callbacks=[timer])
        timer.loss = trainer.distillation_loss
    trainer.train()
    return timer


def micro(path: str, train: Dataset, tok, reps: int, batch: int) -> dict:
    """The same steps without the Trainer, interleaved step by step in a random order per round (robust to a
    machine whose load drifts):
    fetch + collate + `DistillationTrainer.compute_loss`'s work + backward + AdamW step, on one student."""
    from hfcompress import DistillationConfig, DistillationLoss

    torch.manual_seed(0)
    student, layer_map, relation_map = load_student(path)
    student.train()
    teacher_cfg = BertConfig(hidden_size=TEACHER_WIDTH, num_hidden_layers=12, num_attention_heads=12, num_labels=2)
    staged = DistillationLoss(DistillationConfig(hidden_weight=1.0, layer_map=layer_map, relation_weight=1.0,
                                                 relation_layer_map=relation_map, intermediate_fraction=0.5),
                              student.config, teacher_config=teacher_cfg, cached_hidden_layers=HIDDEN_LAYERS,
                              cached_relation_layers=RELATION_LAYERS)
    staged.prepare_student(student)
    logits_only = DistillationLoss(DistillationConfig(), student.config, teacher_config=teacher_cfg)
    opt = torch.optim.AdamW([*student.parameters(), *staged.parameters()], lr=1e-5)
    collator = DistillationDataCollator(tok)
    plain_data = train.remove_columns([CACHED_LOGITS, CACHED_HIDDEN, CACHED_QKV])
    logits_data = train.remove_columns([CACHED_HIDDEN, CACHED_QKV])
    rng = np.random.default_rng(2)

    def step(kind):
        idx = rng.choice(len(train), batch, replace=False).tolist()
        t0 = time.perf_counter()
        if kind == "plain":
            b = collator(plain_data.__getitems__(idx))
            loss = student(**b).loss
        else:
            dl = logits_only if kind == "kd_logits" else staged
            if kind.startswith("stage"):
                dl.set_progress(0 if kind == "stage1_hidden_relation" else 1, 2)
            b = collator((logits_data if kind == "kd_logits" else train).__getitems__(idx))
            t_out = dl.teacher_outputs(b)
            labels = b.pop("labels")
            out = student(**b, **dl.student_forward_kwargs())
            loss = dl(out, labels, None, teacher_outputs=t_out, attention_mask=b.get("attention_mask"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    kinds = ["plain", "kd_logits", "stage1_hidden_relation", "stage2_logits_ce"]
    for k in kinds:
        step(k)  # warm-up
    times = {k: [] for k in kinds}
    order = np.random.default_rng(3)
    for _ in range(reps):
        for k in order.permutation(kinds):  # a fixed order biased the ratios by ~10% on a busy machine
            times[str(k)].append(step(str(k)))
    res = {f"micro_{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}
    for k in kinds[1:]:
        res[f"micro_{k}_ratio"] = res[f"micro_{k}_ms"] / res["micro_plain_ms"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--json", default=None)
    ap.add_argument("--student_blocks", type=int, choices=(3, 6), default=6)
    ap.add_argument("--micro", type=int, default=20, help="interleaved repetitions without the Trainer (0: skip)")
    a = ap.parse_args()
    global STUDENT_BLOCKS
    STUDENT_BLOCKS = a.student_blocks
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    path = resolve_model_path("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    as_bytes, as_lists = make_data(tok, a.rows)
    collator = DistillationDataCollator(tok)
    res: dict = {"batch": a.batch, "threads": torch.get_num_threads(), "student_blocks": a.student_blocks,
                 "fetch_collate_bytes_ms": 1000 * time_fetch_collate(as_bytes, collator, a.batch, 20),
                 "fetch_collate_nested_lists_ms": 1000 * time_fetch_collate(as_lists, collator, a.batch, 5)}
    print({k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()})
    if a.micro:
        res.update(micro(path, as_bytes, tok, a.micro, a.batch))
        print(json.dumps({k: round(v, 3) for k, v in res.items()}, indent=2))
    times: dict[str, list[float]] = {"plain": [], "kd_logits": [], "stage1_hidden_relation": [], "stage2_logits_ce": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):  # --rounds 0: micro-benchmark only
            for kind in ("plain", "logits", "staged"):
                t = run(kind, path, as_bytes, tok, a.steps, a.batch, os.path.join(tmp, f"{kind}{r}"))
                steps = list(zip(t.times, t.stages))[2:]  # warm-up steps dropped
                if kind == "plain":
                    times["plain"] += [x for x, _ in steps]
                elif kind == "logits":
                    times["kd_logits"] += [x for x, _ in steps]
                else:
                    times["stage1_hidden_relation"] += [x for x, s in steps if s == 1]
                    times["stage2_logits_ce"] += [x for x, s in steps if s == 2]
                print(kind, r, [round(1000 * x) for x in t.times])
    if a.rounds:
        for k, v in times.items():
            res[f"{k}_ms"] = 1000 * statistics.median(v)
        for k in ("kd_logits", "stage1_hidden_relation", "stage2_logits_ce"):
            res[f"{k}_ratio"] = res[f"{k}_ms"] / res["plain_ms"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=2))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
