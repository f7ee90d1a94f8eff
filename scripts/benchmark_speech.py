#!/usr/bin/env python
"""Speech benchmark on Whisper tiny.en (offline asset ``whisper-tiny-en``): writes benchmarks/results/speech.json and
speech.md.

    python scripts/benchmark_speech.py                 # build what is not cached, then measure
    python scripts/benchmark_speech.py --measure_only  # re-measure the cached variants

Variants (`VARIANTS`), each built from the fp32 model, saved under benchmarks/cache/speech/<name>/model (keyed by its
settings: a rerun only measures) and measured from disk, loaded fresh by `hfcompress.loading.load_model`:

  base               the fp32 asset, re-saved as a plain transformers checkpoint (+ processor)
  int8_*             PyTorch dynamic int8 (`quantize_dynamic_int8`, `save_dynamic_int8`): which Linear layers (int8_all:
                     every one, the tied 51,864-token output projection included) and per-tensor / per-channel weight
                     scales as named; no calibration, no training
  bf16               the weights cast to bfloat16 (features cast to match): half precision, not int8
  pruned_enc25       encoder only: 25 % of its attention heads and 25 % of its feed-forward neurons removed (global
                     Taylor scores, Michel et al., from `prune_clips` synthesized *train* clips with their reference
                     transcripts; one-shot, no training afterwards)
  distilled_dec2     the 2-decoder-layer student of `distilled_model` (scripts/distill.py, decoder layers 0,3, teacher
                     encoder kept), re-saved; skipped with a note when that folder does not exist
  combined_*         the pruned model or the distilled student, then int8 of every Linear layer (as int8_all); the
                     best of them (`best_combined`): the fastest meeting the floor, else the one whose
                     larger WER increase is smallest

Test sets:

  wer_synth  the test split (voices never used in training) of the synthesized set the distillation run trained on
             (`build_transcription_dataset(num_voices=40, per_voice=25, seed=0)`: espeak-ng/flite voices, speed
             perturbation, noise at 10-30 dB SNR): the whole test split (8 voices x 25 = 200 clips), or `synth_clips`
             clips spread evenly over its voices
  wer_real   every pocketsphinx-testdata recording (`load_pocketsphinx_set("all")`: 5 LibriVox sentences, 5
             playing-card clips, "go forward ten meters", one TIDIGITS string)

WER (and CER) are corpus rates, as a fraction, after `hfcompress.speech.normalize` (case, punctuation, number words
as digits). Decoding: greedy (``num_beams=1``, no sampling), ``max_new_tokens`` = `max_new_tokens` (checked to exceed
the longest reference transcript in tokens), one clip at a time, each model's generation config read from its own
folder. Latency: wall time of feature extraction (the processor's, from the model folder) + ``generate`` for one clip,
on the CPU with `threads` torch threads, in this one process; every variant transcribes clip 1, then every variant
clip 2, ... (the order of the variants rotates from clip to clip), after one warm-up clip per model: round 1 over
every test clip (the transcripts and WER come from it), rounds 2..`rounds` over the timed clips only
(`latency_synth_clips` synthesized clips spread over the test voices, and every real clip).
``latency_s_per_clip`` = median over the timed clips of the clip's median over rounds;
``speedup`` = base latency / variant latency (the same run). ``size_mb``: every file of the saved folder (weights,
config, generation config, processor/tokenizer). ``params``: `report.measure.parameter_counts` (int8 weights count
as the weights they stand for).

Floor (the speech issue): one compressed Whisper >= 1.5x faster with WER within +2 points of the base on both test
sets. It is computed from the measurements below, never typed. Each WER change also gets a 95 percent interval from
`bootstrap` paired resamples of the test clips: on a few hundred words one clip moves WER by a point or more.

Keyword classification: `scripts/benchmark_keywords.py` writes benchmarks/results/speech_keywords.json; its rows are
copied into speech.json under ``classification`` (accuracy, latency per clip, size, parameters).
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

import numpy as np
import torch

from hfcompress.assets import hfcompress_home, resolve_model_path
from hfcompress.cli import parse_args, setup_logging
from hfcompress.loading import checkpoint_format, load_model, save_model
from hfcompress.report.bench import cache_key, write_json
from hfcompress.report.measure import checkpoint_size_mb, parameter_counts
from hfcompress.report.record import environment
from hfcompress.speech.normalize import normalize, word_error_rate
from hfcompress.speech.synth import build_transcription_dataset, load_pocketsphinx_set

logger = logging.getLogger("hfcompress.benchmark")

_XATTN = r"model\.decoder\.layers\.\d+\.encoder_attn"
PRUNE_ENC25 = {"structured_stacks": "encoder", "head_sparsity": 0.25, "ffn_sparsity": 0.25, "method": "taylor",
               "scope": "global"}

# name -> recipe: `source` ("base": the fp32 asset; "distilled": --distilled_model), then in this order `prune`
# (`PruningConfig` settings, one-shot, see `prune_encoder`), `int8` (`quantize_dynamic_int8` keyword arguments; an
# empty skip_modules quantizes every nn.Linear, the tied 51,864-token output projection `proj_out` included) or `dtype`
# (the weights cast, e.g. bfloat16).
INT8_ALL = {"skip_modules": [], "per_channel": False}
VARIANTS = {
    "int8_all": {"source": "base", "int8": INT8_ALL},
    "int8_all_per_channel": {"source": "base", "int8": {"skip_modules": [], "per_channel": True}},
    "int8_fp32_proj_out": {"source": "base", "int8": {"skip_modules": ["proj_out"], "per_channel": False}},
    "int8_encoder_only": {"source": "base", "int8": {"skip_modules": ["proj_out", "model.decoder"],
                                                     "per_channel": True}},
    "int8_fp32_cross_attn": {"source": "base", "int8": {"skip_modules": ["proj_out", _XATTN], "per_channel": True}},
    "bf16": {"source": "base", "dtype": "bfloat16"},
    "pruned_enc25": {"source": "base", "prune": PRUNE_ENC25},
    "distilled_dec2": {"source": "distilled"},
    "combined_pruned_enc25_int8_all": {"source": "base", "prune": PRUNE_ENC25, "int8": INT8_ALL},
    "combined_distilled_dec2_int8_all": {"source": "distilled", "int8": INT8_ALL},
}
DEFAULT_VARIANTS = ("int8_all", "int8_all_per_channel", "int8_fp32_proj_out", "int8_encoder_only", "bf16",
                    "pruned_enc25", "distilled_dec2", "combined_pruned_enc25_int8_all",
                    "combined_distilled_dec2_int8_all")


@dataclass
class SpeechBenchmarkArguments:
    model: str = field(default="whisper-tiny-en", metadata={"help": "The fp32 Whisper (an asset name or a folder)."})
    distilled_model: str = field(
        default="benchmarks/cache/speech/distill_dec2_v40x25/model",
        metadata={"help": "The distilled student (scripts/distill.py --teacher_model whisper-tiny-en "
                  "--student_decoder_layers 0,3 ...); its row is skipped with a note when the folder is missing."},
    )
    cache_dir: str = field(default="benchmarks/cache/speech", metadata={"help": "Where built variants are kept."})
    output: str = field(default="benchmarks/results/speech.json", metadata={"help": "Result JSON (speech.md beside)."})
    variants: str = field(default=",".join(DEFAULT_VARIANTS), metadata={"help": "Comma list of variants to build and measure."})
    synth_num_voices: int = field(default=40, metadata={"help": "Voices of the synthesized set (split by voice: 8 of "
                                  "40 are test voices)."})
    synth_per_voice: int = field(default=25, metadata={"help": "Utterances per voice of the synthesized set."})
    synth_seed: int = field(default=0, metadata={"help": "Seed of the synthesized set."})
    synth_clips: int = field(default=0, metadata={"help": "Synthesized test clips measured, spread over the voices "
                                                  "(0: the whole test split)."})
    real_set: str = field(default="all", metadata={"help": "pocketsphinx set: librivox, cards, misc or all."})
    prune_clips: int = field(default=16, metadata={"help": "Synthesized train clips that score heads and neurons."})
    max_new_tokens: int = field(default=96, metadata={"help": "Greedy decoding limit, the same for every model."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads, the same for every model."})
    rounds: int = field(default=3, metadata={"help": "Timed passes over the interleaved latency clips."})
    latency_synth_clips: int = field(default=24, metadata={"help": "Synthesized test clips (spread over the voices) "
                                     "timed in every round, with every real clip; all clips are transcribed once."})
    bootstrap: int = field(default=2000, metadata={"help": "Resamples of the test clips for the 95 percent interval "
                           "of each WER change (paired: base and variant on the same clips)."})
    keywords_result: str = field(default="benchmarks/results/speech_keywords.json",
                                 metadata={"help": "The keyword-classification benchmark (scripts/benchmark_keywords"
                                           ".py), copied in under 'classification' when it exists."})
    measure_only: bool = field(default=False, metadata={"help": "Do not build: measure cached variants."})
    card_only: bool = field(default=False, metadata={"help": "Measure nothing: write the model card of the chosen "
                            "variant from the existing result JSON (--output)."})
    card_dir: str = field(default="model_cards", metadata={"help": "Where the card folder whisper-tiny-en-<variant> "
                          "goes (README.md inside)."})


# ---------------------------------------------------------------------------------------------------------- data


def spread(dataset, n: int):
    """`n` rows taken round-robin over the `voice` column (every voice as evenly as possible), in a fixed order."""
    by_voice: dict[str, list[int]] = {}
    for i, v in enumerate(dataset["voice"]):
        by_voice.setdefault(v, []).append(i)
    picked, queues = [], [list(ix) for _, ix in sorted(by_voice.items())]
    while len(picked) < min(n, len(dataset)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return dataset.select(sorted(picked))


def load_sets(args):
    synth = build_transcription_dataset(num_voices=args.synth_num_voices, per_voice=args.synth_per_voice,
                                        seed=args.synth_seed, cache_dir=hfcompress_home() / "speech")
    test = spread(synth["test"], args.synth_clips) if args.synth_clips else synth["test"]
    return synth, test, load_pocketsphinx_set(args.real_set)


# -------------------------------------------------------------------------------------------------------- building


def prune_encoder(model, processor, clips, settings: dict) -> dict:
    """One-shot structured pruning: Taylor scores of heads and neurons from `clips` (audio + reference text), then the
    lowest-scored ones are cut out. No training."""
    from hfcompress.arch.speech import decoder_prompt_ids, transcript_ids
    from hfcompress.prune import PruningConfig, StructuredPruner

    config = PruningConfig(granularity="structured", **settings)
    pruner = StructuredPruner(model, config)
    prompt = decoder_prompt_ids(processor.tokenizer)
    model.eval()
    for row in clips:
        feats = processor.feature_extractor([np.asarray(row["audio"], np.float32)], sampling_rate=16000,
                                            return_tensors="pt").input_features
        target = transcript_ids(processor.tokenizer, row["text"])
        seq = prompt + target
        decoder_input_ids = torch.tensor([seq[:-1]])
        labels = torch.tensor([[-100] * (len(prompt) - 1) + target])
        model.zero_grad(set_to_none=True)
        model(input_features=feats, decoder_input_ids=decoder_input_ids, labels=labels).loss.backward()
        pruner.before_optimizer_step()
    model.zero_grad(set_to_none=True)
    pruner.update_masks(1.0)
    return pruner.fold()


def build(args, name: str, sources: dict, prune_rows) -> str | None:
    from transformers import AutoProcessor

    from hfcompress.quantize.dynamic import quantize_dynamic_int8, save_dynamic_int8

    recipe = VARIANTS.get(name, {"source": "base"})
    source, prune, quant, dtype = recipe["source"], recipe.get("prune"), recipe.get("int8"), recipe.get("dtype")
    if sources.get(source) is None:
        return None
    out = os.path.join(args.cache_dir, name)
    settings = {"source": sources[source], "source_weights": _weights_stamp(sources[source]), "prune": prune,
                "prune_clips": args.prune_clips if prune else None, "quantize": quant, "dtype": dtype,
                "synth": [args.synth_num_voices, args.synth_per_voice, args.synth_seed] if prune else None}
    key, key_path, model_dir = cache_key(settings), os.path.join(out, "bench_key.json"), os.path.join(out, "model")
    if os.path.exists(key_path) and json.load(open(key_path)).get("key") == key:
        return model_dir
    if args.measure_only:
        raise SystemExit(f"{out} is not built with these settings (drop --measure_only)")
    logger.info("Building %s", name)
    model, processor = load_model(sources[source]), AutoProcessor.from_pretrained(sources[source])
    steps = {}
    if prune:
        steps["prune"] = prune_encoder(model, processor, prune_rows, prune)
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    if dtype:
        model = model.to(getattr(torch, dtype))
    if quant:
        model = quantize_dynamic_int8(model, **quant, inplace=True)
        save_dynamic_int8(model, model_dir, processor)
    else:
        save_model(model, model_dir, processor)
    with open(key_path, "w") as fh:
        json.dump({"key": key, "settings": settings, "steps": steps}, fh, indent=2, default=str)
    return model_dir


def _weights_stamp(path: str) -> list:
    """Size and modification time of a source folder's files (so a retrained student rebuilds its row)."""
    return sorted([f, os.path.getsize(os.path.join(path, f)), int(os.path.getmtime(os.path.join(path, f)))]
                  for f in os.listdir(path) if f.endswith((".safetensors", ".json")))


