"""Cost of the teacher cache as the training set grows (issue 24, part 4): a measurement, not a timed test.

Training sets of N rows are built from the offline Rotten Tomatoes training split (texts repeated and shuffled).
For each N, in a fresh process (so that its peak memory is its own):

* tokenization (`tokenize_for_distillation`: a batched `Dataset.map` with a progress bar): rows/s and tokens/s;
* the teacher cache of the default recipe (MiniLM-L6 teacher; student = its blocks 1, 3, 5; logit KD + hidden
  states of teacher layers 2, 4, 6 + q/k/v relations of its last block): size estimated before caching vs bytes
  written, time, and the process's resident memory (RSS, sampled every 0.2 s) before and at its peak while caching;
* a short distillation from that cache (`--steps` optimizer steps, batch 32): median step time of the first and the
  last 50 steps (after 5 warm-up steps), and the peak RSS while training.

Also, without caching, the estimate and tokenization throughput for `--estimate_rows` rows (100k by default).

The teacher's classification head is left untrained (`allow_untrained_teacher_head`): what is measured here is cost,
not accuracy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_cost.py --rows 2500,10000 --steps 200    # ~12 min, 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_cost.py --rows 10000,100000 --steps 300  # the issue's sizes

Writes `benchmarks/results/cache_cost.json` and `.md` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BATCH = 32
RECIPE = dict(alpha=0.5, temperature=2.0, hidden_weight=1.0, relation_weight=1.0)  # layer maps: uniform, last block


def rss_mb() -> tuple[float, float]:
    """(resident memory, its anonymous part) of this process, MB. The anonymous part leaves out pages of files
    mapped in memory (a memory-mapped Arrow dataset being read or written shows in the resident size, but the kernel
    drops those pages when memory is short)."""
    found = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(line.split()[1]) / 1024
    return found.get("VmRSS", float("nan")), found.get("RssAnon", float("nan"))


class RssSampler:
    """The peak resident memory (and its anonymous part) of this process while a `with` block runs (sampled every
    `interval` s)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.peak_anon, self._stop = interval, 0.0, 0.0, threading.Event()

    def _sample(self):
        rss, anon = rss_mb()
        self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start, self.start_anon = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def build_rows(n: int, seed: int = 0):
    """`n` training rows: the Rotten Tomatoes training texts repeated and shuffled; validation as it is."""
    from datasets import DatasetDict, concatenate_datasets

    from hfcompress.data import load_rotten_tomatoes

    data = load_rotten_tomatoes()
    train = data["train"]
    repeats = -(-n // len(train))
    big = concatenate_datasets([train] * repeats).shuffle(seed=seed).select(range(n)).flatten_indices()
    return DatasetDict(train=big, validation=data["validation"].select(range(256)))


def tokenize_rows(n: int):
    from transformers import AutoTokenizer

    from hfcompress.assets import resolve_model_path
    from hfcompress.run.data import tokenize_for_distillation

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    data = build_rows(n)
    t0 = time.perf_counter()
    tokenized, _ = tokenize_for_distillation(data, tok, tok, "text", "label", 128)
    seconds = time.perf_counter() - t0
    rows = len(data["train"]) + len(data["validation"])
    import pyarrow.compute as pc

    tokens = sum(int(pc.sum(pc.list_value_length(t["input_ids"])).as_py())
                 for t in tokenized["train"].with_format("arrow").iter(batch_size=10_000))
    return tok, tokenized, {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                            "train_tokens": tokens, "mean_tokens_per_row": round(tokens / n, 2)}


def models():
    import torch
    from transformers import AutoModelForSequenceClassification

    from hfcompress import init_student_from_teacher
    from hfcompress.assets import resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path("minilm-l6")
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    student = init_student_from_teacher(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2),
                                        layers=[1, 3, 5])
    return teacher, student


def estimate_only(n: int) -> dict:
    """Tokenization throughput and the cache estimate for `n` rows, without caching."""
    from hfcompress import DistillationConfig, DistillationLoss
    from hfcompress.distill.cache import estimate_teacher_cache

    _, tokenized, tok_stats = tokenize_rows(n)
    teacher, student = models()
    probe = DistillationLoss(DistillationConfig(**RECIPE), student.config, teacher_config=teacher.config)
    est = estimate_teacher_cache(tokenized["train"], teacher.config, probe.teacher_hidden_layers,
                                 probe.teacher_relation_layers)
    return {"rows": n, "tokenization": tok_stats, "estimate": est.to_dict(), "estimate_line": est.describe()}


