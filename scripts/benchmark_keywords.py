#!/usr/bin/env python
"""Keyword-classification benchmark on Whisper tiny.en's encoder: writes benchmarks/results/speech_keywords.json and
speech_keywords.md (`scripts/benchmark_speech.py` copies the rows into speech.json under ``classification``).

    python scripts/benchmark_keywords.py                 # train what is not cached, then measure
    python scripts/benchmark_keywords.py --measure_only  # re-measure the cached models

Every model is trained by the project's own scripts (`scripts/distill.py`, `scripts/prune.py`: the audio-
classification mode of the shared run, `hfcompress/run/audio.py`) on the synthesized keyword set
(`--dataset speech-keywords`: twenty words, "zero".."nine", yes, no, up, down, left, right, on, off, stop, go, spoken
by espeak-ng/flite voices with speed perturbation and noise, split by voice: the test voices are never heard in
training), saved, and measured from disk:

  base                 WhisperForAudioClassification on tiny.en's 4-layer encoder (1 s window, `fit_audio_window`),
                       fine-tuned (the run's teacher fine-tune, cached)
  distilled_enc2       encoder blocks 1 and 3 of the base, distilled from it (logits + hidden states, `student_epochs`)
  pruned50             the base with 50 % of its attention heads and FFN neurons removed (Taylor scores, global,
                       cubic schedule) while distilling from the unpruned base
  distilled_enc2_pruned50  distilled_enc2, then pruned as pruned50 (distilling from the base)
  distilled_enc2_int8  distilled_enc2 with PyTorch dynamic int8 Linear layers (no training)
  pruned50_int8        pruned50 with PyTorch dynamic int8 Linear layers (no training; reloads at its pruned shape)

Measured in one process: test accuracy (all test clips, batch 32), CPU latency per clip (feature extraction + forward
of one clip, `threads` torch threads, median over `latency_clips` test clips of the median over `rounds` interleaved
passes, after a warm-up), size of the saved folder, parameters (`report.measure.parameter_counts`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from hfcompress.cli import parse_args, setup_logging
from hfcompress.report.bench import cache_key, write_json
from hfcompress.report.measure import checkpoint_size_mb, parameter_counts
from hfcompress.report.record import environment

logger = logging.getLogger("hfcompress.benchmark")


@dataclass
class KeywordBenchmarkArguments:
    teacher_model: str = field(default="whisper-tiny-en", metadata={"help": "The speech model whose encoder classifies."})
    cache_dir: str = field(default="benchmarks/cache/keywords", metadata={"help": "Where trained models are kept."})
    output: str = field(default="benchmarks/results/speech_keywords.json", metadata={"help": "Result JSON (.md beside)."})
    synth_num_voices: int = field(default=32, metadata={"help": "Voices of the keyword set (split by voice)."})
    synth_per_voice: int = field(default=40, metadata={"help": "Keywords per voice (each of the 20 twice)."})
    teacher_epochs: float = field(default=3.0, metadata={"help": "Epochs of the base classifier's fine-tune."})
    epochs: float = field(default=4.0, metadata={"help": "Epochs of each pruning run."})
    student_epochs: float = field(default=10.0, metadata={"help": "Epochs of distilling the 2-block student."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of every run."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    seed: int = field(default=42, metadata={"help": "Seed of every run."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads when measuring latency."})
    rounds: int = field(default=3, metadata={"help": "Interleaved timed passes over the latency clips."})
    latency_clips: int = field(default=40, metadata={"help": "Test clips timed one at a time."})
    measure_only: bool = field(default=False, metadata={"help": "Do not train: measure the cached models."})


def common(args) -> list[str]:
    return ["--teacher_model", args.teacher_model, "--dataset", "speech-keywords",
            "--synth_num_voices", str(args.synth_num_voices), "--synth_per_voice", str(args.synth_per_voice),
            "--teacher_finetune_epochs", str(args.teacher_epochs), "--teacher_learning_rate", str(args.learning_rate),
            "--learning_rate", str(args.learning_rate), "--num_train_epochs", str(args.epochs),
            "--per_device_train_batch_size", str(args.batch_size), "--seed", str(args.seed),
            "--save_strategy", "no", "--eval_strategy", "epoch", "--no_measure"]


def runs(args) -> dict[str, tuple[str, list[str]]]:
    """name -> (script, its arguments); `{distilled_enc2}` stands for that run's model folder."""
    prune = ["--granularity", "structured", "--method", "taylor", "--scope", "global", "--target_sparsity", "0.5"]
    return {
        # the 2-block student needs longer than the pruned full-depth model to catch up (4 epochs: 0.84 test accuracy)
        "distilled_enc2": ("distill", ["--student_layers", "1,3", "--alpha", "0.9", "--temperature", "2",
                                       "--num_train_epochs", str(args.student_epochs), "--learning_rate", "2e-4"]),
        "pruned50": ("prune", [*prune, "--alpha", "0.9", "--temperature", "2"]),
        "distilled_enc2_pruned50": ("prune", [*prune, "--student_model", "{distilled_enc2}", "--alpha", "0.9",
                                              "--temperature", "2"]),
    }