# -------------------------------------------------------------------------------------------------------- measuring


@torch.inference_mode()
def transcribe_timed(model, processor, gen_config, audio, max_new_tokens: int) -> tuple[str, float, int]:
    t0 = time.perf_counter()
    feats = processor.feature_extractor([np.asarray(audio, np.float32)], sampling_rate=16000,
                                        return_tensors="pt").input_features
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    ids = model.generate(feats.to(dtype), generation_config=gen_config, max_new_tokens=max_new_tokens, num_beams=1,
                         do_sample=False)
    elapsed = time.perf_counter() - t0
    return processor.tokenizer.batch_decode(ids, skip_special_tokens=True)[0], elapsed, int(ids.shape[1])


def clip_errors(reference: str, hypothesis: str) -> tuple[float, int]:
    """(word errors, reference words) of one clip, after the same normalizer as the corpus WER."""
    r = word_error_rate([reference], [hypothesis], normalizer=normalize)
    return r["wer"] * r["num_ref_words"], r["num_ref_words"]


def wer_change_interval(base_errors, variant_errors, resamples: int, seed: int = 0) -> list[float]:
    """95 percent interval (points) of the corpus WER change variant - base, by resampling the test clips with
    replacement (paired: both models on the same resampled clips)."""
    b = np.asarray([e for e, _ in base_errors], dtype=float)
    v = np.asarray([e for e, _ in variant_errors], dtype=float)
    words = np.asarray([n for _, n in base_errors], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(resamples, len(b)))
    deltas = 100 * (v[idx].sum(1) - b[idx].sum(1)) / np.maximum(words[idx].sum(1), 1)
    return [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]


