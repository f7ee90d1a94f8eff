"""The project's own speech data, built offline: synthesized sentences, digit strings and keywords, plus real clips.

Synthesis runs the Debian text-to-speech programs (``espeak-ng``; ``flite``) in a subprocess, one WAV file per
utterance, then resamples to 16 kHz mono float32 (numpy, band-limited FFT resampling: no scipy, no sox needed) and
augments: speed perturbation (the clip is played faster or slower, pitch moving with it, as ``sox speed`` and Kaldi's
speed perturbation do: a factor 1.1 makes it 1/1.1 as long) and additive white or pink noise at a signal-to-noise
ratio measured over the speech (not the silence), seeded per utterance. A synthetic set without them is too easy.

Voices. A voice identity is an engine plus a voice: for espeak-ng a base accent (``en-us``, ``en`` (British),
``en-gb-x-rp``, ``en-gb-scotland``, ``en-gb-x-gbclan``, ``en-gb-x-gbcwmd``, ``en-029``, ``en-us-nyc``) with a
variant (none, ``+m1``..``+m7``, ``+f1``..``+f4``): 96 voices; for flite ``kal16`` (or ``kal``, the same speaker at
8 kHz), ``awb``, ``rms``, ``slt`` (``awb_time`` is a talking clock, left out). Each voice gets its own speaking rate
and pitch (espeak ``-s``/``-p``; flite ``duration_stretch``), drawn from the seed, and every utterance varies
them a little. Splits are BY VOICE: validation and test voices are never heard in train; engines are spread over
the splits in proportion. Variants of one espeak accent share the synthesiser, so "unseen voice" is a weaker
hold-out there than between flite voices.

Storage. ``audio`` is a ``List(Value("float32"))`` column of 16 kHz samples (``sampling_rate`` says 16000), not
`datasets.Audio`: datasets 5.x decodes `Audio` through torchcodec, which does not load beside this torch. Read it
with ``ds.with_format("numpy")[i]["audio"]`` (a float32 array) and feed it to a feature extractor as is; nothing
decodes anything. A 3 s clip is 192 kB on disk.

Columns of every set (synthetic and real): ``id``, ``audio``, ``sampling_rate``, ``text`` (the transcript in
written form, as spoken: digits are words, "four seven two"), ``voice``, ``engine``, ``kind`` (``sentence``,
``digits`` or ``keyword``), ``speed`` (the speed factor), ``snr_db`` (None when clean); the keyword set adds a
``label`` `ClassLabel` over the keywords.

- `build_transcription_dataset`: sentences (short real movie-review snippets from the ``rotten-tomatoes`` asset when
  installed, each split from that corpus' own split so texts are disjoint too; else the Harvard sentences) and
  digit strings, ``DatasetDict(train, validation, test)``.
- `build_keyword_dataset`: single keywords (the ten digits and ten command words by default), labelled.
- `load_pocketsphinx_set`: the real recordings of Debian's ``pocketsphinx-testdata`` with their transcripts.
- The test sets that measure compression (`build_speech_test_sets`; each a ``DatasetDict`` with one ``test`` split,
  cached like the others): `build_natural_dataset` (plain common-word sentences spoken clean by festival's HTS voice
  and flite's four cmu voices; with ``noise_snr_db`` the same clips with mild noise) and `build_real_dataset`
  (pocketsphinx-testdata plus the spoken words Debian's ``alsa-utils`` installs, `load_alsa_words`). festival
  (``text2wave``) is a third engine, used only when named: the Debian packages ``festival`` and
  ``festvox-us-slt-hts``.
- `resample_or_error`, `speed_perturb`, `add_noise`, `read_audio`: the pieces.

Both builders take ``cache_dir``: the built `DatasetDict` is saved there with ``save_to_disk``, in a folder named by a
hash of every setting (and the synthesiser versions), and loaded from there next time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import wave
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..extras import require_extra

logger = logging.getLogger(__name__)

TARGET_RATE = 16_000
_SPLITS = ("train", "validation", "test")
_CACHE_VERSION = 1

ESPEAK_BASES = (
    "en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
ESPEAK_VARIANTS = ("",) + tuple(f"+m{i}" for i in range(1, 8)) + tuple(f"+f{i}" for i in range(1, 5))
FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # kal16 stands for kal (same speaker); awb_time is a clock
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_KEYWORDS = DIGIT_WORDS + ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
_DEBIAN_PACKAGE = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
_ENGINE_PROGRAM = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}  # what must be on PATH
# festival voices this module knows -> the Debian package that installs each, and where it goes
FESTIVAL_VOICES = {"cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "ked_diphone": "festvox-kdlpc16k",
                   "kal_diphone": "festvox-kallpc16k"}
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
# The natural-voice test set (`build_natural_dataset`): festival's HTS voice and flite's four cmu voices.
NATURAL_VOICES = (
    ("festival", "cmu_us_slt_arctic_hts"), ("flite", "awb"), ("flite", "rms"), ("flite", "slt"), ("flite", "kal16"),
)

# Training audio for the natural set's models (`build_natural_training_set`): festival's diphone voices of two US
# English speakers, neither a voice of the natural test set (kal is the speaker of flite's kal16 test voice, through
# another synthesizer and database: its per-voice WER is reported apart). Whisper base transcribes them at 8-12% WER
# (5 sentences each, greedy), where espeak-ng's voices gave a median of 58%.
TRAINING_VOICES = (("festival", "ked_diphone"), ("festival", "kal_diphone"))

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
POCKETSPHINX_SETS = ("librivox", "cards", "misc")

# Harvard sentences, lists 1-4 (IEEE 1969, public domain): the fallback when the rotten-tomatoes asset is absent.
HARVARD_SENTENCES = (
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "Large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
)


# ----------------------------------------------------------------------------------------------------------- audio


def _fft_resample(x: np.ndarray, n_out: int) -> np.ndarray:
    """Band-limited resampling of `x` to `n_out` samples (zero-padding or truncating its spectrum)."""
    n = len(x)
    if n_out == n or n == 0:
        return x.astype(np.float32, copy=True)
    spec = np.fft.rfft(x.astype(np.float64))
    m = n_out // 2 + 1
    out = np.zeros(m, dtype=np.complex128)
    k = min(len(spec), m)
    out[:k] = spec[:k]
    if n_out < n and n_out % 2 == 0:
        out[-1] = out[-1].real  # the new Nyquist bin must be real
    return (np.fft.irfft(out, n_out) * (n_out / n)).astype(np.float32)


_LOGGED_RATES: set[tuple[int, int]] = set()


def resample_or_error(audio, rate: int, target: int = TARGET_RATE, resample: bool = True) -> np.ndarray:
    """`audio` (mono, or channels last / first: averaged to mono) at `rate` Hz as float32 at `target` Hz.

    Resamples (band-limited; logged at INFO the first time a pair of rates is seen) unless ``resample=False``, in
    which case a rate other than `target` is a `UserInputError` naming both rates.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    if x.ndim != 1:
        raise UserInputError(f"audio: expected a 1-D (mono) or 2-D (channels) array, got shape {x.shape}")
    rate, target = int(rate), int(target)
    if rate <= 0:
        raise UserInputError(f"audio: sampling rate must be positive, got {rate}")
    if rate == target:
        return x
    if not resample:
        raise UserInputError(
            f"audio is sampled at {rate} Hz but {target} Hz is expected; resample it to {target} Hz "
            f"(or let hfcompress resample it)"
        )
    level = logging.INFO if (rate, target) not in _LOGGED_RATES else logging.DEBUG
    _LOGGED_RATES.add((rate, target))
    logger.log(level, "resampling audio from %d Hz to %d Hz", rate, target)
    return _fft_resample(x, max(1, round(len(x) * target / rate)))


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `audio` `factor` times as fast (tempo and pitch together): ``len(out) == round(len(audio) / factor)``."""
    if factor <= 0:
        raise UserInputError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return np.asarray(audio, dtype=np.float32)
    return _fft_resample(np.asarray(audio, dtype=np.float32), max(1, round(len(audio) / factor)))


def speech_power(audio: np.ndarray, frame: int = 400) -> float:
    """Mean power over the frames within 30 dB of the loudest one (the speech, not the silence around it)."""
    x = np.asarray(audio, dtype=np.float64)
    if len(x) == 0:
        return 0.0
    n = max(1, len(x) // frame)
    energies = (x[: n * frame].reshape(n, -1) ** 2).mean(axis=1) if len(x) >= frame else np.array([np.mean(x**2)])
    active = energies[energies >= energies.max() * 1e-3]
    return float(active.mean()) if len(active) else 0.0


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """`audio` plus Gaussian noise (``white`` or ``pink``, 1/f) at `snr_db` dB below its speech power; same length.

    Scaled down if the sum would clip beyond ±1.
    """
    x = np.asarray(audio, dtype=np.float32)
    noise = rng.standard_normal(len(x))
    if color == "pink":
        spec = np.fft.rfft(noise)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), len(x))
    elif color != "white":
        raise UserInputError(f"noise color must be 'white' or 'pink', got {color!r}")
    power = speech_power(x)
    noise_power = float(np.mean(noise**2)) or 1.0
    noise *= np.sqrt(power / (10 ** (snr_db / 10)) / noise_power)
    out = x + noise.astype(np.float32)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    if peak > 1.0:
        out /= peak / 0.99
    return out.astype(np.float32)


def read_audio(path: str | os.PathLike, raw_rate: int = TARGET_RATE) -> tuple[np.ndarray, int]:
    """``(float32 mono samples in [-1, 1], sampling rate)`` of a WAV file (soundfile when installed, else the
    standard ``wave`` module for PCM) or of a headerless ``.raw`` file (16-bit little-endian at `raw_rate`)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"audio file {path} does not exist")
    if path.suffix.lower() == ".raw":
        data = np.frombuffer(path.read_bytes(), dtype="<i2")
        return (data.astype(np.float32) / 32768.0), raw_rate
    try:
        require_extra("speech", "writing audio files")
        import soundfile  # type: ignore[import-not-found]
    except ImportError:
        soundfile = None
    if soundfile is not None:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data.mean(axis=1).astype(np.float32), int(rate)
    try:
        with wave.open(str(path), "rb") as fh:
            rate, channels, width = fh.getframerate(), fh.getnchannels(), fh.getsampwidth()
            frames = fh.readframes(fh.getnframes())
    except (wave.Error, EOFError) as e:
        raise UserInputError(f"{path}: not a PCM WAV file the standard library can read ({e}); pip install soundfile")
    if width == 1:
        x = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        lo, mid, hi = b[:, 0].astype(np.int32), b[:, 1].astype(np.int32), b[:, 2].astype(np.int8).astype(np.int32)
        x = lo | (mid << 8) | (hi << 16)
        x = x.astype(np.float32) / 8388608.0
    elif width == 4:
        x = np.frombuffer(frames, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise UserInputError(f"{path}: unsupported sample width {width} bytes")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32), int(rate)


