"""Audio encoders through the text classifiers' run: audio classification (keyword spotting, ...) and CTC speech
recognition (wav2vec2 / HuBERT ``...ForCTC``), the modes `run_distillation` (and so `scripts/distill.py` and
`scripts/prune.py`) chooses for a speech teacher (`audio_run_kind`). Same trainer, loss, student initialisation and
compression methods (pruning with physical removal) as for text; what differs is here: audio data, the feature
extractor in place of the tokenizer (raw samples become features in the collator), for classification a teacher with
an audio-classification head, fine-tuned once (cached) from a checkpoint that has none, and for CTC character
targets from the teacher's tokenizer and evaluation by WER of greedy CTC decoding.

    teacher = WhisperForAudioClassification on tiny.en's encoder (or a wav2vec2/HuBERT classifier), fine-tuned
    student = blocks of the teacher's encoder (--student_layers / --student_num_layers), or --student_model
    loss    = the text classifiers' loss: alpha * T^2 * KL on logits + (1 - alpha) * CE [+ hidden states]

A Whisper encoder hears a fixed window (30 s, padded). Keywords last a second or two, so the classifier is given a
shorter window (`--audio_window_seconds`, by default the longest clip of the data rounded up to whole seconds): the
first rows of the encoder's position table are kept (`arch.speech.fit_audio_window`), and the encoder's cost falls
with the window (attention quadratically).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, AutoModelForCTC, set_seed

from ..arch import get_adapter
from ..arch.speech import (
    audio_window_seconds,
    fit_audio_window,
    is_audio_classifier,
    is_ctc,
    is_speech_model,
    is_speech_seq2seq,
)
from ..assets import resolve_model_path
from ..data import label_names, num_labels
from ..distill import (
    AudioDistillationCollator,
    CTCDistillationCollator,
    init_student_from_teacher,
)
from ..distill.student import check_layer_indices
from ..errors import UserInputError
from ..metrics import compute_classification_metrics
from ..speech.dataset import KEYWORDS_NAME
from ..speech.synth import TARGET_RATE
from . import steps
from .arguments import DataArguments, ModelArguments, SpeechArguments
from .data import check_teacher_labels
from .finetune import FinetuneConfig, _cache_key, cached_finetune, finetune_and_save, has_task_head
from .skeleton import Run, TaskAdapter, register_task

logger = logging.getLogger(__name__)


def _config(name: str):
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name))
    except Exception:  # not a local model nor a reachable Hub id: the text path reports it
        return None


def audio_run_kind(model_args: ModelArguments, data_args: DataArguments, speech: SpeechArguments | None) -> str | None:
    """Which audio-encoder run this is: ``"classification"`` (a speech teacher with ``--speech_task
    audio-classification``, or with ``auto`` the keyword set as data, an audio classifier or a headless encoder as
    teacher), ``"ctc"`` (a ``...ForCTC`` teacher transcribing), or None (text, or Whisper transcription)."""
    task = getattr(speech, "speech_task", "auto") if speech is not None else "auto"
    config = _config(model_args.teacher_model)
    if config is None or not is_speech_model(config):
        if task != "auto":
            raise UserInputError(f"--speech_task {task} needs a speech teacher (Whisper, wav2vec2, HuBERT); "
                                 f"--teacher_model {model_args.teacher_model!r} is not one")
        return None
    keywords = data_args.dataset.strip().lower() == KEYWORDS_NAME and not os.path.exists(data_args.dataset)
    if task == "audio-classification" or (task == "auto" and (keywords or is_audio_classifier(config))):
        return "classification"
    if is_ctc(config):
        return "ctc"
    if is_speech_seq2seq(config):
        return None
    if task == "transcription":
        raise UserInputError(f"--speech_task transcription: --teacher_model {model_args.teacher_model!r} has no "
                             "speech-recognition head (expected Whisper or a ...ForCTC wav2vec2/HuBERT model)")
    return "classification"


# ---- data ---------------------------------------------------------------------------------------------------------

def longest_clip_seconds(dataset) -> float:
    import pyarrow.compute as pc

    longest = 0
    for split in dataset.values():
        lengths = pc.list_value_length(split.data.column("audio")).to_numpy(zero_copy_only=False)
        longest = max(longest, int(lengths.max()) if len(lengths) else 0)
    return longest / TARGET_RATE


def window_for(config, dataset, speech: SpeechArguments) -> float | None:
    """The audio window of a Whisper classifier: `--audio_window_seconds`, else the longest clip rounded up to whole
    seconds (at most the model's window). None for models without a fixed window."""
    full = audio_window_seconds(config)
    if full is None:
        return None
    asked = speech.audio_window_seconds
    if asked:
        if asked > full or asked != int(asked):
            raise UserInputError(f"--audio_window_seconds {asked:g}: expected whole seconds from 1 to {full:g} (the "
                                 "window this Whisper hears)")
        return float(asked)
    longest = longest_clip_seconds(dataset)
    window = float(min(full, max(1, math.ceil(longest))))
    logger.info("Audio window %g s (longest clip %.2f s; the model hears %g s)", window, longest, full)
    return window


# ---- models -------------------------------------------------------------------------------------------------------

def _label_kwargs(dataset) -> dict:
    names = label_names(dataset, "label")
    n = num_labels(dataset, "label")
    extra = {"id2label": dict(enumerate(names)), "label2id": {v: i for i, v in enumerate(names)}} if names else {}
    return {"num_labels": n, **extra}


def finetune_audio_classifier(model_name_or_path: str, dataset, output_dir: str, cfg: FinetuneConfig,
                              window: float | None) -> dict:
    """An audio classifier on `model_name_or_path`'s encoder (a new head; Whisper cut to `window` seconds), fine-tuned
    on ``dataset["train"]`` with a plain `Trainer` and saved with its feature extractor; cached like a text teacher."""
    path = resolve_model_path(model_name_or_path)
    key = _cache_key(path, dataset, cfg, f"audio@{window}", "label")
    cached = cached_finetune(output_dir, key, model_name_or_path)
    if cached is not None:
        return cached
    logger.info("Fine-tuning an audio classifier on %s for %s epochs (cached in %s)", model_name_or_path,
                cfg.num_train_epochs, output_dir)
    set_seed(cfg.seed)
    model = AutoModelForAudioClassification.from_pretrained(path, **_label_kwargs(dataset))
    fe = AutoFeatureExtractor.from_pretrained(path)
    if window is not None:
        fe = fit_audio_window(model, fe, window)
    collator = AudioDistillationCollator(fe, sampling_rate=fe.sampling_rate)
    return finetune_and_save(model, fe, dataset.rename_column("label", "labels"), collator, cfg, output_dir,
                          {"model": model_name_or_path, "cache_key": key, "audio_window_s": window},
                          keep_columns=True)


def load_audio_teacher(model_args: ModelArguments, data_args: DataArguments, speech: SpeechArguments, dataset, args,
                       state):
    """A teacher with a trained audio-classification head (fine-tuned once and cached when it has none), its feature
    extractor and path. Checks its labels against the data."""
    path = resolve_model_path(model_args.teacher_model)
    config = AutoConfig.from_pretrained(path)
    if not (is_audio_classifier(config) and has_task_head(path, AutoModelForAudioClassification)):
        if not model_args.finetune_teacher:
            raise UserInputError(f"teacher {model_args.teacher_model!r} has no trained audio-classification head and "
                                 "teacher fine-tuning is disabled; pass a fine-tuned classifier or --finetune_teacher")
        window = window_for(config, dataset, speech)
        cfg = steps.teacher_finetune_config(model_args, args,
                                            per_device_train_batch_size=args.per_device_train_batch_size,
                                            per_device_eval_batch_size=args.per_device_eval_batch_size,
                                            group_by_length=False)  # raw audio: featurized by the collator
        base = steps.default_teacher_dir(model_args, data_args)
        path = base if model_args.teacher_dir else f"{base}-{window:g}s" if window else base
        with args.main_process_first(desc="teacher fine-tune"):
            finetune_audio_classifier(model_args.teacher_model, dataset, path, cfg, window)
        state.wait_for_everyone()
    teacher = AutoModelForAudioClassification.from_pretrained(path)
    check_teacher_labels(teacher.config, dataset, "label")
    return teacher, AutoFeatureExtractor.from_pretrained(path), path


def build_audio_student(model_args: ModelArguments, dataset, teacher, teacher_processor, auto_class=None):
    """The student: `--student_model` (its own head if it has one for these classes), cut to `--student_layers` if
    given; or, without it, blocks of the teacher's encoder (`--student_layers` / `--student_num_layers`, 0 = all).
    Returns it with its processor (the teacher's when cut from it)."""
    auto_class = auto_class or AutoModelForAudioClassification
    if model_args.student_model and auto_class is AutoModelForCTC:
        from transformers import AutoProcessor

        path = resolve_model_path(model_args.student_model)
        student, processor = AutoModelForCTC.from_pretrained(path), AutoProcessor.from_pretrained(path)
        if model_args.student_layers:
            student = init_student_from_teacher(student, layers=model_args.student_layer_list())
        return student, processor
    if model_args.student_model:
        path = resolve_model_path(model_args.student_model)
        student = AutoModelForAudioClassification.from_pretrained(path, **_label_kwargs(dataset))
        fe = AutoFeatureExtractor.from_pretrained(path)
        window = audio_window_seconds(teacher)
        if window is not None:
            fe = fit_audio_window(student, fe, window)
        if audio_window_seconds(student) != window:
            raise UserInputError(f"--student_model {model_args.student_model!r} hears "
                                 f"{audio_window_seconds(student)} s windows, the teacher {window} s")
        if model_args.student_layers:
            student = init_student_from_teacher(student, layers=model_args.student_layer_list())
        return student, fe
    layers = model_args.student_layer_list()
    if not layers and not model_args.student_num_layers:
        layers = list(range(get_adapter(teacher).num_layers(teacher.config)))
    student = init_student_from_teacher(teacher, layers=layers, num_layers=model_args.student_num_layers)
    return student, teacher_processor


# ---- evaluation ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def classify(model, feature_extractor, audios, batch_size: int = 16) -> np.ndarray:
    """Predicted class ids of raw 16 kHz clips."""
    model.eval()
    collate = AudioDistillationCollator(feature_extractor, sampling_rate=feature_extractor.sampling_rate)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(audios), batch_size):
        batch = {k: v.to(device) for k, v in collate.model_inputs(audios[start:start + batch_size]).items()}
        out.append(model(**batch).logits.argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def audio_accuracy(model, feature_extractor, split, batch_size: int = 16) -> dict:
    predictions = classify(model, feature_extractor, split["audio"], batch_size)
    labels = np.asarray(split["label"])
    return {"accuracy": float((predictions == labels).mean()), "rows": int(len(labels))}


# ---- CTC (wav2vec2 / HuBERT speech recognition) ---------------------------------------------------------------------

def load_ctc_teacher(model_args: ModelArguments):
    """A ``...ForCTC`` teacher with a trained CTC head, its processor (feature extractor + character tokenizer)."""
    from transformers import AutoProcessor

    path = resolve_model_path(model_args.teacher_model)
    if not has_task_head(path, AutoModelForCTC):
        raise UserInputError(f"teacher {model_args.teacher_model!r} has no trained CTC head (lm_head); CTC "
                             "distillation needs a teacher that transcribes")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as e:
        raise UserInputError(f"teacher {path}: no processor (feature extractor + CTC tokenizer) could be loaded: "
                             f"{type(e).__name__}: {e}") from e
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "feature_extractor"):
        raise UserInputError(f"teacher {path}: expected a processor with a feature extractor and a CTC tokenizer, "
                             f"found {type(processor).__name__}")
    return AutoModelForCTC.from_pretrained(path), processor, path