def measure(args, paths: dict[str, str], synth_test, real) -> dict:
    from transformers import AutoProcessor, GenerationConfig

    models = {}
    for name, path in paths.items():
        gen = GenerationConfig.from_pretrained(path)
        gen.max_length = None  # max_new_tokens decides
        models[name] = (load_model(path), AutoProcessor.from_pretrained(path), gen)
    clips = [("synth", a, t) for a, t in zip(synth_test["audio"], synth_test["text"])]
    clips += [("real", a, t) for a, t in zip(real["audio"], real["text"])]
    timed_synth = set(spread(synth_test.add_column("_i", list(range(len(synth_test)))),
                             args.latency_synth_clips)["_i"]) if args.latency_synth_clips else set(range(len(synth_test)))
    timed = sorted(timed_synth) + list(range(len(synth_test), len(clips)))
    names = list(models)
    for name in names:  # warm-up
        transcribe_timed(*models[name], clips[0][1], args.max_new_tokens)
    times = {n: [[] for _ in clips] for n in names}
    hyps = {n: [None] * len(clips) for n in names}
    lengths = {n: [0] * len(clips) for n in names}
    unstable = {n: 0 for n in names}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for i in (range(len(clips)) if r == 0 else timed):  # round 1 transcribes every clip
            audio = clips[i][1]
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                text, seconds, n_tokens = transcribe_timed(*models[name], audio, args.max_new_tokens)
                times[name][i].append(seconds)
                if hyps[name][i] is None:
                    hyps[name][i], lengths[name][i] = text, n_tokens
                elif hyps[name][i] != text:
                    unstable[name] += 1
        logger.info("round %d of %d done (%.0f s)", r + 1, args.rounds, time.perf_counter() - t_start)
    out = {}
    for name in names:
        per_clip = [statistics.median(t) for t in times[name]]
        rows = {}
        for kind in ("synth", "real"):
            idx = [i for i, c in enumerate(clips) if c[0] == kind]
            rates = word_error_rate([clips[i][2] for i in idx], [hyps[name][i] for i in idx], normalizer=normalize)
            rows[kind] = {"wer": rates["wer"], "cer": rates["cer"], "ref_words": rates["num_ref_words"],
                          "latency_s": statistics.median(per_clip[i] for i in idx if i in timed),
                          "transcripts": [hyps[name][i] for i in idx],
                          "clip_errors": [clip_errors(clips[i][2], hyps[name][i]) for i in idx]}
        out[name] = {"rows": rows, "latency_s_per_clip": statistics.median(per_clip[i] for i in timed),
                     "per_clip_s": {i: per_clip[i] for i in timed}, "timed_clips": len(timed),
                     "tokens_max": max(lengths[name]), "hit_max_new_tokens": sum(
                         n >= args.max_new_tokens for n in lengths[name]),
                     "transcripts_changed_between_rounds": unstable[name],
                     "params": parameter_counts(models[name][0])["parameters"]}
    return out


