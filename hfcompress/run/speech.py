"""Sequence-to-sequence speech distillation (the distil-whisper recipe): the run `run_distillation` chooses when the
teacher is an encoder-decoder speech model (Whisper). Same trainer, loss and run steps as text distillation; what
differs is here: speech data and targets, the student (the teacher's encoder, frozen by default, and a few of its
decoder layers), the encoder-output cache, and evaluation by generation (WER/CER, not loss).

    student = teacher's encoder + decoder layers --student_decoder_layers (e.g. 0,3 of tiny.en's 4)
    loss    = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE      per target token, / target tokens of the batch
    targets = the transcripts (or, with --pseudo_labels, the teacher's greedy transcripts)
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import numpy as np
import torch
from transformers import AutoConfig

from ..arch.speech import (
    audio_window_seconds,
    decoder_prompt_ids,
    fit_audio_window,
    is_speech_seq2seq,
    num_decoder_layers,
    set_transcription_language,
    transcript_ids,
    transcription_language,
)
from ..assets import resolve_model_path
from ..distill import (
    DistillationLoss,
    SpeechSeq2SeqDistillationCollator,
    init_seq2seq_student,
    load_or_compute_encoder_cache,
)
from ..distill.student import check_decoder_layers
from ..errors import UserInputError
from ..speech.dataset import (
    KEYWORDS_NAME,
    SYNTH_NAME,
    load_audio_classification_dataset,
    load_transcription_dataset,
)
from ..speech.decoding import count_looping, generation_kwargs_of, text_token_counts, whisper_generation_kwargs
from ..speech.normalize import normalize, word_error_rate
from . import steps
from .arguments import DataArguments, ModelArguments, SpeechArguments
from .skeleton import Run, TaskAdapter, register_task

logger = logging.getLogger(__name__)

TEXT_DEFAULT_DATASET = "rotten-tomatoes"
INTERMEDIATE_TERMS = ("hidden_weight", "attention_weight", "relation_weight")


def speech_teacher(model_args: ModelArguments) -> bool:
    """True if the teacher is an encoder-decoder speech model (then the run is sequence-to-sequence)."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_args.teacher_model))
    except Exception:  # not a local model nor a reachable Hub id: the text path reports it
        return False
    return is_speech_seq2seq(config)


# ---- checks before anything slow ------------------------------------------------------------------------------------

def resolve_terms(args) -> None:
    """Sequence-to-sequence distillation uses the decoder logits and the labels only. Terms the script switches on for
    text classifiers by default (hidden states, relations) go off; a term the user set is an error."""
    defaulted = set(getattr(args, "_mode_defaults", ()))
    if getattr(args, "intermediate_fraction", 0) > 0:
        raise UserInputError(f"--intermediate_fraction {args.intermediate_fraction}: staged distillation needs "
                             "intermediate terms, which sequence-to-sequence distillation does not use; set it to 0")
    for name in INTERMEDIATE_TERMS:
        value = getattr(args, name, 0.0) or 0.0
        if value > 0 and name not in defaulted:
            raise UserInputError(f"--{name} {value}: sequence-to-sequence distillation (a Whisper teacher) uses the "
                                 "decoder's logits (temperature KL) and the labels (cross-entropy) only; set it to 0")
        setattr(args, name, 0.0)


def check_speech_settings(model_args: ModelArguments, speech: SpeechArguments) -> None:
    """The settings that only need configs: decoder layers in range, no encoder-block options."""
    if model_args.student_layers:
        raise UserInputError(f"--student_layers {model_args.student_layers}: a Whisper student keeps the teacher's "
                             "whole encoder; choose its decoder layers with --student_decoder_layers (e.g. '0,3')")
    source = model_args.student_model or model_args.teacher_model
    config = AutoConfig.from_pretrained(resolve_model_path(source))
    if not is_speech_seq2seq(config):
        raise UserInputError(f"--student_model {model_args.student_model!r} is a {config.model_type} model; a Whisper "
                             "teacher distils into a Whisper student")
    total = num_decoder_layers(config)
    layers = speech.decoder_layer_list()
    if layers is not None:
        try:
            check_decoder_layers(layers, total)
        except UserInputError as e:
            raise UserInputError(f"--student_decoder_layers {speech.student_decoder_layers}: {e}") from None
    check_student_window(model_args, speech)
    check_language(model_args, speech)
    if model_args.student_model:
        check_same_tokenizer(resolve_model_path(model_args.teacher_model), resolve_model_path(model_args.student_model))