# ----------------------------------------------------------------------------------------------------------- voices


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic voice identity: ``engine`` (``espeak-ng`` or ``flite``) and its voice ``name``."""

    engine: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


def require_engine(engine: str) -> str:
    """The path of the `engine` program (festival: ``text2wave``), or a `UserInputError` naming the Debian package
    that provides it."""
    if engine not in _DEBIAN_PACKAGE:
        raise UserInputError(f"unknown speech engine {engine!r}; expected one of {sorted(_DEBIAN_PACKAGE)}")
    program = _ENGINE_PROGRAM[engine]
    path = shutil.which(program)
    if path is None:
        pkg = _DEBIAN_PACKAGE[engine]
        raise UserInputError(
            f"{engine} is not installed ({program} not found on PATH): install the Debian package {pkg!r} "
            f"(sudo apt-get install {pkg}) to synthesize speech"
        )
    return path


def festival_voice_installed(name: str) -> bool:
    return any(d.is_dir() and any(d.glob(f"*/{name}")) for d in FESTIVAL_VOICE_DIRS)


def require_voice(voice: Voice) -> None:
    """A `UserInputError` naming the Debian package when `voice`'s engine or the voice itself is not installed."""
    require_engine(voice.engine)
    if voice.engine == "festival":
        if voice.name not in FESTIVAL_VOICES:
            raise UserInputError(f"festival voice {voice.name!r} is unknown; expected one of {sorted(FESTIVAL_VOICES)}")
        if not festival_voice_installed(voice.name):
            pkg = FESTIVAL_VOICES[voice.name]
            raise UserInputError(
                f"festival voice {voice.name} is not installed (no {FESTIVAL_VOICE_DIRS[0]}/*/{voice.name}): install "
                f"the Debian package {pkg!r} (sudo apt-get install {pkg})"
            )
    elif voice.engine == "flite":
        names = _flite_voices(all_names=True)
        if voice.name not in names:
            raise UserInputError(f"flite has no voice {voice.name!r} (it lists {sorted(names)}); the Debian package "
                                 "'flite' ships awb, kal, kal16, rms, slt")