def character_targets(dataset, tokenizer):
    """``labels`` = each transcript's character ids, in the casing (as written, upper, lower) the tokenizer knows
    best on the train split (character vocabularies are often upper-case only); rows with no known character are
    dropped with a warning."""
    unk = tokenizer.unk_token_id
    sample = dataset["train"]["text"][:200]

    def unknown(case):
        ids = [i for t in sample for i in tokenizer(case(t)).input_ids]
        return sum(i == unk for i in ids) / max(1, len(ids))

    cases = {"as written": str, "upper": str.upper, "lower": str.lower}
    unknown_of = {c: unknown(f) for c, f in cases.items()}
    name = min(cases, key=unknown_of.get)
    case = cases[name]
    if unknown_of[name] > 0.05:
        logger.warning("%.0f%% of the transcripts' characters are unknown to the teacher's tokenizer (casing: %s)",
                       100 * unknown_of[name], name)
    logger.info("CTC targets: transcripts %s", name)
    out = dataset.map(lambda row: {"labels": tokenizer(case(row["text"])).input_ids}, desc="Character targets")
    for split in out:
        keep = [i for i, ids in enumerate(out[split]["labels"]) if any(x != unk for x in ids)]
        if len(keep) < len(out[split]):
            logger.warning("Dropped %d rows of split %r with no character the tokenizer knows",
                           len(out[split]) - len(keep), split)
            out[split] = out[split].select(keep)
    return out