def refuse_student_window(task_name: str, speech: SpeechArguments | None) -> None:
    """--student_window_seconds cuts a Whisper student's encoder window for transcription; any other run (a text
    teacher, an audio classifier, a wav2vec2/HuBERT model) would ignore it: refused, before any work."""
    seconds = getattr(speech, "student_window_seconds", 0) if speech is not None else 0
    if seconds and task_name != SpeechSeq2SeqTask.name:
        raise UserInputError(f"--student_window_seconds {seconds:g}: a shorter encoder window is for Whisper "
                             f"transcription students (a Whisper teacher); this is a {task_name} run. For a Whisper "
                             "audio classifier use --audio_window_seconds; wav2vec2 and HuBERT have no fixed window")


def check_student_window(model_args: ModelArguments, speech: SpeechArguments) -> None:
    """--student_window_seconds: whole seconds, shorter than the teacher's window (else nothing to cut) and no longer
    than a given student's."""
    seconds = speech.student_window_seconds
    if not seconds:
        return
    for what, name in (("--teacher_model", model_args.teacher_model),
                       ("--student_model", getattr(model_args, "student_model", None))):
        if not name:
            continue
        window = audio_window_seconds(AutoConfig.from_pretrained(resolve_model_path(name)))
        if window is None:
            raise UserInputError(f"--student_window_seconds {seconds:g}: {what} {name} has no fixed audio window "
                                 "(expected Whisper)")
        if seconds > window or (what == "--teacher_model" and seconds == window):
            raise UserInputError(f"--student_window_seconds {seconds:g}: expected whole seconds from 1 to "
                                 f"{window - 1:g}, shorter than the {window:g} s window of {what} {name}")


def check_language(model_args: ModelArguments, speech: SpeechArguments) -> None:
    """--language against the teacher's (and a given student's) generation config: a language the model knows, or
    'en' for an English-only model. Without --language a multilingual model transcribes as its generation config
    says, else English (logged when the models load)."""
    from transformers import GenerationConfig

    if speech.language is None:
        return
    for what, name in (("--teacher_model", model_args.teacher_model),
                       ("--student_model", getattr(model_args, "student_model", None))):
        if not name:
            continue
        try:
            gen = GenerationConfig.from_pretrained(resolve_model_path(name))
        except OSError:  # no generation_config.json: `generate` would use the config's; nothing to check here
            continue
        try:
            transcription_language(gen, speech.language, what="--language")
        except UserInputError as e:
            raise UserInputError(f"{e} ({what} {name})") from None


def _tokenizer_summary(tokenizer) -> str:
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return f"{len(tokenizer)} tokens, " + ", ".join(f"{k} {v}" for k, v in specials.items())


def check_same_tokenizer(teacher_path: str, student_path: str) -> None:
    """A Whisper student distils token by token from its teacher: both must map text to the same ids (one
    vocabulary, the same special tokens and the same decoder prompt). Compared from the tokenizer files alone, before
    any data or model is loaded; the error names both models and what differs."""
    from transformers import AutoTokenizer

    from ..distill.checks import teacher_needs_own_inputs

    tokenizers = {}
    for what, path in (("teacher", teacher_path), ("student", student_path)):
        try:
            tokenizers[what] = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise UserInputError(f"{what} {path}: no tokenizer could be loaded from it: {type(e).__name__}: {e}") \
                from e
    teacher, student = tokenizers["teacher"], tokenizers["student"]
    if teacher_needs_own_inputs(None, None, student, teacher) or set(teacher.all_special_tokens) != set(
            student.all_special_tokens):
        raise UserInputError(
            f"the teacher's and the student's tokenizers differ: teacher {teacher_path} ({_tokenizer_summary(teacher)})"
            f", student {student_path} ({_tokenizer_summary(student)}); sequence-to-sequence distillation compares the "
            "two decoders' next-token distributions token by token, so the student must use the teacher's tokenizer "
            "(vocabulary and special tokens)")