def _available_engines(engines) -> list[str]:
    if engines in (None, "auto"):
        found = [e for e in ("espeak-ng", "flite") if shutil.which(e)]
        if not found:
            raise UserInputError(
                "no speech synthesizer found: install the Debian packages 'espeak-ng' and/or 'flite' "
                "(sudo apt-get install espeak-ng flite)"
            )
        return found
    if isinstance(engines, str):
        engines = [engines]
    for e in engines:
        require_engine(e)
    return list(engines)


def _flite_voices(all_names: bool = False) -> list[str]:
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout
    names = out.split(":", 1)[-1].split()
    if all_names:
        return names
    voices = [v for v in FLITE_VOICES if v in names]
    if "kal16" not in names and "kal" in names:
        voices.insert(0, "kal")
    return voices


def list_voices(engines: str | Sequence[str] | None = "auto") -> list[Voice]:
    """Every usable voice identity of the installed (``"auto"``: espeak-ng and flite) or named engines (festival only
    when named), in a fixed order."""
    voices: list[Voice] = []
    for engine in _available_engines(engines):
        if engine == "espeak-ng":
            voices += [Voice("espeak-ng", b + v) for b in ESPEAK_BASES for v in ESPEAK_VARIANTS]
        elif engine == "festival":
            voices += [Voice("festival", v) for v in FESTIVAL_VOICES if festival_voice_installed(v)]
        else:
            voices += [Voice("flite", v) for v in _flite_voices()]
    return voices


def _engine_versions(engines: Sequence[str]) -> dict[str, str]:
    out = {}
    for e in engines:
        try:
            res = subprocess.run([e, "--version"], capture_output=True, text=True, timeout=30)
            out[e] = " ".join((res.stdout + res.stderr).split())[:200]
        except (OSError, subprocess.SubprocessError):
            out[e] = "?"
    return out


def _voice_rng(seed: int, voice: Voice) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(voice.id.encode())])


def _voice_style(seed: int, voice: Voice) -> dict:
    """The voice's own rate and pitch (drawn once per voice from the seed)."""
    rng = _voice_rng(seed, voice)
    return {
        "rate": int(rng.integers(130, 196)), "pitch": int(rng.integers(25, 76)),
        "stretch": float(rng.uniform(0.85, 1.2)),
    }