def ctc_metrics(tokenizer):
    """`compute_metrics` for CTC logits: greedy decoding (argmax per frame, repeats merged, blanks dropped), corpus
    WER and CER after `speech.normalize` against the labels' text."""
    from ..speech.normalize import normalize, word_error_rate

    pad = tokenizer.pad_token_id

    def compute(eval_pred) -> dict:
        logits, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        hyps = tokenizer.batch_decode(logits.argmax(-1))
        refs = tokenizer.batch_decode(np.where(labels < 0, pad, labels), group_tokens=False)
        rates = word_error_rate(refs, hyps, normalizer=normalize)
        return {"wer": rates["wer"], "cer": rates["cer"]}

    return compute


@torch.no_grad()
def ctc_wer(model, tokenizer, split, collator, batch_size: int = 16) -> dict:
    """WER/CER of greedy CTC decoding of a split's ``audio`` against its ``text``."""
    from ..speech.normalize import normalize, word_error_rate

    model.eval()
    device = next(model.parameters()).device
    hyps = []
    for start in range(0, len(split), batch_size):
        batch = collator.model_inputs(split[start:start + batch_size]["audio"])
        hyps += tokenizer.batch_decode(model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu())
    rates = word_error_rate(list(split["text"]), hyps, normalizer=normalize)
    return {"wer": rates["wer"], "cer": rates["cer"], "rows": len(split)}