# ---- data ---------------------------------------------------------------------------------------------------------

def data_window_seconds(model_args: ModelArguments | None, speech: SpeechArguments,
                        classification: bool = False) -> float | None:
    """The longest clip the run's models can hear whole: the shortest fixed window of the teacher and a given student
    (Whisper: ``max_source_positions`` / 50 s; wav2vec2 and HuBERT have none: None), or for classification an explicit
    ``--audio_window_seconds``. Read from the configs alone, before any audio is loaded."""
    if model_args is None:
        return None
    windows = []
    for name in (model_args.teacher_model, getattr(model_args, "student_model", None)):
        if not name:
            continue
        try:
            config = AutoConfig.from_pretrained(resolve_model_path(name))
        except Exception:  # not a local model: the model loading reports it
            continue
        window = audio_window_seconds(config)
        if window is not None:
            windows.append(window)
    if not windows:
        return None
    full = min(windows)
    if not classification and speech.student_window_seconds and speech.student_window_seconds < full:
        return float(speech.student_window_seconds)
    asked = speech.audio_window_seconds if classification else 0
    if asked:
        if asked > full or asked != int(asked):
            raise UserInputError(f"--audio_window_seconds {asked:g}: expected whole seconds from 1 to {full:g} (the "
                                 "window this Whisper hears)")
        return float(asked)
    return full


def load_speech_data(data_args: DataArguments, speech: SpeechArguments, classification: bool = False,
                     model_args: ModelArguments | None = None):
    """The speech dataset, limited as asked: audio + transcript (``text``), or with `classification` audio + class
    (``label``, from `--label_column`). The text classifiers' default dataset means the synthesized speech set here
    (``speech-synth``; ``speech-keywords`` for classification). With `model_args`, clips longer than the window the
    models hear (`data_window_seconds`) are refused, naming the clip."""
    if classification:
        default, load, target = KEYWORDS_NAME, load_audio_classification_dataset, data_args.label_column
    else:
        default, load, target = SYNTH_NAME, load_transcription_dataset, data_args.text_column
    name = data_args.dataset
    if name == TEXT_DEFAULT_DATASET and not os.path.exists(name):
        logger.info("Speech teacher: --dataset defaults to %r (synthesized)", default)
        name = default
    dataset = load(
        name, speech.audio_column, target, seed=data_args.split_seed, resample=speech.resample_audio,
        synth_settings={"num_voices": speech.synth_num_voices, "per_voice": speech.synth_per_voice},
        window_seconds=data_window_seconds(model_args, speech, classification),
        window_option=(f"--student_window_seconds {speech.student_window_seconds:g}"
                       if speech.student_window_seconds and not classification else None),
    )
    return steps.limit_splits(dataset, data_args), name


def add_targets(dataset, tokenizer, max_target_positions: int, prompt_length: int):
    """`labels` = each transcript's target tokens (Whisper: leading space, text, end-of-text). Rows whose prompt and
    targets exceed the decoder's positions are dropped, with a warning."""
    limit = max_target_positions - prompt_length + 1
    out = dataset.map(lambda row: {"labels": transcript_ids(tokenizer, row["text"])}, desc="Transcript tokens")
    for split in out:
        lengths = [len(x) for x in out[split]["labels"]]
        keep = [i for i, n in enumerate(lengths) if n <= limit]
        if len(keep) < len(lengths):
            if not keep:
                raise UserInputError(f"split {split!r}: every transcript is longer than the decoder's "
                                     f"{max_target_positions} positions")
            logger.warning("Dropped %d of %d rows of split %r: transcripts longer than %d tokens", len(lengths) -
                           len(keep), len(lengths), split, limit)
            out[split] = out[split].select(keep)
    return out


