"""Argument groups every script shares: which models, which data. A script adds its method's own dataclass and the
`TrainingArguments` subclass it trains with; one `HfArgumentParser` reads them all (see `hfcompress.cli`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..speech.decoding import DecodingArguments


@dataclass
class ModelArguments:
    _argument_group_name = "Models"

    teacher_model: str = field(
        default="minilm-l6",
        metadata={"help": "Teacher: an offline asset name (minilm-l6, mpnet-base), a local folder or a Hub id. "
                  "Without a trained classification head it is fine-tuned first (see --finetune_teacher)."},
    )
    finetune_teacher: bool = field(
        default=True, metadata={"help": "Fine-tune (once, cached) a teacher that has no trained task head."}
    )
    teacher_finetune_epochs: float = field(
        default=2.0,
        metadata={"help": "Epochs of teacher fine-tuning (MiniLM-L6 on Rotten Tomatoes: 0.835 after 1 epoch, 0.847 "
                  "after 2)."},
    )
    teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of teacher fine-tuning."})
    teacher_head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the new task head in teacher fine-tuning (default: "
                  "--teacher_learning_rate). Raise it for an encoder with small outputs, such as all-mpnet-base-v2."},
    )
    teacher_dir: str | None = field(
        default=None,
        metadata={"help": "Where the fine-tuned teacher is cached (default: $HFCOMPRESS_HOME/teachers/<name>-<dataset>)."},
    )
    student_model: str | None = field(
        default=None,
        metadata={"help": "Student checkpoint (asset name, folder or Hub id). Default: built from the teacher's "
                  "blocks (--student_layers / --student_num_layers)."},
    )
    student_layers: str | None = field(
        default=None,
        metadata={"help": "Blocks (0-based, comma-separated, e.g. '1,3,5') kept in the student: blocks of "
                  "--student_model if given, else of the teacher."},
    )
    student_num_layers: int = field(
        default=3,
        metadata={"help": "Student depth when --student_layers is not given (evenly spaced blocks); 0 = all blocks "
                  "(a full copy of the teacher, e.g. to prune it)."},
    )

    def student_layer_list(self) -> list[int] | None:
        if not self.student_layers:
            return None
        from ..errors import UserInputError

        try:
            return [int(x) for x in self.student_layers.split(",")]
        except ValueError:
            raise UserInputError(f"--student_layers {self.student_layers!r}: expected comma-separated block indices "
                                 "such as '0,2,4'") from None


@dataclass
class DataArguments:
    _argument_group_name = "Data"

    dataset: str = field(
        default="rotten-tomatoes",
        metadata={"help": "Dataset: 'rotten-tomatoes' (offline default); a CSV/TSV/JSON/JSONL/Parquet file; a folder of "
                  "train/validation/test files; a saved DatasetDict folder; or a Hub id. Missing validation/test "
                  "splits are carved out of train (stratified). String labels become class names (id2label)."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str = field(
        default="label", metadata={"help": "Column holding the class: names (e.g. 'sports') or integers 0..K-1."}
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "Sentence pairs: the column holding each row's second text (question/passage, premise/"
                  "hypothesis); both texts are tokenized together, by each model's own tokenizer."},
    )
    pair_truncation: str = field(
        default="only_second",
        metadata={"help": "With --text_pair_column, what a pair longer than --max_length loses: 'only_second' (the "
                  "passage; the question stays whole), 'only_first' or 'longest_first'."},
    )
    tokens_column: str = field(
        default="tokens",
        metadata={"help": "Token classification, JSON Lines or saved data: the column holding each sentence's words."},
    )
    tags_column: str = field(
        default="tags",
        metadata={"help": "Token classification, JSON Lines or saved data: the column holding each word's tag (BIO/IO "
                  "names, or ClassLabel ids of a saved dataset). CoNLL-style files: the last column."},
    )
    label_all_subtokens: bool = field(
        default=False,
        metadata={"help": "Token classification: train on every sub-token of a word (B-x becomes I-x after the "
                  "first) instead of the first only (the rest -100). Evaluation always scores words (first "
                  "sub-tokens)."},
    )
    doc_stride: int = field(
        default=128,
        metadata={"help": "Extractive QA: tokens shared by two consecutive windows of a context longer than "
                  "--max_length (with the question, in every window)."},
    )
    max_answer_length: int = field(
        default=30, metadata={"help": "Extractive QA: the longest answer predicted, in tokens."}
    )
    n_best_size: int = field(
        default=20, metadata={"help": "Extractive QA: start and end candidates of each window searched for the answer."}
    )
    null_score_threshold: float = field(
        default=0.0,
        metadata={"help": "Extractive QA with unanswerable questions in the data (SQuAD v2): answer nothing when the "
                  "CLS score beats the best span's by more than this."},
    )
    max_length: int = field(
        default=128,
        metadata={"help": "Tokens kept per text (both tokenizers, special tokens included); longer texts are cut at "
                  "the end given by --truncation_side. 128 covers a review snippet; news articles need 256-512."},
    )
    truncation_side: str = field(
        default="right",
        metadata={"help": "Which end of a text longer than --max_length is cut: 'right' keeps the beginning "
                  "(headlines, leads), 'left' keeps the end (conclusions, verdicts)."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified split when the data has none."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation/test rows."})
    cache_teacher: bool = field(
        default=True,
        metadata={"help": "Compute the teacher's outputs on the training set once and train from the cache. "
                  "Attention-map distillation still runs the teacher (attention maps are not cached)."},
    )
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the teacher cache lives (default: <output_dir>/teacher_cache)."}
    )
    teacher_batch_size: int = field(default=64, metadata={"help": "Batch size when computing the teacher cache."})
    cache_max_gb: float | None = field(
        default=None,
        metadata={"help": "Largest teacher cache, in GB (1e9 bytes). Its size is estimated from the data before "
                  "caching (rows x tokens x width x 2 bytes per cached layer: hidden states, relation q/k/v) and "
                  "logged; over the limit only the logits are cached and the hidden-state and relation terms are "
                  "computed by running the teacher at every step (slower, same loss). Default: half the free disk "
                  "under the cache folder less 2 GiB (the cache is copied into place once written). 0 = logits only."},
    )
    evaluate_teacher: bool = field(
        default=True, metadata={"help": "Also measure the teacher on the test split for the summary."}
    )

    def __post_init__(self):
        from ..errors import UserInputError

        if self.truncation_side not in ("right", "left"):
            raise UserInputError(f"--truncation_side must be 'right' or 'left', got {self.truncation_side!r}")
        if self.max_length < 8:
            raise UserInputError(f"--max_length must be at least 8 tokens, got {self.max_length}")
        if self.pair_truncation not in ("only_second", "only_first", "longest_first"):
            raise UserInputError(f"--pair_truncation must be 'only_second', 'only_first' or 'longest_first', got "
                                 f"{self.pair_truncation!r}")
        if self.cache_max_gb is not None and self.cache_max_gb < 0:
            raise UserInputError(f"--cache_max_gb must be 0 or more (GB of teacher cache), got {self.cache_max_gb}")
        for name in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserInputError(f"--{name} must be a positive number of rows, got {v}")


@dataclass
class ScriptTrainingDefaults:
    """The `TrainingArguments` defaults of the training scripts (distill, prune, lowrank), sized for the offline
    default on a 2-core CPU. Listed first among a script's bases, so these defaults replace transformers' own; a
    script still overrides a field whose help says something of its own (e.g. what its epochs do)."""

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of training."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per process."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: 'no', 'steps' or 'epoch'."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Run into an --output_dir that holds an earlier run (its model/, record or checkpoints are "
                  "replaced as the new run writes them). Without it, such a folder is refused unless "
                  "--resume_from_checkpoint continues that run."},
    )
    dataloader_pin_memory: bool = field(
        default_factory=lambda: _has_accelerator(),
        metadata={"help": "Pin the data loader's memory (default: only where a CUDA/XPU/MPS device is, so a CPU run does "
                  "not warn that pinning has nothing to pin to)."},
    )


def _has_accelerator() -> bool:
    import torch

    return bool(torch.cuda.is_available() or getattr(getattr(torch, "xpu", None), "is_available", lambda: False)()
                or (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()))


@dataclass
class SpeechArguments(DecodingArguments):
    """Options of speech runs: transcription (a Whisper teacher, sequence-to-sequence) and audio classification (a
    Whisper, wav2vec2 or HuBERT teacher on labelled audio). The mode is chosen from the teacher and the data, and these
    options are read only then. The decoding guards of Whisper's evaluation come from `DecodingArguments`."""

    _argument_group_name = "Speech (chosen when the teacher is Whisper, wav2vec2 or HuBERT)"

    speech_task: str = field(
        default="auto",
        metadata={"help": "'transcription' (Whisper, sequence-to-sequence), 'audio-classification' (labels from "
                  "--label_column, e.g. keywords), or 'auto': audio classification for the keyword set "
                  "('--dataset speech-keywords', the default then) or an audio-classifier teacher, transcription for "
                  "a Whisper teacher otherwise."},
    )
    audio_window_seconds: float = field(
        default=0,
        metadata={"help": "Audio classification with a Whisper encoder: the window it hears, in whole seconds (its "
                  "position table is cut to it; cost falls with it). 0: the longest clip of the data, rounded up."},
    )

    audio_column: str = field(
        default="audio",
        metadata={"help": "Column holding the audio: paths of audio files (CSV/JSON, relative to the data file), or "
                  "float arrays / {'array', 'sampling_rate'} entries (a saved dataset). The transcript is "
                  "--text_column. With a Whisper teacher, --dataset defaults to 'speech-synth' (synthesized "
                  "sentences and digit strings, split by voice, cached under $HFCOMPRESS_HOME/speech)."},
    )
    resample_audio: bool = field(
        default=True,
        metadata={"help": "Resample audio at another rate to the feature extractor's 16 kHz (logged); "
                  "--no_resample_audio makes such audio an error naming both rates."},
    )
    student_decoder_layers: str | None = field(
        default=None,
        metadata={"help": "Teacher decoder layers (0-based, comma-separated, e.g. '0,3') kept in the student; it "
                  "keeps the teacher's whole encoder. Default: --student_num_decoder_layers of them, spread from the "
                  "first to the last (distil-whisper's choice)."},
    )
    student_num_decoder_layers: int = field(
        default=2, metadata={"help": "Student decoder depth when --student_decoder_layers is not given."}
    )
    student_window_seconds: float = field(
        default=0,
        metadata={"help": "Whisper transcription: the student's encoder window in whole seconds (e.g. 10; the "
                  "teacher's is 30). Its position table keeps the first 50 positions per second and its feature "
                  "extractor pads clips to that window, so the encoder costs about a third (attention less still) on "
                  "short clips (whisper.cpp's audio_ctx, trained): the teacher reads its usual 30 s features, the "
                  "student the short ones of the same clip. Clips longer than the window are refused, not chunked. "
                  "With the encoder frozen, only the decoder adapts; --no_freeze_encoder trains the encoder too. "
                  "0: the teacher's window. Refused for other models."},
    )
    freeze_encoder: bool = field(
        default=True,
        metadata={"help": "Keep the student's encoder (the teacher's) frozen; its outputs on the training set are then "
                  "computed once and cached (float16, with --cache_teacher), so no encoder runs while training. "
                  "--no_freeze_encoder trains it too (both encoders then run at every step)."},
    )
    pseudo_labels: bool = field(
        default=False,
        metadata={"help": "Train on the teacher's own greedy transcripts of the training audio instead of the "
                  "transcript column (distil-whisper's pseudo-labels; computed once, cached). Validation and test "
                  "keep the true transcripts."},
    )
    pseudo_label_max_wer: float | None = field(
        default=None,
        metadata={"help": "With --pseudo_labels: drop the training clips whose pseudo-label's WER against the "
                  "clip's own transcript (normalized) is above this fraction (distil-whisper's filter: 0.1 = 10 "
                  "percent); the count dropped is logged and recorded. Default: keep every clip."},
    )
    generation_max_new_tokens: int = field(
        default=128, metadata={"help": "Most tokens generated per clip when evaluating (greedy decoding)."}
    )
    language: str | None = field(
        default=None,
        metadata={"help": "Language a multilingual Whisper transcribes (a code: 'en', 'de', ...), for teacher and "
                  "student alike: the training targets' prompt, pseudo-labels, evaluation and the saved generation "
                  "config. Default: the language the model's generation config names, else 'en' (logged). An "
                  "English-only (.en) Whisper takes 'en' only."},
    )
    synth_num_voices: int = field(
        default=24, metadata={"help": "--dataset speech-synth: number of synthetic voices (split by voice)."}
    )
    synth_per_voice: int = field(
        default=20, metadata={"help": "--dataset speech-synth: utterances per voice."}
    )
    measure_clips: int = field(
        default=16,
        metadata={"help": "Test clips transcribed one at a time by the teacher and the student, reloaded from disk, "
                  "for the per-clip CPU latency of greedy decoding (with --measure)."},
    )

    def __post_init__(self):
        from ..errors import UserInputError

        if self.speech_task not in ("auto", "transcription", "audio-classification"):
            raise UserInputError(f"--speech_task {self.speech_task!r}: expected 'auto', 'transcription' or "
                                 "'audio-classification'")
        if self.audio_window_seconds < 0:
            raise UserInputError(f"--audio_window_seconds must be 0 (automatic) or more, got {self.audio_window_seconds}")
        if self.student_window_seconds < 0 or self.student_window_seconds != int(self.student_window_seconds):
            raise UserInputError(f"--student_window_seconds {self.student_window_seconds:g}: expected whole seconds "
                                 "(0: the teacher's window)")
        if self.pseudo_label_max_wer is not None:
            if not self.pseudo_labels:
                raise UserInputError("--pseudo_label_max_wer filters pseudo-labels: it needs --pseudo_labels")
            if not self.pseudo_label_max_wer >= 0:
                raise UserInputError(f"--pseudo_label_max_wer must be a WER fraction of 0 or more (0.1 = 10 "
                                     f"percent), got {self.pseudo_label_max_wer}")
        super().__post_init__()
        for name in ("student_num_decoder_layers", "generation_max_new_tokens", "synth_num_voices",
                     "synth_per_voice", "measure_clips"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be at least 1, got {getattr(self, name)}")

    def decoder_layer_list(self) -> list[int] | None:
        if not self.student_decoder_layers:
            return None
        from ..errors import UserInputError

        try:
            return [int(x) for x in str(self.student_decoder_layers).split(",") if x.strip()]
        except ValueError:
            raise UserInputError(f"--student_decoder_layers {self.student_decoder_layers!r}: expected comma-separated "
                                 "layer indices such as '0,3'") from None