def writer_check(n: int, work: str) -> dict:
    """Caching alone on `n` rows with a cheap stand-in teacher whose outputs take as many bytes as the recipe's: a
    random 2-block BERT of MiniLM-L6's width (384), caching hidden states 0, 1, 2 (three layers, like teacher layers
    2, 4, 6) and the q/k/v of block 2 (one relation block). It runs ~6x faster than MiniLM-L6, so the writing path
    (memory, bytes against the estimate) is measured at a size the real teacher would take most of an hour to reach."""
    from contextlib import nullcontext

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hfcompress.distill.collator import DistillationDataCollator
    from hfcompress.run.data import cache_teacher_on_train

    tok, tokenized, tok_stats = tokenize_rows(n)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
        intermediate_size=384, num_labels=2)).eval()
    cache_dir = os.path.join(work, f"writer-{n}")
    t0 = time.perf_counter()
    with RssSampler() as caching:
        _, meta = cache_teacher_on_train(
            tokenized, "stand-in", lambda: teacher, DistillationDataCollator(tok), cache_dir, [0, 1, 2], False, 64,
            lambda desc=None: nullcontext(), teacher_config=teacher.config, relation_layers=[2],
        )
    seconds = time.perf_counter() - t0
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(cache_dir, "data"))
                  for f in fs)
    shutil.rmtree(cache_dir, ignore_errors=True)
    est = meta["estimate"]["total_bytes"]
    return {"rows": n, "tokenization": tok_stats, "estimated_bytes": est, "written_bytes": written,
            "written_over_estimated": round(written / est, 4), "seconds": round(seconds, 1),
            "rows_per_s": round(n / seconds, 1),
            "rss_mb": {"before": round(caching.start), "peak": round(caching.peak),
                       "anon_before": round(caching.start_anon), "anon_peak": round(caching.peak_anon)}}