def filter_pseudo_labels(dataset, tokenizer, max_wer: float):
    """`dataset` (a train split with pseudo-label ``labels`` and the reference ``text``) without the rows whose
    pseudo-label's WER against the reference (`normalize`d) exceeds `max_wer` (distil-whisper's filter: the teacher's
    hallucinations and loops are not learned), and a report (kept, dropped, the kept labels' corpus WER). A threshold
    that drops every row is one clear error: the threshold, or the teacher, does not fit the data."""
    hyps = [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in dataset["labels"]]
    refs = list(dataset["text"])
    def wer(ref: str, hyp: str) -> float:  # a reference of no words: right when the label is empty too
        if not normalize(ref).split():
            return 0.0 if not normalize(hyp).split() else float("inf")
        return word_error_rate([ref], [hyp], normalizer=normalize)["wer"]

    wers = [wer(r, h) for r, h in zip(refs, hyps)]
    keep = [i for i, w in enumerate(wers) if w <= max_wer]
    if not keep:
        raise UserInputError(f"--pseudo_label_max_wer {max_wer:g}: every one of the {len(refs)} training clips' "
                             f"pseudo-labels is above it (median WER {statistics.median(wers):.3f}); raise it or "
                             "check the teacher on this data")
    dropped = len(refs) - len(keep)
    logger.info("Pseudo-labels: dropped %d of %d training clips whose teacher transcript is above %.3g WER "
                "(median WER of all %.3f)", dropped, len(refs), max_wer, statistics.median(wers))
    def corpus(rows: list[int]) -> float | None:  # None: references of no words
        try:
            return word_error_rate([refs[i] for i in rows], [hyps[i] for i in rows], normalizer=normalize)["wer"]
        except ValueError:
            return None

    report = {"max_wer": max_wer, "kept": len(keep), "dropped": dropped, "wer_of_kept_labels": corpus(keep),
              "wer_of_all_labels": corpus(list(range(len(refs))))}
    return (dataset.select(keep) if dropped else dataset), report


# ---- models -------------------------------------------------------------------------------------------------------

def _load(path: str, what: str, language: str | None = None):
    from transformers import AutoProcessor

    from ..loading import load_model

    model = load_model(path)  # any format hfcompress saves a Whisper in (structurally pruned: its own classes)
    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as e:
        raise UserInputError(f"{what} {path}: no processor (feature extractor + tokenizer) could be loaded from it: "
                             f"{type(e).__name__}: {e}") from e
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise UserInputError(f"{what} {path}: expected a speech processor with a feature extractor and a tokenizer, "
                             f"found {type(processor).__name__}")
    # multilingual: --language, else the language the model names, else English (logged)
    set_transcription_language(model, processor.tokenizer, language, what="--language")
    return model, processor


def load_speech_teacher(model_args: ModelArguments, speech: SpeechArguments | None = None):
    path = resolve_model_path(model_args.teacher_model)
    teacher, processor = _load(path, "teacher", speech.language if speech is not None else None)
    return teacher, processor, path


def build_speech_student(model_args: ModelArguments, speech: SpeechArguments, teacher, teacher_processor):
    """The teacher's encoder (frozen unless --no_freeze_encoder) and the chosen decoder layers; or a given student
    checkpoint (cut to --student_decoder_layers if given). With --student_window_seconds, its encoder window is then
    cut (`shorten_student_window`)."""
    layers = speech.decoder_layer_list()
    if model_args.student_model:
        # the teacher's language (--language, else the teacher's own, else English): one prompt for both decoders
        language = speech.language or getattr(teacher.generation_config, "language", None)
        student, processor = _load(resolve_model_path(model_args.student_model), "student", language)
        if layers is not None:
            student = init_seq2seq_student(student, layers, freeze_encoder=speech.freeze_encoder)
        elif speech.freeze_encoder:
            student.get_encoder().requires_grad_(False)
    else:
        count = min(speech.student_num_decoder_layers, num_decoder_layers(teacher))
        student = init_seq2seq_student(teacher, layers, count, freeze_encoder=speech.freeze_encoder)
        processor = teacher_processor
    return shorten_student_window(student, processor, speech.student_window_seconds)