def main(argv=None):
    (args,) = parse_args((SpeechBenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    if args.card_only:
        write_card(args)
        return
    import transformers
    from transformers import AutoProcessor

    # "both max_new_tokens and max_length are set" on every generate call: max_new_tokens decides, as documented
    transformers.utils.logging.set_verbosity_error()

    t_run = time.perf_counter()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    synth, synth_test, real = load_sets(args)
    tokenizer = AutoProcessor.from_pretrained(resolve_model_path(args.model)).tokenizer
    longest = max(len(tokenizer(" " + t, add_special_tokens=False).input_ids) + 3  # prompt + end of text
                  for t in list(synth_test["text"]) + list(real["text"]))
    if longest >= args.max_new_tokens:
        raise SystemExit(f"--max_new_tokens {args.max_new_tokens} does not exceed the longest reference ({longest} "
                         "tokens with the prompt)")
    notes = []
    sources = {"base": resolve_model_path(args.model)}
    if os.path.isdir(args.distilled_model):
        sources["distilled"] = args.distilled_model
    else:
        notes.append(f"distilled_dec2 skipped: {args.distilled_model} does not exist (run scripts/distill.py "
                     "--teacher_model whisper-tiny-en --student_decoder_layers 0,3 first)")
    prune_rows = spread(synth["train"], args.prune_clips)
    paths = {"base": build(args, "base", sources, prune_rows)}
    for name in names:
        path = build(args, name, sources, prune_rows)
        if path is not None:
            paths[name] = path
    t_measure = time.perf_counter()
    load_before = os.getloadavg()
    measured = measure(args, paths, synth_test, real)
    load_after = os.getloadavg()

    def entry(name):
        m, path = measured[name], paths[name]
        return {"wer_synth": m["rows"]["synth"]["wer"], "wer_real": m["rows"]["real"]["wer"],
                "cer_synth": m["rows"]["synth"]["cer"], "cer_real": m["rows"]["real"]["cer"],
                "latency_s_per_clip": m["latency_s_per_clip"],
                "speedup": measured["base"]["latency_s_per_clip"] / m["latency_s_per_clip"],
                "latency_s_synth": m["rows"]["synth"]["latency_s"], "latency_s_real": m["rows"]["real"]["latency_s"],
                "size_mb": checkpoint_size_mb(path), "params": m["params"], "format": checkpoint_format(path),
                "path": path, "max_generated_tokens": m["tokens_max"],
                "clips_hitting_max_new_tokens": m["hit_max_new_tokens"],
                "transcripts_changed_between_rounds": m["transcripts_changed_between_rounds"],
                "recipe": VARIANTS.get(name),
                "build": json.load(open(os.path.join(os.path.dirname(path), "bench_key.json"))).get("steps") or None}

    base = entry("base")
    variants = {}
    for name in paths:
        if name == "base":
            continue
        v = entry(name)
        v["wer_synth_delta_points"] = 100 * (v["wer_synth"] - base["wer_synth"])
        v["wer_real_delta_points"] = 100 * (v["wer_real"] - base["wer_real"])
        for kind in ("synth", "real"):
            v[f"wer_{kind}_delta_points_95ci"] = wer_change_interval(
                measured["base"]["rows"][kind]["clip_errors"], measured[name]["rows"][kind]["clip_errors"],
                args.bootstrap)
        v["meets_floor"] = bool(v["speedup"] >= 1.5 and v["wer_synth_delta_points"] <= 2.0
                                and v["wer_real_delta_points"] <= 2.0)
        variants[name] = v
    combined = {n: v for n, v in variants.items() if n.startswith("combined")}
    # one meeting the floor (the fastest such), else the one whose worse WER change is smallest
    best_combined = min(combined, default=None, key=lambda n: (
        not combined[n]["meets_floor"], -combined[n]["speedup"] if combined[n]["meets_floor"] else
        max(combined[n]["wer_synth_delta_points"], combined[n]["wer_real_delta_points"])))
    meeting = [n for n, v in variants.items() if v["meets_floor"]]
    for n, v in variants.items():
        if v["params"] > base["params"]:
            notes.append(f"{n}: {v['params']:,} parameters, more than the base's {base['params']:,}: quantizing the "
                         "output projection proj_out unties it from the decoder's token embedding (which stays fp32), "
                         "so both tables are stored; hence also its size")
        if v["clips_hitting_max_new_tokens"]:
            notes.append(f"{n}: {v['clips_hitting_max_new_tokens']} clip(s) decoded up to max_new_tokens "
                         f"({args.max_new_tokens}): looping output")
    if "distilled" in sources:
        notes.append("distilled_dec2 is the student of the distillation run at "
                     f"{args.distilled_model} (trained on the train voices of this very synthesized set; its test "
                     "voices are held out)")
    result = {
        "model": args.model, "base": base, "variants": variants, "best_combined": best_combined,
        "floor": {
            "rule": "a compressed Whisper >= 1.5x faster on CPU with WER within +2 points of the base on the "
                    "synthesized test set and on the real recordings",
            "met": bool(meeting), "variants_meeting": meeting,
            "closest": {n: {"speedup": v["speedup"], "wer_synth_delta_points": v["wer_synth_delta_points"],
                            "wer_real_delta_points": v["wer_real_delta_points"]} for n, v in variants.items()},
        },
        "test_sets": {
            "synth": {"clips": len(synth_test), "ref_words": measured["base"]["rows"]["synth"]["ref_words"],
                      "voices": sorted(set(synth_test["voice"])), "settings": {
                          "num_voices": args.synth_num_voices, "per_voice": args.synth_per_voice,
                          "seed": args.synth_seed, "split": "test"}, "references": list(synth_test["text"])},
            "real": {"clips": len(real), "ref_words": measured["base"]["rows"]["real"]["ref_words"],
                     "set": f"pocketsphinx-testdata {args.real_set}", "ids": list(real["id"]),
                     "references": list(real["text"])},
        },
        "transcripts": {n: {"synth": m["rows"]["synth"]["transcripts"], "real": m["rows"]["real"]["transcripts"]}
                        for n, m in measured.items()},
        "latency": {"threads": args.threads, "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                    "clips": measured["base"]["timed_clips"], "clips_transcribed": len(synth_test) + len(real),
                    "decoding": "greedy, num_beams=1, one clip at a time",
                    "max_new_tokens": args.max_new_tokens, "longest_reference_tokens": longest,
                    "timed": "feature extraction + generate",
                    "statistic": "median over the timed clips (latency_synth_clips synthesized ones spread over "
                                 "the test voices, and every real one) of the clip's median over rounds; round 1 "
                                 "also transcribes every other test clip (WER); variants interleaved clip by clip, "
                                 "order rotating",
                    "load_average_before": load_before, "load_average_after": load_after,
                    "per_clip_s": {n: m["per_clip_s"] for n, m in measured.items()}},
        "notes": notes,
        "wall_time_s": {"total": time.perf_counter() - t_run, "measure": time.perf_counter() - t_measure},
        "settings": asdict(args),
        "command": "python scripts/benchmark_speech.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {**environment(), "gpu_used": False},
    }
    if os.path.exists(args.keywords_result):
        with open(args.keywords_result) as fh:
            kw = json.load(fh)
        result["classification"] = {"task": kw.get("task"), "base": kw["base"], "variants": kw["variants"],
                                    "protocol": kw.get("protocol"), "source": args.keywords_result}
    else:
        notes.append(f"no keyword-classification rows: {args.keywords_result} does not exist (run "
                     "scripts/benchmark_keywords.py)")
    write_json(args.output, result)
    md = os.path.join(os.path.dirname(args.output), "speech.md")
    with open(md, "w") as fh:
        fh.write(markdown(result))
    logger.info("Wrote %s and %s", args.output, md)
    write_card(args, result)


def write_card(args, result: dict | None = None) -> str | None:
    """The model card of the chosen variant (`choose_speech_variant`: the fastest meeting the floor, else the one at
    least 1.5x faster whose worse WER increase is smallest), from `result` or the JSON at ``--output``, written to
    ``<card_dir>/<model>-<variant>/README.md``; every number read from the result. None when it has no variants."""
    from hfcompress.report.card import choose_speech_variant, docstring_entry, write_speech_card

    if result is None:
        if not os.path.exists(args.output):
            raise SystemExit(f"{args.output} does not exist: run the benchmark first (without --card_only)")
        with open(args.output) as fh:
            result = json.load(fh)
    name = choose_speech_variant(result)
    if name is None:
        logger.warning("%s has no variants: no model card written", args.output)
        return None
    model_name = f"{os.path.basename(os.path.normpath(result.get('model', args.model)))}-{name}"
    return write_speech_card(result, name, os.path.join(args.card_dir, model_name), model_name=model_name,
                             description=docstring_entry(__doc__, name))


def markdown(r: dict) -> str:
    lat, ts, b = r["latency"], r["test_sets"], r["base"]
    out = [f"# Speech: Whisper tiny.en compressed ({r['model']})", "",
           f"WER as a fraction. Synthesized test voices: {ts['synth']['clips']} clips, {ts['synth']['ref_words']} "
           f"words; real recordings ({ts['real']['set']}): {ts['real']['clips']} clips, {ts['real']['ref_words']} "
           f"words. Latency: feature extraction + greedy `generate` (max_new_tokens {lat['max_new_tokens']}), one clip "
           f"at a time, {lat['threads']} torch threads, median over {lat['clips']} timed clips, variants interleaved "
           f"clip by clip, {lat['rounds']} round(s); load average {lat['load_average_before'][0]:.1f} before, "
           f"{lat['load_average_after'][0]:.1f} after. Size = whole checkpoint folder.", "",
           "Δ pts: change in WER points, with the 95% interval from resampling the test clips (paired).", "",
           "| variant | WER synth | Δ pts [95% interval] | WER real | Δ pts [95% interval] | latency s/clip | speedup "
           "| size MB | params | floor |",
           "|---|---|---|---|---|---|---|---|---|---|",
           f"| base | {b['wer_synth']:.3f} | | {b['wer_real']:.3f} | | {b['latency_s_per_clip']:.3f} | 1.00x | "
           f"{b['size_mb']:.1f} | {b['params']:,} | |"]

    def ci(v, kind):
        lo_hi = v.get(f"wer_{kind}_delta_points_95ci")
        return f" [{lo_hi[0]:+.1f}, {lo_hi[1]:+.1f}]" if lo_hi else ""

    for name, v in r["variants"].items():
        out.append(f"| {name} | {v['wer_synth']:.3f} | {v['wer_synth_delta_points']:+.1f}{ci(v, 'synth')} | "
                   f"{v['wer_real']:.3f} | {v['wer_real_delta_points']:+.1f}{ci(v, 'real')} | "
                   f"{v['latency_s_per_clip']:.3f} | {v['speedup']:.2f}x | "
                   f"{v['size_mb']:.1f} | {v['params']:,} | {'met' if v['meets_floor'] else 'no'} |")
    f = r["floor"]
    out += ["", f"Floor ({f['rule']}): **{'met' if f['met'] else 'missed'}**"
            + (f" by {', '.join(f['variants_meeting'])}." if f["met"] else ".")]
    if not f["met"]:
        for n, c in f["closest"].items():
            out.append(f"- {n}: {c['speedup']:.2f}x, WER synth {c['wer_synth_delta_points']:+.1f} pts, WER real "
                       f"{c['wer_real_delta_points']:+.1f} pts")
    if r.get("best_combined"):
        out += ["", f"Best combined variant: {r['best_combined']}."]
    c = r.get("classification")
    if c:
        p = c.get("protocol") or {}
        out += ["", "## Keyword classification (WhisperForAudioClassification on tiny.en's encoder)", "",
                f"From {c['source']} (scripts/benchmark_keywords.py): {p.get('classes')} spoken words, "
                f"{p.get('test_clips')} test clips by {p.get('test_voices')} unseen voices, {p.get('audio_window_s')} "
                f"s window; latency = features + forward of one clip, {p.get('threads')} threads.", "",
                "| model | accuracy | Δ points | latency ms/clip | speedup | size MB | params |", "|---|---|---|---|---|---|---|"]
        cb = c["base"]
        for n, v in [("base", cb), *c["variants"].items()]:
            d = "" if n == "base" else f"{100 * (v['accuracy'] - cb['accuracy']):+.1f}"
            out.append(f"| {n} | {v['accuracy']:.4f} | {d} | {v['latency_ms_per_clip']:.2f} | {v['speedup']:.2f}x | "
                       f"{v['size_mb']:.1f} | {v['params']:,} |")
    for note in r["notes"]:
        out += ["", f"Note: {note}"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    from hfcompress.cli import run_script

    run_script(main)
