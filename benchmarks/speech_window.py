#!/usr/bin/env python
"""Whisper with a shorter encoder window (--student_window_seconds): what the cut buys on CPU and what it costs in WER.

    python benchmarks/speech_window.py                                   # tiny.en: 30 s vs an untrained 10 s cut
    python benchmarks/speech_window.py --students kd10=runs/w10/model    # + trained students (scripts/distill.py)

On one clip of the natural set (the 50-clip subset `scripts/benchmark_speech_sets.py` uses, its median-length clip):
the encoder forward alone and the whole transcription (features + encoder + greedy decoding), 30 s window vs the cut
one, interleaved (teacher, cut, teacher, ...), median of `rounds`, `threads` threads. Then the WER of each model on
the 50 natural clips (greedy, `hfcompress.speech.normalize`), clips longer than the shortest window left out and
counted (none here: the natural clips are single sentences). The untrained cut is the teacher with its position table
cut to the first `window` * 50 rows and its features padded to `window` s (`run.speech.shorten_student_window`), no
training. Writes benchmarks/results/speech_window.json (merged: a later call with --students adds rows) and .md.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hfcompress.arch.speech import audio_window_seconds  # noqa: E402
from hfcompress.assets import asset_path, hfcompress_home  # noqa: E402
from hfcompress.run.speech import _load, shorten_student_window, transcribe  # noqa: E402
from hfcompress.speech.normalize import normalize, word_error_rate  # noqa: E402
from hfcompress.speech.synth import build_speech_test_sets  # noqa: E402


@dataclass
class Args:
    model: str = field(default="whisper-tiny-en", metadata={"help": "Teacher asset."})
    window: int = field(default=10, metadata={"help": "Cut window, whole seconds."})
    students: list[str] = field(default_factory=list, metadata={"help": "name=path of trained students to add."})
    clips: int = field(default=50, metadata={"help": "Natural clips (the benchmark's seeded subset)."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    rounds: int = field(default=7, metadata={"help": "Interleaved rounds per latency figure."})
    skip_latency: bool = field(default=False, metadata={"help": "Only WER (e.g. when adding students)."})
    output: str = field(default="benchmarks/results/speech_window.json", metadata={"help": "Result JSON."})
    rewrite_only: bool = field(default=False, metadata={"help": "Measure nothing: write the .md from the JSON."})
    note: list[str] = field(default_factory=list, metadata={"help": "Notes to record (commands, training runs): "
                            "--note 'one' 'two' (a repeated --note keeps the last)."})


def seeded_subset(dataset, n, seed=0):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from benchmark_speech_sets import seeded_subset as pick

    return pick(dataset, n, seed)


@torch.inference_mode()
def latency(models: dict, audio, rounds: int) -> dict:
    gen = {"max_new_tokens": 128, "do_sample": False, "num_beams": 1}
    feats = {k: p.feature_extractor([audio], sampling_rate=16000, return_tensors="pt").input_features
             for k, (m, p) in models.items()}
    enc, full, texts = {k: [] for k in models}, {k: [] for k in models}, {}
    for k, (m, p) in models.items():  # warm-up
        m.get_encoder()(feats[k])
        texts[k] = transcribe(m, p, [audio], 1, 128, gen)[0]
    for _ in range(rounds):
        for k, (m, p) in models.items():
            t0 = time.perf_counter()
            m.get_encoder()(feats[k])
            enc[k].append(time.perf_counter() - t0)
        for k, (m, p) in models.items():
            t0 = time.perf_counter()
            transcribe(m, p, [audio], 1, 128, gen)
            full[k].append(time.perf_counter() - t0)
    return {k: {"input_frames": int(feats[k].shape[-1]), "encoder_ms": statistics.median(enc[k]) * 1000,
                "transcription_ms": statistics.median(full[k]) * 1000, "encoder_rounds_ms": [x * 1000 for x in enc[k]],
                "transcription_rounds_ms": [x * 1000 for x in full[k]], "text": texts[k]} for k in models}


def wer_of(model, processor, audios, refs) -> dict:
    gen = {"max_new_tokens": 128, "do_sample": False, "num_beams": 1}
    hyps = transcribe(model, processor, audios, 8, 128, gen)
    r = word_error_rate(refs, hyps, normalizer=normalize)
    return {"wer": r["wer"], "cer": r["cer"], "clips": len(audios), "transcripts": hyps}


def markdown(r: dict) -> str:
    lines = [f"# {r['model']}: {r['window_seconds']} s encoder window vs 30 s", "",
             f"{r['threads']} threads, load average {', '.join(f'{x:.1f}' for x in r['load_average'])} (2-core box "
             "shared with other jobs: absolute times inflated; ratios from interleaved runs).", ""]
    lat = r.get("latency")
    if lat:
        lines += [f"## Latency, one clip of {lat['clip_seconds']:.2f} s ({lat['protocol']}, {lat['rounds']} rounds)",
                  "", "| model | input frames | encoder ms | transcription ms | text |", "|---|---|---|---|---|"]
        for k, v in lat["models"].items():
            lines.append(f"| {k} | {v['input_frames']} | {v['encoder_ms']:.0f} | {v['transcription_ms']:.0f} | "
                         f"{v['text'].strip()} |")
        lines += ["", f"Encoder speedup {lat['encoder_speedup']:.2f}x, whole transcription "
                      f"{lat['transcription_speedup']:.2f}x.", ""]
    lines += [f"## WER, {r['set']} (clips {r['clip_seconds']['min']:.1f}-{r['clip_seconds']['max']:.1f} s, "
              f"{r['clips_longer_than_window']} longer than the window)", "", "| model | window s | WER | CER | looping | overlong |",
              "|---|---|---|---|---|---|"]
    for k, v in r["wer"].items():
        if k != "references":
            lines.append(f"| {k} | {v['window_seconds']:g} | {v['wer']:.3f} | {v['cer']:.3f} | {v['looping_clips']} | "
                         f"{v['overlong_clips']} |")
    if r.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def derive(out: dict) -> None:
    """Per WER row, from its transcripts: looping clips (`normalize.is_looping` on the text: compression ratio > 2.4)
    and clips whose transcript has more than 1.5x the reference's words + 2 (a repeated sentence)."""
    from hfcompress.speech.normalize import is_looping

    refs = out["wer"]["references"]
    for k, v in out["wer"].items():
        if k != "references":
            v["looping_clips"] = sum(is_looping(t) for t in v["transcripts"])
            v["overlong_clips"] = sum(len(normalize(t).split()) > 1.5 * len(normalize(r).split()) + 2
                                      for t, r in zip(v["transcripts"], refs))