def train(args, name: str, script_name: str, extra: list[str], models: dict) -> tuple[str, dict]:
    """Run `script_name` with the common and `extra` arguments into the cache (skipped when the same settings ran)."""
    from hfcompress.run.scripts import script

    upstream = [open(os.path.join(os.path.dirname(models[x[1:-1]]), "benchmark_key.txt")).read()
                for x in extra if x.startswith("{")]  # a run from another's model is stale when that one changes
    extra = [models.get(x[1:-1], x) if x.startswith("{") else x for x in extra]
    argv = [*common(args), *extra]
    key = cache_key({"script": script_name, "argv": argv, "upstream": upstream})
    out = os.path.join(args.cache_dir, name)
    summary_path = os.path.join(out, f"{script_name}_summary.json")
    stamp = os.path.join(out, "benchmark_key.txt")
    if os.path.exists(stamp) and open(stamp).read() == key and os.path.exists(summary_path):
        logger.info("%s: cached in %s", name, out)
    else:
        if args.measure_only:
            raise SystemExit(f"{name} is not in the cache ({out}); run without --measure_only")
        shutil.rmtree(out, ignore_errors=True)
        entry = script(script_name)
        parsed = parse_args(entry.groups, [*argv, "--output_dir", out])
        logger.info("%s: %s %s", name, script_name, " ".join(argv))
        entry.run(*parsed)
        with open(stamp, "w") as fh:
            fh.write(key)
    with open(summary_path) as fh:
        return os.path.join(out, "model"), json.load(fh)


def quantized(args, source: str, name: str) -> str:
    from transformers import AutoFeatureExtractor

    from hfcompress.loading import load_model
    from hfcompress.quantize.dynamic import quantize_dynamic_int8, save_dynamic_int8

    out = os.path.join(args.cache_dir, name, "model")
    key = cache_key({"source": source, "stamp": os.path.getmtime(os.path.join(source, "model.safetensors"))})
    stamp = os.path.join(args.cache_dir, name, "benchmark_key.txt")
    if not (os.path.exists(stamp) and open(stamp).read() == key):
        model = quantize_dynamic_int8(load_model(source), inplace=True)
        save_dynamic_int8(model, out, AutoFeatureExtractor.from_pretrained(source))
        with open(stamp, "w") as fh:
            fh.write(key)
    return out