def shorten_student_window(student, processor, seconds: float):
    """``(student, processor)`` with the student's encoder window cut to `seconds` (`arch.speech.fit_audio_window`:
    the first ``seconds * 50`` rows of the position table, ``max_source_positions``) and a new processor whose feature
    extractor pads and cuts clips to that window (``chunk_length``, ``n_samples``, ``nb_max_frames``), the tokenizer
    shared. Both are saved with the model, so plain transformers reloads it with the short window. Unchanged when
    `seconds` is 0 or not shorter than the student's window."""
    window = audio_window_seconds(student)
    if not seconds or window is None or seconds >= window:
        return student, processor
    feature_extractor = fit_audio_window(student, processor.feature_extractor, seconds)
    student.config.hfcompress_student_window_seconds = int(seconds)
    logger.info("Student encoder window: %d s (%d positions, %d mel frames), the teacher's %g s; clips are padded to "
                "%d s for the student", seconds, student.config.max_source_positions, feature_extractor.nb_max_frames,
                window, seconds)
    return student, type(processor)(feature_extractor=feature_extractor, tokenizer=processor.tokenizer)


def same_encoder(a, b) -> bool:
    """True if two models' encoders hold the same weights (then one encoder output serves both)."""
    sa, sb = a.get_encoder().state_dict(), b.get_encoder().state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


# ---- evaluation by generation -------------------------------------------------------------------------------------

def wer_metrics(tokenizer, max_new_tokens: int | None = None):
    """`compute_metrics` for generated token ids: corpus WER and CER after `speech.normalize` (numbers as digits,
    punctuation and case dropped), references the labels' text; and ``looping_clips`` (`count_looping`)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def compute(eval_pred) -> dict:
        preds, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        hyps = tokenizer.batch_decode(np.where(preds < 0, pad, preds), skip_special_tokens=True)
        refs = tokenizer.batch_decode(np.where(labels < 0, pad, labels), skip_special_tokens=True)
        rates = word_error_rate(refs, hyps, normalizer=normalize)
        loops = count_looping(hyps, text_token_counts(preds, tokenizer), max_new_tokens)
        return {"wer": rates["wer"], "cer": rates["cer"], "looping_clips": loops}

    return compute


@torch.inference_mode()
def transcribe(model, processor, audios, batch_size: int = 16, max_new_tokens: int = 128,
               generate_kwargs: dict | None = None, token_counts: list | None = None) -> list[str]:
    """Transcripts of 16 kHz float arrays: greedy, or as `generate_kwargs` say (`speech.decoding`). With
    `token_counts` (a list), each clip's number of generated text tokens is appended to it."""
    model.eval()
    device = next(model.parameters()).device
    kwargs = generate_kwargs or whisper_generation_kwargs(max_new_tokens)
    out = []
    for start in range(0, len(audios), batch_size):
        chunk = [np.asarray(a, dtype=np.float32) for a in audios[start : start + batch_size]]
        features = processor.feature_extractor(chunk, sampling_rate=16000, return_tensors="pt").input_features
        ids = model.generate(features.to(device), **kwargs)
        out.extend(processor.tokenizer.batch_decode(ids, skip_special_tokens=True))
        if token_counts is not None:
            token_counts.extend(text_token_counts(ids.cpu(), processor.tokenizer))
    return out