def one_run(n: int, steps: int, work: str, cache_max_gb: float | None) -> dict:
    """Tokenize, cache and distil on `n` rows; the figures of one process."""
    from contextlib import nullcontext

    from transformers import TrainerCallback

    from hfcompress import (
        DistillationArguments,
        DistillationConfig,
        DistillationDataCollator,
        DistillationLoss,
        DistillationTrainer,
    )
    from hfcompress.run.data import cache_teacher_on_train

    base = rss_mb()[0]
    tok, tokenized, tok_stats = tokenize_rows(n)
    teacher, student = models()
    cfg = DistillationConfig(**RECIPE)
    probe = DistillationLoss(cfg, student.config, teacher_config=teacher.config)
    collator = DistillationDataCollator(tok)
    cache_dir = os.path.join(work, f"cache-{n}")
    t0 = time.perf_counter()
    with RssSampler() as caching:
        cached, meta = cache_teacher_on_train(
            tokenized, "minilm-l6", lambda: teacher, collator, cache_dir, probe.teacher_hidden_layers, False, 64,
            lambda desc=None: nullcontext(), teacher_config=teacher.config, cache_max_gb=cache_max_gb,
            teacher_runs_online=probe.needs_online_teacher(), **probe.cache_request(),
        )
    cache_seconds = time.perf_counter() - t0
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(cache_dir, "data"))
                  for f in fs)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    timer = StepTimes()
    args = DistillationArguments(
        output_dir=os.path.join(work, f"run-{n}"), per_device_train_batch_size=BATCH, max_steps=steps,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=50, seed=0, use_cpu=True,
        dataloader_num_workers=0, **RECIPE,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=cached["train"], data_collator=collator,
        teacher_model=teacher if probe.needs_online_teacher(meta) else None, teacher_config=teacher.config,
        cached_hidden_layers=meta["hidden_layers"], cached_relation_layers=meta.get("relation_layers"),
        allow_untrained_teacher_head=True, callbacks=[timer],
    )
    with RssSampler() as training:
        trainer.train()
    times = timer.times[5:]
    window = min(50, len(times) // 2)
    first, last = statistics.median(times[:window]), statistics.median(times[-window:])
    estimate = meta["estimate"]["logits_only_bytes" if meta.get("online_terms") else "total_bytes"]
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "rows": n,
        "tokenization": tok_stats,
        "cache": {"estimated_bytes": estimate, "written_bytes": written,
                  "written_over_estimated": round(written / estimate, 4), "seconds": round(cache_seconds, 1),
                  "rows_per_s": round(n / cache_seconds, 1), "online_terms": meta.get("online_terms"),
                  "estimate": meta["estimate"], "limit_bytes": meta["limit_bytes"]},
        "rss_mb": {"process_start": round(base), "before_caching": round(caching.start),
                   "peak_caching": round(caching.peak), "caching_growth": round(caching.peak - caching.start),
                   "anon_before_caching": round(caching.start_anon), "anon_peak_caching": round(caching.peak_anon),
                   "anon_caching_growth": round(caching.peak_anon - caching.start_anon),
                   "before_training": round(training.start), "peak_training": round(training.peak),
                   "anon_before_training": round(training.start_anon), "anon_peak_training": round(training.peak_anon),
                   "ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
        "steps": {"count": len(timer.times), "batch": BATCH, "first_median_s": round(first, 4),
                  "last_median_s": round(last, 4), "last_over_first": round(last / first, 3), "window": window},
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# Teacher cache cost (issue 24, part 4)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; torch threads {result['threads']}. Teacher MiniLM-L6 (untrained head: cost "
        "only), student its blocks 1, 3, 5; cached: logits, hidden states of teacher layers 2, 4, 6, q/k/v of block 6 "
        "(float16).", "",
        "RSS: resident memory, MB, as `before -> peak` over the phase; anon: its anonymous part (without the pages of "
        "memory-mapped Arrow files, which the kernel reclaims).", "",
        "| rows | tokenize rows/s | cache estimated | cache written | written/estimated | cache rows/s | RSS caching | "
        "anon caching | RSS training | anon training | step s (first 50) | step s (last 50) | last/first |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        c, m, s = r["cache"], r["rss_mb"], r["steps"]
        lines.append(
            f"| {r['rows']:,} | {r['tokenization']['rows_per_s']:,} | {c['estimated_bytes'] / 1e9:.3f} GB | "
            f"{c['written_bytes'] / 1e9:.3f} GB | {c['written_over_estimated']} | {c['rows_per_s']} | "
            f"{m['before_caching']} -> {m['peak_caching']} | {m['anon_before_caching']} -> {m['anon_peak_caching']} | "
            f"{m['before_training']} -> {m['peak_training']} | {m['anon_before_training']} -> "
            f"{m['anon_peak_training']} | {s['first_median_s']} | "
            f"{s['last_median_s']} | {s['last_over_first']} |")
    for e in result.get("estimates", []):
        lines += ["", f"Estimate only, {e['rows']:,} rows (tokenized at {e['tokenization']['rows_per_s']:,} rows/s, "
                  f"{e['tokenization']['mean_tokens_per_row']} tokens a row): "
                  f"~{e['estimate']['total_bytes'] / 1e9:.2f} GB ({e['estimate_line']})."]
    if result.get("writer_checks"):
        lines += ["", "Writing path at scale, with a stand-in teacher (random 2-block BERT of width 384 caching 3 "
                  "hidden layers + q/k/v of 1 block: the recipe's bytes per token, ~6x less compute):", "",
                  "| rows | cache estimated | cache written | written/estimated | rows/s | RSS | anon RSS |",
                  "|---|---|---|---|---|---|---|"]
        for w in result["writer_checks"]:
            m = w["rss_mb"]
            lines.append(f"| {w['rows']:,} | {w['estimated_bytes'] / 1e9:.3f} GB | {w['written_bytes'] / 1e9:.3f} GB | "
                         f"{w['written_over_estimated']} | {w['rows_per_s']} | {m['before']} -> {m['peak']} | "
                         f"{m['anon_before']} -> {m['anon_peak']} |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000",
                        help="comma-separated training-set sizes to cache and train on")
    parser.add_argument("--estimate_rows", default="100000", help="sizes only tokenized and estimated ('' for none)")
    parser.add_argument("--writer_rows", default="",
                        help="sizes cached by a cheap stand-in teacher of the same output size (see writer_check)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cache_max_gb", type=float, default=None)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--note", default="", help="a line added to the results (what was run and why)")
    parser.add_argument("--append", action="store_true",
                        help="add to the results already in --out (another command's) instead of replacing them")
    parser.add_argument("--out", default=os.path.join(RESULTS, "cache_cost.json"))
    parser.add_argument("--_one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_estimate", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_writer", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one is not None:
        print("RESULT " + json.dumps(one_run(args._one, args.steps, args.work, args.cache_max_gb)), flush=True)
        return
    if args._writer is not None:
        print("RESULT " + json.dumps(writer_check(args._writer, args.work)), flush=True)
        return
    if args._estimate is not None:
        print("RESULT " + json.dumps(estimate_only(args._estimate)), flush=True)
        return

    import torch

    from hfcompress.files import write_json_atomic, write_text_atomic

    work = args.work or tempfile.mkdtemp(prefix="cache-cost-")

    def child(*extra) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--work", work, *extra]
        if args.cache_max_gb is not None:
            cmd += ["--cache_max_gb", str(args.cache_max_gb)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        return json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])

    result = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?") + " python benchmarks/cache_cost.py "
                   + shlex.join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores (shared), no GPU",
        "threads": torch.get_num_threads(),
        "note": args.note,
        "runs": [], "estimates": [], "writer_checks": [],
    }
    if args.append and os.path.exists(args.out):
        with open(args.out) as fh:
            previous = json.load(fh)
        result = {**previous, "command": previous["command"] + " ; " + result["command"],
                  "note": " ".join(x for x in (previous.get("note"), args.note) if x)}
        result.setdefault("writer_checks", [])
    for n in [int(x) for x in args.rows.split(",") if x]:
        result["runs"].append(child("--_one", str(n)))
        write_json_atomic(args.out, result)
        print(json.dumps(result["runs"][-1], indent=1), flush=True)
    for n in [int(x) for x in args.writer_rows.split(",") if x]:
        result["writer_checks"].append(child("--_writer", str(n)))
        write_json_atomic(args.out, result)
        print(json.dumps(result["writer_checks"][-1], indent=1), flush=True)
    for n in [int(x) for x in args.estimate_rows.split(",") if x]:
        result["estimates"].append(child("--_estimate", str(n)))
        write_json_atomic(args.out, result)
    write_text_atomic(os.path.splitext(args.out)[0] + ".md", to_markdown(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