def synthesize(
    text: str, voice: Voice, rate: int = 175, pitch: int = 50, stretch: float = 1.0
) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`: ``(float32 samples, sampling rate of the engine)``.

    espeak-ng uses `rate` (words per minute) and `pitch` (0-99); flite uses `stretch` (its ``duration_stretch``: >1
    is slower) and its voice's own pitch; festival (``text2wave``, the text on stdin) uses `stretch` as its
    ``Duration_Stretch`` and its voice's own pitch (the HTS voice speaks at 32 kHz).
    """
    require_engine(voice.engine)
    with tempfile.TemporaryDirectory(prefix="hfc-tts-") as tmp:
        path = os.path.join(tmp, "out.wav")
        if voice.engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(rate)), "-p", str(int(pitch)), "-w", path, "--stdin"]
            res = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=120)
        elif voice.engine == "festival":
            setup = f"(voice_{voice.name}) (Parameter.set 'Duration_Stretch {stretch:.3f})"
            cmd = ["text2wave", "-eval", setup, "-o", path, "-"]
            res = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=120)
        else:
            cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch:.3f}", "-t", text, "-o", path]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0 or not os.path.exists(path) or os.path.getsize(path) <= 44:
            raise RuntimeError(f"{' '.join(cmd[:-1])} failed (exit {res.returncode}): {res.stderr.strip()[:500]}")
        return read_audio(path)


# ------------------------------------------------------------------------------------------------------ sentences


_SENTENCE_OK = re.compile(r"^[A-Za-z][A-Za-z' ,;:!?\-]*[A-Za-z.!?]$")


_PRONOUN_I = {"I", "I'm", "I'd", "I've", "I'll"}
_WORD = re.compile(r"[a-z']+")


def _clean_sentence(text: str, max_words: int, plain: bool = False, min_words: int = 3) -> str | None:
    """A short plain-ASCII sentence as it will be spoken, or None when it does not qualify. ``plain`` also drops
    sentences with a capitalized word after the first (names a recognizer cannot be expected to spell) or a colon or
    semicolon."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = " ".join(text.split())
    if not text.isascii() or "--" in text or " - " in text:
        return None
    if not _SENTENCE_OK.match(text) or "." in text[:-1]:  # one sentence, no abbreviations, no digits
        return None
    words = text.split()
    if not min_words <= len(words) <= max_words:
        return None
    if any(len(w.strip(",;:!?.'")) > 1 and w.strip(",;:!?.'").isupper() for w in words):  # acronyms
        return None
    if plain and (":" in text or ";" in text
                  or any(w[0].isupper() and w.strip(",!?.") not in _PRONOUN_I for w in words[1:])):
        return None
    return text


def sentence_pools(source: str = "auto", max_words: int = 12, seed: int = 0, plain: bool = False,
                   min_word_count: int = 0, min_words: int = 3) -> dict[str, list[str]]:
    """Sentences per split: ``{"train": [...], "validation": [...], "test": [...]}``, texts disjoint across splits.

    ``source``: ``"rotten-tomatoes"`` (the offline asset's own splits, filtered to 3..`max_words` words of plain
    ASCII without digits, abbreviations or acronyms), ``"harvard"`` (the 40 Harvard sentences of lists 1-4: 20
    train, 10 validation, 10 test), or ``"auto"`` (the first when installed). ``plain``: see `_clean_sentence`.
    ``min_word_count``: keep Rotten Tomatoes sentences whose every word occurs at least that often in the whole
    corpus (all splits, lowercased): common words, no rare ones ("britches", "hokum") or typos ("filmbut").
    ``min_words``: the shortest sentence kept (words).
    """
    from ..assets import is_installed

    if source == "auto":
        source = "rotten-tomatoes" if is_installed("rotten-tomatoes") else "harvard"
    if source == "harvard":
        s = list(HARVARD_SENTENCES)
        return {"train": s[:20], "validation": s[20:30], "test": s[30:40]}
    if source != "rotten-tomatoes":
        raise UserInputError(f"sentence source must be 'auto', 'rotten-tomatoes' or 'harvard', got {source!r}")
    from ..data import load_rotten_tomatoes

    try:
        dsd = load_rotten_tomatoes(seed=seed)
    except FileNotFoundError as e:
        raise UserInputError(str(e)) from e
    pools = {}
    counts: dict[str, int] = {}
    if min_word_count > 0:
        for split in ("train", "validation", "test"):
            for t in dsd[split]["text"]:
                for w in _WORD.findall(t.lower()):
                    counts[w] = counts.get(w, 0) + 1
    for split in ("train", "validation", "test"):
        seen, pool = set(), []
        for t in dsd[split]["text"]:
            c = _clean_sentence(t, max_words, plain, min_words)
            if c and min_word_count > 0 and any(counts.get(w, 0) < min_word_count for w in _WORD.findall(c.lower())):
                continue
            if c and c.lower() not in seen:
                seen.add(c.lower())
                pool.append(c)
        pools[split] = pool
    return pools


def _digit_string(rng: np.random.Generator, min_len: int = 3, max_len: int = 7) -> str:
    n = int(rng.integers(min_len, max_len + 1))
    return " ".join(DIGIT_WORDS[int(d)] for d in rng.integers(0, 10, size=n))


# --------------------------------------------------------------------------------------------------------- splits


def split_voices(
    voices: Sequence[Voice], validation_size: float = 0.2, test_size: float = 0.2, seed: int = 0
) -> dict[str, list[Voice]]:
    """Voices into disjoint train/validation/test groups (at least one each when the size is > 0), each engine spread
    over the splits in proportion: voices are ordered by their rank within their engine's shuffled list, test takes
    the first, validation the next, train the rest."""
    voices = list(voices)
    n = len(voices)
    n_test = max(1, round(test_size * n)) if test_size > 0 else 0
    n_val = max(1, round(validation_size * n)) if validation_size > 0 else 0
    if n - n_test - n_val < 1:
        raise UserInputError(
            f"{n} voice(s) cannot make a train split beside {n_val} validation and {n_test} test voice(s): "
            f"ask for more voices (num_voices >= {n_test + n_val + 1})"
        )
    rng = np.random.default_rng(seed)
    by_engine: dict[str, list[Voice]] = {}
    for v in voices:
        by_engine.setdefault(v.engine, []).append(v)
    keyed = []
    for engine in sorted(by_engine):
        group = by_engine[engine]
        order = rng.permutation(len(group))
        keyed += [((rank + 0.5) / len(group), engine, group[i]) for rank, i in enumerate(order)]
    ordered = [v for _, _, v in sorted(keyed, key=lambda t: (t[0], t[1]))]
    return {
        "test": ordered[:n_test],
        "validation": ordered[n_test : n_test + n_val],
        "train": ordered[n_test + n_val :],
    }


def _pick_voices(num_voices: int, engines, seed: int) -> list[Voice]:
    pool = list_voices(engines)
    if num_voices > len(pool):
        raise UserInputError(
            f"num_voices={num_voices} but only {len(pool)} voices are available ({_voice_summary(pool)})"
        )
    rng = np.random.default_rng([seed, 7])
    flite = [v for v in pool if v.engine == "flite"]
    espeak = [v for v in pool if v.engine == "espeak-ng"]
    # About a fifth flite voices (they sound most natural), the rest espeak-ng, each drawn at random.
    n_flite = min(len(flite), max(1 if flite and num_voices >= 3 else 0, round(num_voices * 0.2)))
    n_flite = max(n_flite, num_voices - len(espeak))
    chosen = [flite[i] for i in sorted(rng.permutation(len(flite))[:n_flite])]
    chosen += [espeak[i] for i in sorted(rng.permutation(len(espeak))[: num_voices - n_flite])]
    return chosen


def _voice_summary(voices: Sequence[Voice]) -> str:
    counts: dict[str, int] = {}
    for v in voices:
        counts[v.engine] = counts.get(v.engine, 0) + 1
    return ", ".join(f"{k}: {c}" for k, c in sorted(counts.items())) or "none"


# -------------------------------------------------------------------------------------------------------- building


def _snr_for(rng: np.random.Generator, noise_snr_db) -> float | None:
    if noise_snr_db is None:
        return None
    if isinstance(noise_snr_db, (int, float)):
        return float(noise_snr_db)
    lo, hi = noise_snr_db
    return float(rng.uniform(lo, hi))


def _render(spec: dict) -> dict:
    """Synthesize, resample, speed-perturb and add noise to one utterance described by `spec`."""
    voice: Voice = spec["voice"]
    rng = np.random.default_rng(spec["rng"])
    audio, rate = synthesize(spec["text"], voice, rate=spec["rate"], pitch=spec["pitch"], stretch=spec["stretch"])
    audio = resample_or_error(audio, rate, TARGET_RATE)
    audio = speed_perturb(audio, spec["speed"])
    if spec["snr_db"] is not None:
        audio = add_noise(audio, spec["snr_db"], rng, color=str(rng.choice(["white", "pink"])))
    return {
        "id": spec["id"], "audio": audio.astype(np.float32), "sampling_rate": TARGET_RATE, "text": spec["text"],
        "voice": voice.id, "engine": voice.engine, "kind": spec["kind"], "speed": float(spec["speed"]),
        "snr_db": spec["snr_db"], **({"label": spec["label"]} if "label" in spec else {}),
    }


def _features(label_names: Sequence[str] | None = None):
    from datasets import ClassLabel, Features, List, Value

    feats = {
        "id": Value("string"), "audio": List(Value("float32")), "sampling_rate": Value("int32"),
        "text": Value("string"), "voice": Value("string"), "engine": Value("string"), "kind": Value("string"),
        "speed": Value("float32"), "snr_db": Value("float32"),
    }
    if label_names is not None:
        feats["label"] = ClassLabel(names=list(label_names))
    return Features(feats)


def _to_dataset(rows: list[dict], features):
    from datasets import Dataset

    columns = {name: [r[name] for r in rows] for name in features}
    return Dataset.from_dict(columns, features=features)


def _render_all(specs: list[dict], num_workers: int | None, desc: str) -> list[dict]:
    from tqdm.auto import tqdm

    workers = num_workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(specs) < 4:
        return [_render(s) for s in tqdm(specs, desc=desc, disable=None)]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the work happens in subprocesses and numpy
        return list(tqdm(pool.map(_render, specs), total=len(specs), desc=desc, disable=None))


def _cached(cache_dir, name: str, settings: dict, build):
    from datasets import load_from_disk

    if cache_dir is None:
        return build()
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{key}"
    if (path / "dataset_dict.json").exists():
        logger.info("loading the cached %s data set from %s", name, path)
        return load_from_disk(str(path))
    _save_atomically(build(), path, settings)
    logger.info("saved the %s data set to %s", name, path)
    return load_from_disk(str(path))


def _save_atomically(dsd, path: Path, settings: dict | None = None) -> None:
    """`dsd.save_to_disk` into a temporary folder beside `path` (with `settings.json` when given), then renamed to
    `path`: a folder at `path` is always complete. If another process saved it first, that copy is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        dsd.save_to_disk(str(tmp))
        if settings is not None:
            (tmp / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
        try:
            tmp.rename(path)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_common(num_voices: int, per_voice: int, speed_factors, noise_snr_db) -> tuple[float, ...]:
    if num_voices < 1 or per_voice < 1:
        raise UserInputError(f"num_voices and per_voice must be >= 1, got {num_voices} and {per_voice}")
    speeds = tuple(float(f) for f in (speed_factors or (1.0,)))
    if any(f <= 0 for f in speeds):
        raise UserInputError(f"speed_factors must be positive, got {speeds}")
    if noise_snr_db is not None and not isinstance(noise_snr_db, (int, float)):
        if len(noise_snr_db) != 2 or noise_snr_db[0] > noise_snr_db[1]:
            raise UserInputError(f"noise_snr_db: expected a number, (low, high) or None, got {noise_snr_db!r}")
    return speeds


def _utterance_specs(voices_by_split, per_voice: int, seed: int, speeds, noise_snr_db, pick_text) -> dict[str, list]:
    specs: dict[str, list] = {}
    for split, voices in voices_by_split.items():
        specs[split] = []
        for voice in voices:
            style = _voice_style(seed, voice)
            vrng = np.random.default_rng([seed, zlib.crc32(voice.id.encode()), 1])
            for i in range(per_voice):
                urng = np.random.default_rng([seed, zlib.crc32(voice.id.encode()), 2, i])
                spec = {
                    "id": f"{voice.id}/{i:04d}", "voice": voice,
                    "rate": int(np.clip(style["rate"] * urng.uniform(0.9, 1.1), 80, 260)),
                    "pitch": int(np.clip(style["pitch"] + urng.integers(-8, 9), 0, 99)),
                    "stretch": float(style["stretch"] * urng.uniform(0.93, 1.07)),
                    "speed": float(urng.choice(speeds)), "snr_db": _snr_for(urng, noise_snr_db),
                    "rng": [seed, zlib.crc32(voice.id.encode()), 3, i],
                }
                spec.update(pick_text(split, i, vrng))
                specs[split].append(spec)
    return specs


def build_transcription_dataset(
    num_voices: int = 24,
    per_voice: int = 20,
    seed: int = 0,
    noise_snr_db: float | tuple[float, float] | None = (10.0, 30.0),
    speed_factors: Sequence[float] | None = (0.9, 1.0, 1.1),
    cache_dir: str | os.PathLike | None = None,
    digits_fraction: float = 0.3,
    sentences: Sequence[str] | str = "auto",
    max_words: int = 12,
    validation_size: float = 0.2,
    test_size: float = 0.2,
    engines: str | Sequence[str] | None = "auto",
    num_workers: int | None = None,
):
    """A speech-recognition `DatasetDict` (train/validation/test, split by voice) of synthesized sentences and digit
    strings: `num_voices` voices x `per_voice` utterances, ``digits_fraction`` of them digit strings of 3-7 digits
    ("four seven two"), the rest sentences drawn from `sentences` (``"auto"``, ``"rotten-tomatoes"``,
    ``"harvard"``: each split from its own pool, see `sentence_pools`; or a list of sentences, shared by all splits).

    Each utterance gets one speed factor from `speed_factors` and noise at an SNR of `noise_snr_db` (a number, a
    ``(low, high)`` range drawn per utterance, or None for clean audio). Everything is seeded by `seed`.
    """
    speeds = _check_common(num_voices, per_voice, speed_factors, noise_snr_db)
    if not 0 <= digits_fraction <= 1:
        raise UserInputError(f"digits_fraction must be in [0, 1], got {digits_fraction}")
    if isinstance(sentences, str):
        pools = sentence_pools(sentences, max_words=max_words, seed=seed) if digits_fraction < 1 else {}
        source = sentences
    else:
        shared = [" ".join(str(s).split()) for s in sentences if str(s).strip()]
        if not shared and digits_fraction < 1:
            raise UserInputError("sentences: got an empty list; pass sentences, 'auto' or digits_fraction=1")
        pools = {"train": shared, "validation": shared, "test": shared}
        source = "list"
    engines_used = _available_engines(engines)
    settings = {
        "version": _CACHE_VERSION, "num_voices": num_voices, "per_voice": per_voice, "seed": seed,
        "noise_snr_db": noise_snr_db, "speed_factors": speeds, "digits_fraction": digits_fraction,
        "sentences": source, "pools": hashlib.sha256(json.dumps(pools, sort_keys=True).encode()).hexdigest(),
        "max_words": max_words, "validation_size": validation_size, "test_size": test_size,
        "engines": _engine_versions(engines_used),
    }

    def pick_text(split, i, vrng):
        if vrng.random() < digits_fraction or not pools.get(split):
            return {"text": _digit_string(vrng), "kind": "digits"}
        pool = pools[split]
        return {"text": pool[int(vrng.integers(len(pool)))], "kind": "sentence"}

    def build():
        from datasets import DatasetDict

        voices = _pick_voices(num_voices, engines_used, seed)
        by_split = split_voices(voices, validation_size, test_size, seed)
        logger.info(
            "synthesizing %d utterances: %s", num_voices * per_voice,
            "; ".join(f"{s} {len(v)} voices ({_voice_summary(v)})" for s, v in by_split.items()),
        )
        specs = _utterance_specs(by_split, per_voice, seed, speeds, noise_snr_db, pick_text)
        feats = _features()
        return DatasetDict(
            {s: _to_dataset(_render_all(specs[s], num_workers, f"speech {s}"), feats) for s in _SPLITS if s in specs}
        )

    return _cached(cache_dir, "transcription", settings, build)


def build_keyword_dataset(
    num_voices: int = 24,
    per_voice: int = 40,
    seed: int = 0,
    noise_snr_db: float | tuple[float, float] | None = (10.0, 30.0),
    speed_factors: Sequence[float] | None = (0.9, 1.0, 1.1),
    cache_dir: str | os.PathLike | None = None,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    validation_size: float = 0.2,
    test_size: float = 0.2,
    engines: str | Sequence[str] | None = "auto",
    num_workers: int | None = None,
):
    """A keyword-spotting `DatasetDict` (split by voice): single words spoken alone, ``label`` a `ClassLabel` over
    `keywords` (default: "zero".."nine" then yes, no, up, down, left, right, on, off, stop, go). Each voice says
    `per_voice` words, the keywords in turn (shuffled per voice), so classes stay balanced per voice. Augmentation
    and `cache_dir` as in `build_transcription_dataset`."""
    speeds = _check_common(num_voices, per_voice, speed_factors, noise_snr_db)
    keywords = [str(k).strip() for k in keywords]
    if len(keywords) < 2 or len(set(keywords)) != len(keywords) or not all(k and k.isascii() for k in keywords):
        raise UserInputError(f"keywords: expected at least 2 distinct non-empty ASCII words, got {keywords!r}")
    engines_used = _available_engines(engines)
    settings = {
        "version": _CACHE_VERSION, "num_voices": num_voices, "per_voice": per_voice, "seed": seed,
        "noise_snr_db": noise_snr_db, "speed_factors": speeds, "keywords": keywords,
        "validation_size": validation_size, "test_size": test_size, "engines": _engine_versions(engines_used),
    }
    orders: dict[int, list[int]] = {}

    def pick_text(split, i, vrng):
        cycle = i // len(keywords)
        if i % len(keywords) == 0 or cycle not in orders:
            orders[cycle] = list(vrng.permutation(len(keywords)))
        label = int(orders[cycle][i % len(keywords)])
        return {"text": keywords[label], "kind": "keyword", "label": label}

    def build():
        from datasets import DatasetDict

        voices = _pick_voices(num_voices, engines_used, seed)
        by_split = split_voices(voices, validation_size, test_size, seed)
        logger.info(
            "synthesizing %d keywords: %s", num_voices * per_voice,
            "; ".join(f"{s} {len(v)} voices ({_voice_summary(v)})" for s, v in by_split.items()),
        )
        specs = _utterance_specs(by_split, per_voice, seed, speeds, noise_snr_db, pick_text)
        feats = _features(keywords)
        return DatasetDict(
            {s: _to_dataset(_render_all(specs[s], num_workers, f"keywords {s}"), feats) for s in _SPLITS if s in specs}
        )

    return _cached(cache_dir, "keywords", settings, build)


def build_natural_dataset(
    per_voice: int = 64,
    seed: int = 0,
    noise_snr_db: float | tuple[float, float] | None = None,
    cache_dir: str | os.PathLike | None = None,
    voices: Sequence[tuple[str, str]] = NATURAL_VOICES,
    sentences: Sequence[str] | str = "auto",
    max_words: int = 12,
    min_word_count: int = 8,
    min_words: int = 5,
    num_workers: int | None = None,
    split: str = "test",
    speed_factors: Sequence[float] = (1.0,),
    stretch_range: tuple[float, float] | None = None,
):
    """The natural-voice test set: `DatasetDict` with one ``test`` split of `per_voice` sentences per voice, spoken
    clean (``speed`` 1, each voice at its own default rate and pitch) by `voices` (default `NATURAL_VOICES`:
    festival's HTS voice ``cmu_us_slt_arctic_hts`` (32 kHz, resampled) and flite's ``awb``, ``rms``, ``slt``,
    ``kal16``: 5 x 64 = 320 clips). The ``voice`` column (``festival:cmu_us_slt_arctic_hts``, ``flite:awb`` ...)
    splits it by voice.

    Sentences: the *test* pool of `sentence_pools` (``"auto"``: Rotten Tomatoes snippets when that asset is
    installed, else Harvard; ``plain``: no names, no digits or acronyms, `min_words`..`max_words` words; every word
    at least `min_word_count` times in the corpus: 68 sentences at the defaults), so no sentence is one a model
    trained on the train pool has seen; or a list. (Without the word-count filter tiny.en scored 20% WER on 50
    clips, most errors on rare words even with the clean HTS voice: a test of vocabulary, not of compression; with
    it but 3-word fragments kept, 10.5%, many errors on fragments such as "a pure delight" -> "appear to light".) They are dealt out round-robin over the voices
    (clip i of voice j says sentence ``i * len(voices) + j`` of the pool, wrapping), so the voices say different
    sentences and a sentence repeats only once the pool is used up.

    ``noise_snr_db`` (a number or a ``(low, high)`` range drawn per clip, seeded): the same clips with white or pink
    noise at that SNR over the speech (`add_noise`), the mild-noise set at e.g. ``(15, 25)``. A missing engine or
    voice is a `UserInputError` naming its Debian package (``festival``, ``festvox-us-slt-hts``, ``flite``) before
    anything is synthesized. `cache_dir`: as in `build_transcription_dataset`.

    ``split="train"`` or ``"validation"`` speaks that split's sentence pool instead (disjoint from the test pool) into
    a split of that name: training audio (`build_natural_training_set`), where each clip also gets a speed factor
    drawn from `speed_factors` and, with `stretch_range`, a duration stretch drawn from it (seeded per clip).
    """
    if split not in _SPLITS:
        raise UserInputError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if stretch_range is not None and not 0 < stretch_range[0] <= stretch_range[1]:
        raise UserInputError(f"stretch_range: expected (low, high) with 0 < low <= high, got {stretch_range!r}")
    speeds = _check_common(len(voices) or 1, per_voice, speed_factors, noise_snr_db)
    voice_list = [Voice(str(e), str(n)) for e, n in voices]
    if not voice_list or len(set(voice_list)) != len(voice_list):
        raise UserInputError(f"voices: expected distinct (engine, name) pairs, got {list(voices)!r}")
    for v in voice_list:
        require_voice(v)
    if isinstance(sentences, str):
        pool = sentence_pools(sentences, max_words=max_words, seed=seed, plain=True,
                              min_word_count=min_word_count, min_words=min_words)[split]
        source = sentences
    else:
        pool, source = [" ".join(str(t).split()) for t in sentences if str(t).strip()], "list"
    if not pool:
        raise UserInputError("sentences: no sentence to speak (an empty list, or none passed the filter)")
    engines = sorted({v.engine for v in voice_list})
    settings = {
        "version": _CACHE_VERSION, "set": "natural", "per_voice": per_voice, "seed": seed,
        "noise_snr_db": noise_snr_db, "voices": [v.id for v in voice_list], "sentences": source,
        "pool": hashlib.sha256(json.dumps(pool).encode()).hexdigest(), "max_words": max_words,
        "min_word_count": min_word_count, "min_words": min_words,
        "engines": _engine_versions(engines),
    }
    if split != "test" or speeds != (1.0,) or stretch_range is not None:  # (the test set's key stays as it was)
        settings.update(split=split, speed_factors=speeds, stretch_range=stretch_range)

    def build():
        from datasets import DatasetDict

        specs = []
        for j, voice in enumerate(voice_list):
            for i in range(per_voice):
                prng = np.random.default_rng([seed, zlib.crc32(voice.id.encode()), 6, i])
                specs.append({
                    "id": f"{voice.id}/{i:04d}", "voice": voice, "rate": 175, "pitch": 50,
                    "stretch": float(prng.uniform(*stretch_range)) if stretch_range else 1.0,
                    "speed": float(prng.choice(speeds)) if len(speeds) > 1 else speeds[0], "kind": "sentence",
                    "text": pool[(i * len(voice_list) + j) % len(pool)],
                    "snr_db": _snr_for(np.random.default_rng([seed, zlib.crc32(voice.id.encode()), 4, i]),
                                       noise_snr_db),
                    "rng": [seed, zlib.crc32(voice.id.encode()), 5, i],
                })
        if len(voice_list) * per_voice > len(pool):
            logger.info("%d clips from %d sentences: sentences repeat, each time by another voice",
                        len(specs), len(pool))
        name = "natural speech" + ("" if noise_snr_db is None else " + noise") + ("" if split == "test" else f" {split}")
        return DatasetDict({split: _to_dataset(_render_all(specs, num_workers, name), _features())})

    folder = "natural" + ("" if noise_snr_db is None else "-noisy") + ("" if split == "test" else f"-{split}")
    return _cached(cache_dir, folder, settings, build)


def build_natural_training_set(
    output_dir: str | os.PathLike,
    per_voice: int = 480,
    validation_per_voice: int = 24,
    voices: Sequence[tuple[str, str]] = TRAINING_VOICES,
    seed: int = 0,
    speed_factors: Sequence[float] = (0.9, 1.0, 1.1),
    stretch_range: tuple[float, float] | None = (0.9, 1.15),
    min_word_count: int = 3,
    test_per_voice: int = 64,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
):
    """Training data for the models the natural set measures, saved as one folder `output_dir` that
    ``--dataset`` reads (`datasets.load_from_disk`): ``train`` and ``validation`` are the train and validation
    sentence pools (Rotten Tomatoes, plain, every word at least `min_word_count` times in the corpus; none is a test
    sentence) spoken by `voices` (default `TRAINING_VOICES`, none a voice of the test set), each clip at a speed from
    `speed_factors` and a duration stretch from `stretch_range`; ``test`` is the natural test set itself
    (`build_natural_dataset`, `test_per_voice` per voice), so a run's test WER is the benchmark's natural-set WER.
    Voices that the test set also uses are refused. Built pieces are cached under `cache_dir` (default: next to
    `output_dir`); an `output_dir` already holding a data set is loaded, not rebuilt."""
    from datasets import DatasetDict, load_from_disk

    out = Path(output_dir)
    if (out / "dataset_dict.json").exists():
        logger.info("loading the natural training set from %s", out)
        return load_from_disk(str(out))
    shared = sorted({f"{e}:{n}" for e, n in voices} & {f"{e}:{n}" for e, n in NATURAL_VOICES})
    if shared:
        raise UserInputError(f"voices {shared} speak the natural test set: training audio needs other voices")
    cache = cache_dir if cache_dir is not None else out.parent / "speech-cache"
    common = dict(seed=seed, cache_dir=cache, voices=voices, min_word_count=min_word_count,
                  speed_factors=speed_factors, stretch_range=stretch_range, num_workers=num_workers)
    dsd = DatasetDict({
        "train": build_natural_dataset(per_voice=per_voice, split="train", **common)["train"],
        "validation": build_natural_dataset(per_voice=validation_per_voice, split="validation", **common)["validation"],
        "test": build_natural_dataset(per_voice=test_per_voice, seed=seed, cache_dir=cache,
                                      num_workers=num_workers)["test"],
    })
    _save_atomically(dsd, out)
    logger.info("saved the natural training set to %s (%s)", out, {k: len(v) for k, v in dsd.items()})
    return load_from_disk(str(out))


# ---------------------------------------------------------------------------------------------------- pocketsphinx


_TRANSCRIPT_LINE = re.compile(r"^(.*)\(([^()\s]+)\)\s*$")


def _read_transcription(path: Path) -> dict[str, str]:
    """Sphinx transcription lines ``<s> words </s> (file-id)`` as ``{file_id: "words"}``."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _TRANSCRIPT_LINE.match(line.strip())
        if m:
            words = [w for w in m.group(1).split() if w not in ("<s>", "</s>", "<sil>")]
            out[m.group(2)] = " ".join(words)
    return out


# The headerless clips whose words the pocketsphinx test suite checks.
_MISC_CLIPS = (
    ("goforward.raw", "go forward ten meters", "sentence"),
    ("tidigits/dhd.2934z.raw", "two nine three four zero", "digits"),
)


ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
_ALSA_NOT_SPEECH = ("Noise",)  # Noise.wav is a burst of noise, not a word


def load_alsa_words(root: str | os.PathLike | None = None):
    """The spoken-word WAV files that Debian's ``alsa-utils`` installs (``Front_Center.wav`` ... 8 of them, 48 kHz,
    resampled to 16 kHz; ``Noise.wav`` is left out: not speech), transcript = file name ("front center"), as a
    `Dataset` with the columns of the synthetic sets (``engine`` ``"real"``, ``voice`` ``"real:alsa"``).

    `root` defaults to ``$HFCOMPRESS_ALSA_SOUNDS`` or ``/usr/share/sounds/alsa``.
    """
    root = Path(root or os.environ.get("HFCOMPRESS_ALSA_SOUNDS") or ALSA_SOUNDS)
    files = sorted(p for p in root.glob("*.wav") if p.stem not in _ALSA_NOT_SPEECH) if root.is_dir() else []
    if not files:
        raise UserInputError(
            f"the alsa-utils spoken-word recordings are missing (no WAV file in {root}): install the Debian package "
            f"'alsa-utils' (sudo apt-get install alsa-utils) or set HFCOMPRESS_ALSA_SOUNDS"
        )
    rows = []
    for path in files:
        audio, rate = read_audio(path)
        rows.append({
            "id": f"alsa:{path.stem}", "audio": resample_or_error(audio, rate), "sampling_rate": TARGET_RATE,
            "text": path.stem.replace("_", " ").lower(), "voice": "real:alsa", "engine": "real", "kind": "words",
            "speed": 1.0, "snr_db": None,
        })
    return _to_dataset(rows, _features())


REAL_SOURCES = ("pocketsphinx", "alsa")


def build_real_dataset(sources: Sequence[str] = REAL_SOURCES, cache_dir: str | os.PathLike | None = None,
                       pocketsphinx_root: str | os.PathLike | None = None,
                       alsa_root: str | os.PathLike | None = None):
    """The real-recordings test set: `DatasetDict` with one ``test`` split of every pocketsphinx-testdata clip with a
    transcript (`load_pocketsphinx_set("all")`: LibriVox, cards, go forward, TIDIGITS: 12 clips) and the alsa-utils
    words (`load_alsa_words`: 8), the ``voice`` column saying which. Cached under `cache_dir` like the others."""
    unknown = [s for s in sources if s not in REAL_SOURCES]
    if not sources or unknown:
        raise UserInputError(f"real recording sources {list(sources)!r}: expected some of {list(REAL_SOURCES)}")

    def load(source):
        if source == "pocketsphinx":
            return load_pocketsphinx_set("all", pocketsphinx_root)
        return load_alsa_words(alsa_root)

    parts = [load(s) for s in sources]  # errors (a missing Debian package) before anything is cached

    def build():
        from datasets import DatasetDict, concatenate_datasets

        return DatasetDict({"test": concatenate_datasets(parts)})

    settings = {"version": _CACHE_VERSION, "set": "real", "sources": list(sources),
                "ids": [i for p in parts for i in p["id"]], "texts": [t for p in parts for t in p["text"]]}
    return _cached(cache_dir, "real", settings, build)


SPEECH_TEST_SETS = ("natural", "natural_noisy", "real")
NATURAL_NOISE_SNR_DB = (15.0, 25.0)  # "mild": speech clearly above the noise


def build_speech_test_sets(cache_dir: str | os.PathLike | None, names: Sequence[str] = SPEECH_TEST_SETS,
                           per_voice: int = 64, seed: int = 0,
                           noise_snr_db: float | tuple[float, float] = NATURAL_NOISE_SNR_DB,
                           num_workers: int | None = None) -> dict:
    """The test sets that measure speech compression, ``{name: Dataset}``: ``natural`` (`build_natural_dataset`,
    clean), ``natural_noisy`` (the same clips with noise at `noise_snr_db`, seeded) and ``real``
    (`build_real_dataset`). Each is saved under `cache_dir` (a folder `datasets.load_from_disk` reads) and reused."""
    unknown = [n for n in names if n not in SPEECH_TEST_SETS]
    if unknown:
        raise UserInputError(f"speech test sets {unknown} are unknown; expected some of {list(SPEECH_TEST_SETS)}")
    out = {}
    for name in names:
        if name == "real":
            out[name] = build_real_dataset(cache_dir=cache_dir)["test"]
        else:
            out[name] = build_natural_dataset(per_voice=per_voice, seed=seed, cache_dir=cache_dir,
                                              noise_snr_db=noise_snr_db if name == "natural_noisy" else None,
                                              num_workers=num_workers)["test"]
    return out


def load_pocketsphinx_set(name: str = "librivox", root: str | os.PathLike | None = None):
    """Real recordings of Debian's ``pocketsphinx-testdata`` with their transcripts, as a `Dataset` with the columns
    of the synthetic sets (``engine`` is ``"real"``, ``speed`` 1, ``snr_db`` None).

    ``name``: ``"librivox"`` (5 LibriVox sentences read by one speaker, 3-6 s), ``"cards"`` (5 clips of playing
    cards, "ten of clubs"), ``"misc"`` (two raw 16-bit clips: "go forward ten meters" and the TIDIGITS string "two
    nine three four zero") or ``"all"``. `root` defaults to ``$HFCOMPRESS_POCKETSPHINX_DATA`` or
    ``/usr/share/pocketsphinx/test/data``. Transcripts are lowercase words as the files give them.
    """
    from datasets import concatenate_datasets

    root = Path(root or os.environ.get("HFCOMPRESS_POCKETSPHINX_DATA") or POCKETSPHINX_DATA)
    if name == "all":
        return concatenate_datasets([load_pocketsphinx_set(n, root) for n in POCKETSPHINX_SETS])
    if name not in POCKETSPHINX_SETS:
        raise UserInputError(
            f"pocketsphinx set {name!r} is unknown; expected one of {list(POCKETSPHINX_SETS) + ['all']}"
        )
    if not root.is_dir():
        raise UserInputError(
            f"the pocketsphinx test recordings are missing ({root} does not exist): install the Debian package "
            f"'pocketsphinx-testdata' (sudo apt-get install pocketsphinx-testdata) or set HFCOMPRESS_POCKETSPHINX_DATA"
        )
    clips: list[tuple[Path, str, str, str]] = []  # path, text, kind, voice
    if name == "misc":
        for rel, text, kind in _MISC_CLIPS:
            clips.append((root / rel, text, kind, f"real:{Path(rel).stem}"))
    else:
        folder = root / name
        trans_file = folder / ("transcription" if name == "librivox" else f"{name}.transcription")
        if not trans_file.is_file():
            raise UserInputError(
                f"the pocketsphinx {name!r} set is missing its transcription file {trans_file}: reinstall the Debian "
                f"package 'pocketsphinx-testdata'"
            )
        for file_id, text in _read_transcription(trans_file).items():
            clips.append((folder / f"{file_id}.wav", text, "sentence", f"real:{name}"))
    rows = []
    for path, text, kind, voice in clips:
        if not path.is_file():
            raise UserInputError(
                f"pocketsphinx clip {path} is missing: reinstall the Debian package 'pocketsphinx-testdata'"
            )
        audio, rate = read_audio(path)
        rows.append({
            "id": f"pocketsphinx:{name}/{path.stem}", "audio": resample_or_error(audio, rate),
            "sampling_rate": TARGET_RATE,
            "text": text, "voice": voice, "engine": "real", "kind": kind, "speed": 1.0, "snr_db": None,
        })
    return _to_dataset(rows, _features())