def transcription_metrics(model, processor, split, max_new_tokens: int, batch_size: int = 16,
                          generate_kwargs: dict | None = None) -> dict:
    counts: list[int] = []
    kwargs = generate_kwargs or whisper_generation_kwargs(max_new_tokens)
    hyps = transcribe(model, processor, split["audio"], batch_size, max_new_tokens, kwargs, counts)
    rates = word_error_rate(split["text"], hyps, normalizer=normalize)
    return {"wer": rates["wer"], "cer": rates["cer"], "num_utterances": rates["num_utterances"],
            "num_ref_words": rates["num_ref_words"],
            "looping_clips": count_looping(hyps, counts, kwargs["max_new_tokens"])}


def measure_per_clip(model_dirs: dict[str, str], split, clips: int, threads: int, rounds: int,
                     max_new_tokens: int, name: str = "test", language: str | None = None,
                     generate_kwargs: dict | None = None) -> dict:
    """Each saved model (reloaded from disk, transcribing in `language`) transcribes `clips` clips one at a time,
    greedily (or as `generate_kwargs` say), on the CPU with `threads` threads, interleaved over `rounds` rounds
    (teacher, student, teacher, ...): the median time per clip (features + encoder + decoding) of each round, then
    the median of rounds; WER/CER and looping clips of those clips."""
    rows = split.select(range(min(clips, len(split))))
    audios, refs = rows["audio"], rows["text"]
    kwargs = generate_kwargs or whisper_generation_kwargs(max_new_tokens)
    models = {role: _load(d, role, language) for role, d in model_dirs.items()}
    for model, _ in models.values():
        model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_round: dict[str, list[float]] = {r: [] for r in models}
    texts: dict[str, list[str]] = {}
    counts: dict[str, list[int]] = {}
    try:
        for role, (model, processor) in models.items():  # warm-up
            transcribe(model, processor, audios[:1], 1, max_new_tokens, kwargs)
        for _ in range(rounds):
            for role, (model, processor) in models.items():
                times, hyps, tokens = [], [], []
                for audio in audios:
                    t0 = time.perf_counter()
                    hyps.extend(transcribe(model, processor, [audio], 1, max_new_tokens, kwargs, tokens))
                    times.append(time.perf_counter() - t0)
                per_round[role].append(statistics.median(times) * 1000)
                texts[role], counts[role] = hyps, tokens
    finally:
        torch.set_num_threads(previous)
    out = {"split": name, "clips": len(audios), "threads": threads, "rounds": rounds,
           "decoding": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
           "protocol": "one clip at a time, features + encoder + decoder, median per round, median of rounds"}
    for role in models:
        rates = word_error_rate(refs, texts[role], normalizer=normalize)
        out[role] = {"median_ms_per_clip": statistics.median(per_round[role]), "rounds_ms": per_round[role],
                     "wer": rates["wer"], "cer": rates["cer"],
                     "looping_clips": count_looping(texts[role], counts[role], kwargs["max_new_tokens"]),
                     "parameters": sum(p.numel() for p in models[role][0].parameters()), "transcripts": texts[role]}
    out["references"] = list(refs)
    if "teacher" in out and "student" in out:
        out["speedup"] = out["teacher"]["median_ms_per_clip"] / out["student"]["median_ms_per_clip"]
    return out


# ---- the run ------------------------------------------------------------------------------------------------------

