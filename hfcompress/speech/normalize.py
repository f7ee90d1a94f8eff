"""English text normalisation for word and character error rates, and a corpus WER/CER with its error counts.

`normalize(text)` makes a reference and a transcription comparable however each writes the same speech:

1. Unicode quotes and dashes become ASCII (``’`` -> ``'``, ``–`` -> ``-``); ``%`` becomes `` percent``, ``&``
   `` and ``; thousands separators go (``1,000`` -> ``1000``); a decimal point between digits is kept (``3.5``).
2. Lowercase.
3. Punctuation removed: every character that is not a letter, a digit or an apostrophe becomes a space, so hyphens
   split words (``twenty-one`` -> ``twenty one``, ``cold-hearted`` -> ``cold hearted``). Apostrophes are kept
   inside words (``don't``, ``o'clock``, ``john's``) and dropped at a word's edges (quotes: ``'hello'`` -> ``hello``).
   Contractions are left alone (``don't`` does not become ``do not``).
4. Titles are spelled out: ``mr`` -> ``mister``, ``mrs`` -> ``missus``, ``dr`` -> ``doctor``, ``prof`` ->
   ``professor`` (transcribers write "Mr."; LibriSpeech-style references say "mister").
5. Number words become digits, so spoken and written numbers match: ``five`` -> ``5``, ``twenty one`` -> ``21``,
   ``one hundred`` / ``a hundred`` -> ``100``, ``two thousand and five`` -> ``2005``, ``nine hundred ninety nine
   thousand nine hundred ninety nine`` -> ``999999`` (millions and billions work the same way). ``and`` is part of a
   number only between a scale word and a smaller number (``one hundred and one``); otherwise it stays a word. A
   sequence of digit words is a sequence of numbers, one per digit word (``one two three`` -> ``1 2 3``), and a
   number that cannot continue the previous one starts a new one (``nineteen ninety nine`` -> ``19 99``,
   ``four seventy two`` -> ``4 72``). ``oh`` is zero only next to another number (``three five oh`` -> ``3 5 0``;
   ``oh no`` stays). Ordinals become digits with their suffix (``first`` -> ``1st``, ``twenty-first`` -> ``21st``).
   Not converted: ``point`` (``three point five`` stays ``3 point 5``), currencies (``$5`` -> ``5``, ``five
   dollars`` -> ``5 dollars``), fractions.
6. With ``split_digits=True`` (the default) every run of digits is then split into single digits: ``2005`` ->
   ``2 0 0 5``, ``21`` -> ``2 1``. This is the decision for digit strings: they compare digit by digit, whether the
   speaker said "four seven two", the reference reads ``472`` or ``4-7-2``, or the model wrote "4, 7, 2" or "four
   seventy-two" (all become ``4 7 2``), and years match however they are grouped (``nineteen ninety nine`` and
   ``1999`` are both ``1 9 9 9``). The price: a multi-digit number counts as several words, so one wrong digit of
   ``2005`` costs one error out of four words, not one out of one. ``split_digits=False`` keeps whole numbers
   (``21``, ``2005``, ``1 2 3``, ``19 99``) when that is what a report needs.
7. Whitespace collapsed to single spaces, stripped.

`word_error_rate(refs, hyps)` normalises both sides and counts substitutions, deletions and insertions of one
minimum edit-distance alignment per utterance, summed over the corpus: ``wer = (S + D + I) / reference words``
(not a mean of per-utterance rates; it can exceed 1). ``cer`` is the same over characters of the normalised texts,
spaces included. It needs nothing but the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

__all__ = ["normalize", "word_error_rate", "align_counts", "wer_interval", "compression_ratio", "is_looping"]

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINALS = {
    "first": "one", "second": "two", "third": "three", "fourth": "four", "fifth": "five", "sixth": "six",
    "seventh": "seven", "eighth": "eight", "ninth": "nine", "tenth": "ten", "eleventh": "eleven",
    "twelfth": "twelve", "thirteenth": "thirteen", "fourteenth": "fourteen", "fifteenth": "fifteen",
    "sixteenth": "sixteen", "seventeenth": "seventeen", "eighteenth": "eighteen", "nineteenth": "nineteen",
    "twentieth": "twenty", "thirtieth": "thirty", "fortieth": "forty", "fiftieth": "fifty", "sixtieth": "sixty",
    "seventieth": "seventy", "eightieth": "eighty", "ninetieth": "ninety", "hundredth": "hundred",
    "thousandth": "thousand", "millionth": "million", "billionth": "billion",
}
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor", "prof": "professor"}
_SMALL = {**_UNITS, **_TEENS, **_TENS}  # the words that can follow "and" inside a number

_TRANSLATE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201b": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
})


def _kind(word: str) -> str | None:
    if word == "zero":
        return "zero"
    if word in _UNITS:
        return "unit"
    if word in _TEENS:
        return "teen"
    if word in _TENS:
        return "tens"
    if word == "hundred":
        return "hundred"
    if word in _SCALES:
        return "scale"
    return None


class _Number:
    """A number being read from words: ``total`` (the part above the last scale) + ``cur`` (below 1000)."""

    def __init__(self) -> None:
        self.total = 0
        self.cur = 0
        self.last: str | None = None  # the kind of the last word taken
        self.scales: list[int] = []  # scales used, so "thousand thousand" starts a new number
        self.words = 0

    def can_take(self, kind: str, word: str) -> bool:
        last = self.last
        if last is None:
            return True
        if kind == "zero" or last == "zero":
            return False
        if kind == "unit":
            return last in ("tens", "hundred", "scale", "and")
        if kind in ("teen", "tens"):
            return last in ("hundred", "scale", "and")
        if kind == "hundred":
            return last in ("unit", "teen", "tens") and 0 < self.cur < 100
        if kind == "scale":
            scale = _SCALES[word]
            return last in ("unit", "teen", "tens", "hundred") and all(scale < s for s in self.scales)
        return False

    def take(self, kind: str, word: str) -> None:
        if kind in ("unit", "zero"):
            self.cur += _UNITS[word]
        elif kind == "teen":
            self.cur += _TEENS[word]
        elif kind == "tens":
            self.cur += _TENS[word]
        elif kind == "hundred":
            self.cur = (self.cur or 1) * 100
        elif kind == "scale":
            scale = _SCALES[word]
            self.total += (self.cur or 1) * scale
            self.cur = 0
            self.scales.append(scale)
        self.last = kind
        self.words += 1

    @property
    def value(self) -> int:
        return self.total + self.cur


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _is_numberish(word: str | None) -> bool:
    return word is not None and (_kind(word) is not None or word in _ORDINALS or word.isdigit())


def _convert_numbers(words: list[str]) -> list[str]:
    """Replace runs of number words by digits (see the module docstring, step 5)."""
    # "oh" is zero only in a run of number words (or digits) that holds something besides "oh".
    words = list(words)
    i = 0
    while i < len(words):
        j = i
        while j < len(words) and (words[j] == "oh" or _is_numberish(words[j])):
            j += 1
        if j > i and any(w != "oh" for w in words[i:j]):
            words[i:j] = ["zero" if w == "oh" else w for w in words[i:j]]
        i = max(j, i + 1)
    out: list[str] = []
    num: _Number | None = None

    def flush() -> None:
        nonlocal num
        if num is not None:
            out.append(str(num.value))
            num = None

    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        ordinal = word in _ORDINALS
        base = _ORDINALS.get(word, word)
        kind = _kind(base)
        if kind is None and word == "a" and num is None and nxt is not None and _kind(_ORDINALS.get(nxt, nxt)) in (
            "hundred", "scale"
        ):
            num = _Number()  # "a hundred", "a thousand": the scale word multiplies 1
            num.last = "unit"
            num.cur = 1
            i += 1
            continue
        if kind is None and word == "and" and num is not None and num.last in ("hundred", "scale") and nxt is not None:
            nkind = _kind(_ORDINALS.get(nxt, nxt))
            if nkind in ("unit", "teen", "tens") and _ORDINALS.get(nxt, nxt) in _SMALL:
                num.last = "and"
                i += 1
                continue
        if kind is None:
            flush()
            out.append(word)
            i += 1
            continue
        if num is not None and not num.can_take(kind, base):
            flush()
        if num is None:
            num = _Number()
        num.take(kind, base)
        if ordinal:
            value = num.value
            out.append(f"{value}{_ordinal_suffix(value)}")
            num = None
        i += 1
    flush()
    return out


_DIGIT_RUN = re.compile(r"^\d+$")


def normalize(text: str, *, split_digits: bool = True) -> str:
    """Normalise English `text` for WER/CER (the rules are in the module docstring).

    >>> normalize("It's 5 o'clock!")
    "it's 5 o'clock"
    >>> normalize("Twenty-one"), normalize("twenty one", split_digits=False)
    ('2 1', '21')
    """
    text = str(text).translate(_TRANSLATE)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = text.replace("%", " percent ").replace("&", " and ")
    text = text.lower()
    text = re.sub(r"(?<=\d)\.(?=\d)", "\x00", text)  # protect decimal points
    text = re.sub(r"[^\w'\x00]|_", " ", text)
    text = text.replace("\x00", ".")
    words = []
    for word in text.split():
        word = word.strip("'")
        if word:
            words.append(_TITLES.get(word, word))
    words = _convert_numbers(words)
    if split_digits:
        words = [" ".join(w) if _DIGIT_RUN.match(w) else w for w in words]
    return " ".join(" ".join(words).split())


def align_counts(reference: list, hypothesis: list) -> tuple[int, int, int, int]:
    """``(hits, substitutions, deletions, insertions)`` of one minimum-edit-distance alignment.

    Among alignments of equal cost, the one with the most hits is taken (then the fewest substitutions), so the
    counts are deterministic.
    """
    n, m = len(reference), len(hypothesis)
    # Each cell: (cost, -hits, substitutions, deletions, insertions); tuples compare lexicographically.
    prev = [(j, 0, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, 0, i, 0)]
        r = reference[i - 1]
        for j in range(1, m + 1):
            c, h, s, d, ins = prev[j - 1]
            if r == hypothesis[j - 1]:
                diag = (c, h - 1, s, d, ins)
            else:
                diag = (c + 1, h, s + 1, d, ins)
            c, h, s, d, ins = prev[j]
            dele = (c + 1, h, s, d + 1, ins)
            c, h, s, d, ins = cur[j - 1]
            inse = (c + 1, h, s, d, ins + 1)
            cur.append(min(diag, dele, inse))
        prev = cur
    _, h, s, d, ins = prev[m]
    return -h, s, d, ins


def word_error_rate(
    refs: Iterable[str] | str,
    hyps: Iterable[str] | str,
    normalizer: Callable[[str], str] | None = normalize,
) -> dict:
    """Corpus WER and CER of transcriptions `hyps` against references `refs`, after `normalizer` (None: raw text).

    Returns ``{"wer", "cer", "substitutions", "deletions", "insertions", "hits", "num_ref_words",
    "char_errors", "num_ref_chars", "num_utterances"}``. ``wer = (S + D + I) / num_ref_words`` summed over the
    corpus; ``cer`` is the character edit distance of the normalised texts (spaces count) over their characters.
    Raises ``ValueError`` when the lists differ in length, are empty, or the references hold no word.
    """
    if isinstance(refs, str):
        refs = [refs]
    if isinstance(hyps, str):
        hyps = [hyps]
    refs, hyps = list(refs), list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} transcriptions")
    if not refs:
        raise ValueError("error rates of no transcriptions are undefined: got empty references and transcriptions")
    norm = normalizer or (lambda t: " ".join(str(t).split()))
    hits = subs = dels = ins = words = char_errors = chars = 0
    for ref, hyp in zip(refs, hyps):
        ref_n, hyp_n = norm(ref), norm(hyp)
        h, s, d, i = align_counts(ref_n.split(), hyp_n.split())
        hits, subs, dels, ins = hits + h, subs + s, dels + d, ins + i
        words += len(ref_n.split())
        _, cs, cd, ci = align_counts(list(ref_n), list(hyp_n))
        char_errors += cs + cd + ci
        chars += len(ref_n)
    if not words:
        raise ValueError("the references hold no word after normalisation: WER and CER are undefined")
    return {
        "wer": (subs + dels + ins) / words,
        "cer": char_errors / chars,
        "substitutions": subs,
        "deletions": dels,
        "insertions": ins,
        "hits": hits,
        "num_ref_words": words,
        "char_errors": char_errors,
        "num_ref_chars": chars,
        "num_utterances": len(refs),
    }


def wer_interval(clip_errors: Sequence[float], clip_words: Sequence[int], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of a corpus WER by the percentile bootstrap over clips: `resamples` draws of as many clips
    with replacement, each giving ``sum(errors) / sum(words)``. `clip_errors` / `clip_words`: one entry per clip
    (word errors and reference words, as `word_error_rate` counts them for that clip alone)."""
    import numpy as np

    errors, words = np.asarray(clip_errors, dtype=float), np.asarray(clip_words, dtype=float)
    if errors.shape != words.shape or errors.ndim != 1 or not len(errors):
        raise ValueError(f"wer_interval: expected two equally long non-empty lists, got {errors.shape} and "
                         f"{words.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"wer_interval: level must be in (0, 1) and resamples >= 1, got {level} and {resamples}")
    idx = np.random.default_rng(seed).integers(0, len(errors), size=(resamples, len(errors)))
    rates = errors[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(rates, tail)), float(np.percentile(rates, 100 - tail))


COMPRESSION_RATIO_THRESHOLD = 2.4  # Whisper's own guard: text that gzip squeezes more than this is repetitive


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression (Whisper's repetition measure)."""
    import zlib

    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def is_looping(text: str, generated_tokens: int | None = None, max_new_tokens: int | None = None) -> bool:
    """A transcript that loops: decoding ran up to `max_new_tokens`, or the text compresses more than
    `COMPRESSION_RATIO_THRESHOLD` (the test Whisper's temperature fallback uses)."""
    if generated_tokens is not None and max_new_tokens is not None and generated_tokens >= max_new_tokens:
        return True
    return compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