# ---- the run ------------------------------------------------------------------------------------------------------

def resolve_audio_terms(args) -> None:
    """Audio classifiers distil logits and hidden states (frames align when the student is cut from the teacher);
    the text default of attention relations goes off, a value the user set stays."""
    if "relation_weight" in set(getattr(args, "_mode_defaults", ())):
        args.relation_weight = 0.0


class AudioEncoderTask(TaskAdapter):
    """Audio classification (``kind="classification"``) or CTC speech recognition (``"ctc"``) with a speech encoder
    (Whisper's encoder, wav2vec2, HuBERT): the student is cut from the teacher's encoder blocks and distilled on
    logits and hidden states, with the teacher running alongside (its outputs are not cached)."""

    priority = 10

    def __init__(self, kind: str | None = None):
        self.kind = kind
        self.name = {"ctc": "ctc", "classification": "audio-classification"}.get(kind, "audio")

    @property
    def ctc(self) -> bool:
        return self.kind == "ctc"

    @property
    def metric(self) -> str:
        return "wer" if self.ctc else "accuracy"

    @property
    def pipeline_tag(self) -> str:
        return "automatic-speech-recognition" if self.ctc else "audio-classification"

    @property
    def auto_class(self):
        return AutoModelForCTC if self.ctc else AutoModelForAudioClassification

    def select(self, model_args, data_args, speech):
        kind = audio_run_kind(model_args, data_args, speech)
        return None if kind is None else AudioEncoderTask(kind)

    def check_settings(self, run: Run) -> None:
        run.speech = run.speech or SpeechArguments()
        resolve_audio_terms(run.args)

    def load_data(self, run: Run):
        from .speech import load_speech_data

        return load_speech_data(run.data_args, run.speech, classification=not self.ctc, model_args=run.model_args)

    def check_layers(self, run: Run) -> None:
        super().check_layers(run)
        model_args = run.model_args
        if model_args.student_layers and not model_args.student_model:
            check_layer_indices(model_args.student_layer_list(), steps.teacher_depth(model_args), "--student_layers",
                                "block", "the teacher's encoder has blocks")

    def before_teacher(self, run: Run) -> None:
        if run.data_args.cache_teacher:
            logger.info("Audio classification: the teacher runs alongside the student (its outputs are not cached)")

    def load_teacher(self, run: Run):
        if self.ctc:
            return load_ctc_teacher(run.model_args)
        return load_audio_teacher(run.model_args, run.data_args, run.speech, run.dataset, run.args, run.state)

    def build_student(self, run: Run):
        return build_audio_student(run.model_args, run.dataset, run.teacher, run.teacher_processor, self.auto_class)

    def prepare(self, run: Run) -> None:
        if self.ctc:
            fe = run.processor.feature_extractor
            run.data = character_targets(run.dataset, run.processor.tokenizer)
            run.collator = CTCDistillationCollator(fe, sampling_rate=fe.sampling_rate)
        else:
            fe = run.processor
            run.data = run.dataset.rename_column("label", "labels")
            run.collator = AudioDistillationCollator(fe, sampling_rate=fe.sampling_rate)
        run.extras["feature_extractor"] = fe
        run.trainer_kwargs = {"teacher_model": run.teacher}

    def compute_metrics(self, run: Run):
        return ctc_metrics(run.processor.tokenizer) if self.ctc else compute_classification_metrics

    def settings(self, run: Run) -> dict:
        return {"speech": run.speech}

    def data_entry(self, run: Run, trainer) -> dict:
        return {
            "dataset": run.dataset_name,
            "task": "ctc" if self.ctc else "audio-classification",
            "splits": {s: len(d) for s, d in run.dataset.items()},
            "label_names": None if self.ctc else trainer.model.config.id2label,
            "audio_window_s": audio_window_seconds(trainer.model),
        }

    def student_entry(self, run: Run, trainer) -> dict:
        entry = super().student_entry(run, trainer)
        if not run.model_args.student_model:
            entry["source"] = (f"blocks {getattr(run.student.config, 'hfcompress_student_layers', None)} of the "
                               "teacher's encoder")
        return entry

    def teacher_metrics(self, run: Run) -> dict:
        batch = run.args.per_device_eval_batch_size
        if self.ctc:
            return ctc_wer(run.teacher, run.processor.tokenizer, run.data["test"], run.collator, batch)
        return audio_accuracy(run.teacher, run.extras["feature_extractor"], run.dataset["test"], batch)

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        logger.info("Audio classifiers are measured by scripts/benchmark_speech.py (accuracy, latency per clip, "
                    "size); the run records the test accuracy and sizes, no model card yet")


register_task(AudioEncoderTask())
