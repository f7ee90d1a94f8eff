"""How Whisper decodes in hfcompress's evaluations: greedy, or greedy with the guards real Whisper pipelines use.

openai-whisper's `transcribe` and faster-whisper decode greedily at temperature 0 and re-decode a clip at the next
temperature of (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) (sampling) when its text repeats too much (compression ratio above a
threshold) or its mean token log-probability is too low; transformers' Whisper `generate` does the same when given
``temperature=(...)``, ``compression_ratio_threshold`` and ``logprob_threshold`` (also for clips under 30 s). Its
compression ratio is that of the generated token ids, not of the text, hence its usual threshold 1.35 where
openai-whisper's is 2.4 on text.

The guards are off by default in hfcompress: greedy decoding is deterministic and is what every measured WER here
uses, a compressed decoder's loops are counted (`normalize.is_looping`) instead of hidden by a re-decoding, and the
fallback's sampling makes a WER depend on the seed. Turn them on to measure a model as a pipeline with guards would
run it (their cost: a second decode of the clips that fail a guard, and per-step scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserInputError
from .normalize import is_looping

GUARD_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 1.35  # of the token ids (transformers); openai-whisper's 2.4 is of the text
LOGPROB_THRESHOLD = -1.0


@dataclass
class DecodingArguments:
    """How a Whisper evaluation decodes (the speech runs' `SpeechArguments` and the speech benchmarks take these
    fields): greedy, or with `decoding_guards` the temperature fallback and its thresholds."""

    decoding_guards: bool = field(
        default=False,
        metadata={"help": "Evaluate with the guards real Whisper pipelines use: a clip whose tokens repeat "
                  "(--compression_ratio_threshold) or are unlikely (--logprob_threshold) is decoded again at the next "
                  "of --guard_temperatures (sampling). Off by default: greedy decoding is deterministic and loops are "
                  "counted (looping_clips), not hidden."},
    )
    guard_temperatures: str = field(
        default=",".join(map(str, GUARD_TEMPERATURES)),
        metadata={"help": "--decoding_guards: the temperatures tried in turn (0: greedy), comma-separated."},
    )
    compression_ratio_threshold: float | None = field(
        default=COMPRESSION_RATIO_THRESHOLD,
        metadata={"help": "--decoding_guards: re-decode a clip whose generated token ids compress (zlib) by more "
                  "than this (transformers' measure; openai-whisper's 2.4 is on text)."},
    )
    logprob_threshold: float | None = field(
        default=LOGPROB_THRESHOLD,
        metadata={"help": "--decoding_guards: re-decode a clip whose mean token log-probability is below this."},
    )
    no_speech_threshold: float | None = field(
        default=None,
        metadata={"help": "--decoding_guards: transcribe a clip as empty when its no-speech probability exceeds this "
                  "and its log-probability is below --logprob_threshold (off by default)."},
    )

    def __post_init__(self):
        if self.decoding_guards:
            whisper_generation_kwargs(1, True, self.guard_temperatures, self.compression_ratio_threshold,
                                      self.logprob_threshold, self.no_speech_threshold)  # checked now


def parse_temperatures(text: str | tuple | list, what: str = "--guard_temperatures") -> tuple[float, ...]:
    """``"0.0,0.2,0.4"`` -> (0.0, 0.2, 0.4): the fallback temperatures, from 0 up, at least one."""
    try:
        temps = tuple(float(t) for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip())
    except ValueError:
        raise UserInputError(f"{what} {text!r}: expected comma-separated temperatures such as "
                             "'0.0,0.2,0.4,0.6,0.8,1.0'") from None
    if not temps or any(t < 0 for t in temps) or list(temps) != sorted(temps):
        raise UserInputError(f"{what} {text!r}: expected one or more temperatures >= 0 in rising order, such as "
                             "'0.0,0.2,0.4,0.6,0.8,1.0' (0: greedy, the first decode)")
    return temps


def whisper_generation_kwargs(max_new_tokens: int, guards: bool = False,
                              temperatures: str | tuple = GUARD_TEMPERATURES,
                              compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD,
                              logprob_threshold: float | None = LOGPROB_THRESHOLD,
                              no_speech_threshold: float | None = None) -> dict:
    """Keyword arguments of Whisper's `generate`: greedy (``num_beams=1``, no sampling), and with `guards` the
    temperature fallback and its thresholds (None: that guard off; ``no_speech_threshold`` needs
    ``logprob_threshold``: a clip both unlikely and probably silent is skipped, i.e. transcribed empty)."""
    out = {"max_new_tokens": int(max_new_tokens), "num_beams": 1}
    if not guards:
        return {**out, "do_sample": False}
    if no_speech_threshold is not None and logprob_threshold is None:
        raise UserInputError(f"--no_speech_threshold {no_speech_threshold}: needs --logprob_threshold (Whisper skips "
                             "a clip only when it is both unlikely and probably silent)")
    out["temperature"] = parse_temperatures(temperatures)
    for key, value in (("compression_ratio_threshold", compression_ratio_threshold),
                       ("logprob_threshold", logprob_threshold), ("no_speech_threshold", no_speech_threshold)):
        if value is not None:
            out[key] = float(value)
    return out


def generation_kwargs_of(speech, max_new_tokens: int | None = None) -> dict:
    """`whisper_generation_kwargs` from an object with the `SpeechArguments` decoding fields (``decoding_guards``,
    ``guard_temperatures``, ``compression_ratio_threshold``, ``logprob_threshold``, ``no_speech_threshold``,
    ``generation_max_new_tokens``)."""
    return whisper_generation_kwargs(
        max_new_tokens if max_new_tokens is not None else speech.generation_max_new_tokens,
        guards=speech.decoding_guards, temperatures=speech.guard_temperatures,
        compression_ratio_threshold=speech.compression_ratio_threshold, logprob_threshold=speech.logprob_threshold,
        no_speech_threshold=speech.no_speech_threshold)


def text_token_counts(ids, tokenizer) -> list[int]:
    """Tokens of each generated row that are text (not the prompt, end-of-text, padding or other special tokens): a
    row with as many as `max_new_tokens` never ended (a loop, `is_looping`)."""
    special = set(tokenizer.all_special_ids)
    first_added = min((i for t, i in tokenizer.get_added_vocab().items() if t.startswith("<|")), default=None)
    return [sum(1 for t in row if t >= 0 and t not in special and (first_added is None or t < first_added))
            for row in np.asarray(ids).tolist()]


def count_looping(texts, token_counts, max_new_tokens: int | None) -> int:
    """Clips whose transcript loops (`normalize.is_looping`: decoding ran to `max_new_tokens`, or the text compresses
    by more than Whisper's 2.4)."""
    counts = token_counts if token_counts is not None else [None] * len(texts)
    return sum(is_looping(t, n, max_new_tokens) for t, n in zip(texts, counts))