@torch.no_grad()
def measure(args, paths: dict[str, str], test) -> dict:
    from transformers import AutoFeatureExtractor

    from hfcompress.loading import load_model
    from hfcompress.run.audio import AudioDistillationCollator, audio_accuracy

    torch.set_num_threads(args.threads)
    loaded = {}
    for name, path in paths.items():
        fe = AutoFeatureExtractor.from_pretrained(path)
        loaded[name] = (load_model(path), fe, AudioDistillationCollator(fe, sampling_rate=fe.sampling_rate))
    rows = {}
    for name, (model, fe, _) in loaded.items():
        rows[name] = {**audio_accuracy(model, fe, test, batch_size=32), "path": paths[name],
                      "size_mb": round(checkpoint_size_mb(paths[name]), 2), "params": parameter_counts(model)["parameters"]}
        logger.info("%s: accuracy %.4f", name, rows[name]["accuracy"])
    step = max(1, len(test) // args.latency_clips)
    clips = [test[i]["audio"] for i in range(0, len(test), step)][: args.latency_clips]
    names = list(loaded)
    times: dict[str, list[list[float]]] = {n: [[] for _ in clips] for n in names}
    for model, _, collate in loaded.values():  # warm-up
        model(**collate.model_inputs(clips[:1]))
    for r in range(args.rounds):
        for i, clip in enumerate(clips):
            order = names[(i + r) % len(names):] + names[: (i + r) % len(names)]
            for n in order:
                model, _, collate = loaded[n]
                t0 = time.perf_counter()
                model(**collate.model_inputs([clip]))
                times[n][i].append(time.perf_counter() - t0)
    base = statistics.median(statistics.median(t) for t in times["base"])
    for n in names:
        lat = statistics.median(statistics.median(t) for t in times[n])
        rows[n].update({"latency_ms_per_clip": round(lat * 1000, 3), "speedup": round(base / lat, 3)})
    return rows


def markdown(result: dict) -> str:
    p = result["protocol"]
    lines = [
        "# Keyword classification on Whisper tiny.en's encoder",
        "",
        f"Synthesized keyword set: {p['classes']} words, {p['test_clips']} test clips by {p['test_voices']} voices "
        f"never heard in training ({p['train_clips']} train clips). Latency: feature extraction + forward of one clip, "
        f"{p['threads']} torch threads, median over {p['latency_clips']} clips of the median of {p['rounds']} "
        "interleaved rounds. Size = whole saved folder.",
        "",
        "| model | accuracy | Δ points | latency ms/clip | speedup | size MB | size ratio | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = result["base"]
    for name, r in [("base", base), *result["variants"].items()]:
        delta = "" if name == "base" else f"{(r['accuracy'] - base['accuracy']) * 100:+.1f}"
        lines.append(f"| {name} | {r['accuracy']:.4f} | {delta} | {r['latency_ms_per_clip']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['size_mb']:.1f} | {base['size_mb'] / r['size_mb']:.2f}x | {r['params']:,} |")
    lines += ["", "What each model is: see the docstring of scripts/benchmark_keywords.py; the runs' own summaries "
              "are in each model's folder (`*_summary.json`)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    setup_logging()
    (args,) = parse_args((KeywordBenchmarkArguments,), argv)
    os.makedirs(args.cache_dir, exist_ok=True)
    models, summaries = {}, {}
    for name, (script_name, extra) in runs(args).items():
        models[name], summaries[name] = train(args, name, script_name, extra, models)
    teacher = summaries["distilled_enc2"]["models"]["teacher"]["path"]
    models["distilled_enc2_int8"] = quantized(args, models["distilled_enc2"], "distilled_enc2_int8")
    models["pruned50_int8"] = quantized(args, models["pruned50"], "pruned50_int8")
    paths = {"base": teacher, **models}

    from hfcompress.run.arguments import DataArguments, SpeechArguments
    from hfcompress.run.speech import load_speech_data

    dataset, _ = load_speech_data(DataArguments(dataset="speech-keywords"),
                                  SpeechArguments(synth_num_voices=args.synth_num_voices,
                                                  synth_per_voice=args.synth_per_voice), classification=True)
    from hfcompress.assets import hfcompress_home
    from hfcompress.speech.synth import build_keyword_dataset

    raw = build_keyword_dataset(num_voices=args.synth_num_voices, per_voice=args.synth_per_voice,
                                cache_dir=hfcompress_home() / "speech")  # the same cached set, with its voices
    test_voices = len(set(raw["test"]["voice"]))
    rows = measure(args, paths, dataset["test"])
    result = {
        "task": "keyword classification (audio-classification)",
        "base": rows.pop("base"),
        "variants": rows,
        "runs": {n: {"script": runs(args)[n][0], "student": s["models"]["student"].get("source"),
                     "test_accuracy_in_run": s["metrics"]["student"].get("test", {}).get("test_accuracy")}
                 for n, s in summaries.items()},
        "protocol": {
            "classes": len(set(dataset["test"]["label"])), "test_clips": len(dataset["test"]),
            "train_clips": len(dataset["train"]),
            "test_voices": test_voices,
            "threads": args.threads, "rounds": args.rounds,
            "latency_clips": min(args.latency_clips, len(dataset["test"])),
            "audio_window_s": summaries["distilled_enc2"]["data"].get("audio_window_s"),
            "settings": asdict(args),
        },
        "environment": environment(),
    }
    write_json(args.output, result)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as fh:
        fh.write(markdown(result))
    logger.info("wrote %s", args.output)
    sys.stdout.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