class SpeechSeq2SeqTask(TaskAdapter):
    """Whisper transcription (distil-whisper): the student keeps the teacher's encoder (frozen by default, its outputs
    cached) and chosen decoder layers; the loss is on the decoder's logits per target token; evaluation by greedy
    generation (WER). Composes with pruning (`scripts/prune.py`: heads and FFN neurons of the encoder, the decoder
    or both, recovered by this distillation); an encoder that is pruned must be trained (``--no_freeze_encoder``)."""

    name = "speech-seq2seq"
    priority = 20
    pipeline_tag = "automatic-speech-recognition"
    metric = "wer"
    composes_with = ("pruning",)

    @property
    def auto_class(self):
        from transformers import AutoModelForSpeechSeq2Seq

        return AutoModelForSpeechSeq2Seq

    def select(self, model_args, data_args, speech):
        return self if speech_teacher(model_args) else None

    def check_settings(self, run: Run) -> None:
        run.speech = run.speech or SpeechArguments()
        others = [m.name for m in run.methods if m.name not in self.composes_with]
        if others:
            raise UserInputError(f"{', '.join(others)} with a Whisper teacher: sequence-to-sequence distillation "
                                 f"composes with {', '.join(self.composes_with)} only; quantize the saved model "
                                 "afterwards (scripts/quantize.py)")
        resolve_terms(run.args)

    def check_inputs(self, run: Run) -> None:
        check_speech_settings(run.model_args, run.speech)
        if run.speech.freeze_encoder:
            for method in run.methods:
                encoder = [n for n in method.modules_changed(run.model_args) or [] if ".encoder." in f".{n}."]
                if encoder:
                    raise UserInputError(
                        f"--freeze_encoder (the default): the student's encoder is frozen (its outputs come from the "
                        f"teacher's), but {method.name} changes it ({encoder[0]}, {len(encoder)} in all): pass "
                        "--no_freeze_encoder to train the encoder while it is pruned, or prune the decoder only "
                        "(--structured_stacks decoder; weights: --target_modules naming decoder layers)")

    def load_data(self, run: Run):
        return load_speech_data(run.data_args, run.speech, model_args=run.model_args)

    def check_layers(self, run: Run) -> None:
        """The decoder layers are checked when the student is built (`build_speech_student`)."""

    def load_teacher(self, run: Run):
        return load_speech_teacher(run.model_args, run.speech)

    def build_student(self, run: Run):
        return build_speech_student(run.model_args, run.speech, run.teacher, run.teacher_processor)

    def prepare(self, run: Run) -> None:
        speech, data_args, args, teacher, processor = run.speech, run.data_args, run.args, run.teacher, run.processor
        # The one check of teacher and student for this kind of run (same vocabulary and tokenizer, a trained teacher).
        kd = DistillationLoss(run.cfg, run.student.config, teacher, teacher_tokenizer=run.teacher_processor.tokenizer,
                              student_tokenizer=processor.tokenizer)
        tokenizer = processor.tokenizer
        prompt = decoder_prompt_ids(tokenizer)
        data = add_targets(run.dataset, tokenizer, run.student.config.max_target_positions, len(prompt))
        collator = SpeechSeq2SeqDistillationCollator(
            processor.feature_extractor, prompt, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id, audio_column="audio", sampling_rate=processor.feature_extractor.sampling_rate,
            # a student with a shorter window (--student_window_seconds): the teacher reads its own, longer features
            teacher_feature_extractor=run.teacher_processor.feature_extractor,
        )
        shared = speech.freeze_encoder and same_encoder(run.student, teacher)
        store_encoder = bool(data_args.cache_teacher and shared)
        if speech.freeze_encoder and not shared:
            logger.info("The student's encoder differs from the teacher's: encoder outputs are not cached; both "
                        "encoders run at every step")
        cache_meta, cache_dir = None, self.teacher_cache_dir(run)
        if store_encoder or speech.pseudo_labels:
            pseudo = ({"prompt_ids": prompt, "eos_token_id": tokenizer.eos_token_id,
                       # greedy whatever --decoding_guards says: deterministic targets, cached
                       "pad_token_id": collator.pad_token_id,
                       **whisper_generation_kwargs(speech.generation_max_new_tokens)}
                      if speech.pseudo_labels else None)
            teacher.to(args.device)
            with args.main_process_first(desc="encoder output cache"):
                data["train"], cache_meta = load_or_compute_encoder_cache(
                    cache_dir, run.teacher_path, data["train"], lambda: teacher,
                    # at most 16 clips at once: a 30 s window is 1,500 encoder frames per clip
                    lambda rows: collator.teacher_input_features(rows["audio"]),
                    batch_size=min(data_args.teacher_batch_size, 16), store_encoder=store_encoder,
                    pseudo_labels=pseudo,
                )
        filtered = None
        if speech.pseudo_labels and speech.pseudo_label_max_wer is not None:
            data["train"], filtered = filter_pseudo_labels(data["train"], tokenizer, speech.pseudo_label_max_wer)
        run.data, run.collator = data, collator
        run.extras.update(store_encoder=store_encoder, cache_meta=cache_meta, cache_dir=cache_dir,
                          pseudo_label_filter=filtered)
        run.trainer_kwargs = {"distillation_loss": kd, "generation_kwargs": generation_kwargs_of(speech)}

    def processing_class(self, run: Run):
        # Not the processor: the Trainer would "align" the model's bos_token_id with the tokenizer's (<|endoftext|>,
        # where Whisper's config has <|startoftranscript|>). The model folder gets the whole processor.
        return run.processor.feature_extractor

    def compute_metrics(self, run: Run):
        return wer_metrics(run.processor.tokenizer, run.speech.generation_max_new_tokens)

    def settings(self, run: Run) -> dict:
        return {"speech": run.speech}

    def distillation_entry(self, run: Run, trainer) -> dict:
        speech = run.speech
        return {
            **run.cfg.to_dict(),
            "mode": "sequence-to-sequence",
            "loss": "alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE, per target token",
            "teacher": run.teacher_path,
            "decoder_layers": getattr(trainer.model.config, "hfcompress_student_decoder_layers", None),
            "encoder": "frozen" if speech.freeze_encoder else "trained",
            "student_window_seconds": audio_window_seconds(trainer.model),
            "teacher_window_seconds": audio_window_seconds(run.teacher),
            "encoder_outputs": "cached" if run.extras["store_encoder"] else "online",
            "targets": "teacher pseudo-labels (greedy)" if speech.pseudo_labels else "transcripts",
            "pseudo_label_filter": run.extras.get("pseudo_label_filter"),
            "teacher_cache": {k: v for k, v in (run.extras["cache_meta"] or {}).items()} or None,
        }

    def data_entry(self, run: Run, trainer) -> dict:
        return {"dataset": run.dataset_name, "splits": {s: len(d) for s, d in run.data.items()},
                "audio_column": run.speech.audio_column, "text_column": run.data_args.text_column}

    def student_entry(self, run: Run, trainer) -> dict:
        return {"source": run.model_args.student_model or "the teacher's encoder and decoder layers",
                **steps.measure_model(trainer.model), "decoder_layers": trainer.model.config.decoder_layers}

    def teacher_entry(self, run: Run) -> dict:
        return {**steps.measure_model(run.teacher), "decoder_layers": run.teacher.config.decoder_layers}

    def teacher_metrics(self, run: Run) -> dict:
        return transcription_metrics(run.teacher, run.teacher_processor, run.data["test"],
                                     run.speech.generation_max_new_tokens, run.args.per_device_eval_batch_size,
                                     generation_kwargs_of(run.speech))

    def artifacts(self, run: Run) -> dict:
        return {"teacher_cache": run.extras["cache_dir"] if run.extras["cache_meta"] else None}

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        record.metrics["per_clip"] = measure_per_clip(
            {"teacher": run.teacher_path, "student": model_dir}, run.data["test"], run.speech.measure_clips,
            report.latency_threads, report.latency_rounds, run.speech.generation_max_new_tokens,
            language=run.speech.language or getattr(run.teacher.generation_config, "language", None),
            generate_kwargs=generation_kwargs_of(run.speech))
        m = record.metrics["per_clip"]
        logger.info("Per clip (%d test clips, %d threads): teacher %.0f ms WER %.3f (%d looping), student %.0f ms WER "
                    "%.3f (%d looping) (%.2fx faster)", m["clips"], m["threads"], m["teacher"]["median_ms_per_clip"],
                    m["teacher"]["wer"], m["teacher"]["looping_clips"], m["student"]["median_ms_per_clip"],
                    m["student"]["wer"], m["student"]["looping_clips"], m["speedup"])
        logger.info("No model card for a speech model yet (cards describe text classifiers); the measurement is "
                    "in the run record")


register_task(SpeechSeq2SeqTask())