def write(path: str, out: dict) -> None:
    derive(out)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    with open(os.path.splitext(path)[0] + ".md", "w") as fh:
        fh.write(markdown(out))
    print("wrote", path)


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses(argv)
    torch.set_num_threads(args.threads)
    out = json.load(open(args.output)) if os.path.exists(args.output) else {}
    out.setdefault("notes", []).extend(n for n in args.note if n not in out["notes"])
    if args.rewrite_only:
        return write(args.output, out)
    path = str(asset_path(args.model))
    teacher, processor = _load(path, "teacher")
    teacher.eval()
    cut, cut_processor = shorten_student_window(copy.deepcopy(teacher), processor, args.window)
    models = {"teacher_30s": (teacher, processor), f"cut_{args.window}s_untrained": (cut, cut_processor)}
    for spec in args.students:
        name, _, p = spec.partition("=")
        m, proc = _load(p, name)
        models[name] = (m.eval(), proc)

    ds = build_speech_test_sets(hfcompress_home() / "speech", ["natural"])["natural"]
    rows = ds.select(seeded_subset(ds, args.clips))
    lengths = [len(a) / 16000 for a in rows["audio"]]
    shortest = min(audio_window_seconds(m) for m, _ in models.values())
    keep = [i for i, s in enumerate(lengths) if s <= shortest]
    audios, refs = [rows["audio"][i] for i in keep], [rows["text"][i] for i in keep]
    out.update({"model": args.model, "window_seconds": args.window, "threads": args.threads,
                "load_average": os.getloadavg(), "set": f"natural, seeded subset of {args.clips} (seed 0)",
                "clip_seconds": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
                "clips_longer_than_window": len(lengths) - len(keep)})
    if not args.skip_latency:
        mid = int(np.argsort(lengths)[len(lengths) // 2])
        lat = latency({k: v for k, v in models.items() if k in ("teacher_30s", f"cut_{args.window}s_untrained")},
                      rows["audio"][mid], args.rounds)
        t, c = lat["teacher_30s"], lat[f"cut_{args.window}s_untrained"]
        out["latency"] = {"clip_seconds": lengths[mid], "rounds": args.rounds, "models": lat,
                          "encoder_speedup": t["encoder_ms"] / c["encoder_ms"],
                          "transcription_speedup": t["transcription_ms"] / c["transcription_ms"],
                          "protocol": "one clip, batch 1, interleaved teacher/cut, median of rounds; transcription = "
                                      "features + encoder + greedy decoding (max 128 new tokens)"}
        print(json.dumps({k: v for k, v in out["latency"].items() if k != "models"}, indent=1))
    wer = out.setdefault("wer", {})
    for name, (m, p) in models.items():
        if name in wer and name not in {s.partition("=")[0] for s in args.students}:
            continue  # measured by an earlier call on the same clips (delete the JSON to measure again)
        t0 = time.perf_counter()
        wer[name] = {**wer_of(m, p, audios, refs), "window_seconds": audio_window_seconds(m),
                     "seconds": time.perf_counter() - t0}
        print(name, wer[name]["wer"], flush=True)
    wer["references"] = refs
    write(args.output, out)


if __name__ == "__main__":
    main()
