"""Speech-recognition data for training: the synthesized default, users' files and folders, saved datasets.

`load_transcription_dataset(name_or_path, audio_column, text_column)` returns a `DatasetDict` with `train`,
`validation` and `test` splits of two columns: ``audio`` (mono float32 samples at 16 kHz, a
``List(Value("float32"))`` column, nothing to decode) and ``text`` (the transcript). Accepted:

- ``speech-synth``: the project's synthesized set (`synth.build_transcription_dataset`: sentences and digit strings
  spoken by espeak-ng/flite voices, split by voice), built once and cached under ``$HFCOMPRESS_HOME/speech``;
- a ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file, or a folder of train/validation/test files (the layouts
  `hfcompress.data` reads), whose audio column holds paths of audio files (anything ``soundfile`` reads: WAV, FLAC,
  OGG; or headerless 16-bit ``.raw`` at 16 kHz), absolute or relative to the data file's folder;
- a folder written by ``DatasetDict.save_to_disk`` whose audio column holds float arrays (at the rate of a
  ``sampling_rate`` column, else 16 kHz), ``{"array", "sampling_rate"}`` or ``{"bytes", "path"}`` entries (a
  `datasets.Audio` column is read undecoded: datasets 5 would decode it through torchcodec), or file paths.

Audio at another rate is resampled to 16 kHz (logged once per pair of rates), or, with ``resample=False``, refused
with an error naming both rates. Rows with an empty transcript, or longer than `max_seconds`, are dropped with one
warning per split. A clip longer than `window_seconds` (the fixed window a Whisper hears: 30 s, less for a student
with a cut window) is refused: one error naming the first such clip (split, row, file), its length, the window and
how many clips are too long. Clips are not chunked: a transcript cannot be cut where the audio is cut without word
timings. An audio file that cannot be decoded stops the load: one error per split naming every such file (up to
ten, with their count) and the decoder's message; no row is skipped silently, so every model is measured on the
same clips. A missing validation or test split is carved out of train (10% each, seeded). Every other problem (a
missing column or file, no rows) is a `UserInputError` naming what was found.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np

from ..errors import UserInputError
from ..extras import require_extra
from .synth import TARGET_RATE, read_audio, resample_or_error

logger = logging.getLogger(__name__)

SYNTH_NAME = "speech-synth"
KEYWORDS_NAME = "speech-keywords"
_SPLITS = ("train", "validation", "test")


def _features(label_feature=None):
    from datasets import Features, List, Value

    if label_feature is not None:
        return Features({"audio": List(Value("float32")), "label": label_feature})
    return Features({"audio": List(Value("float32")), "text": Value("string")})


class UndecodableAudio(UserInputError):
    """An audio file or byte string that the decoder (soundfile) cannot read."""


def _read_entry(value, rate_column_value, base_dirs: list[str], where: str) -> tuple[np.ndarray, int]:
    """One audio cell as (samples, rate); `UndecodableAudio` for a file or bytes that do not decode."""
    if isinstance(value, str):
        path = value if os.path.isabs(value) else next(
            (os.path.join(d, value) for d in base_dirs if os.path.exists(os.path.join(d, value))), value)
        if not os.path.isfile(path):
            raise UserInputError(f"{where}: audio file {value!r} not found (looked in {', '.join(base_dirs)})")
        try:
            return read_audio(path)
        except UserInputError:
            raise
        except Exception as e:  # soundfile's own errors (not an audio file, unknown format)
            raise UndecodableAudio(f"{where}: could not decode audio file {path}: {type(e).__name__}: {e}") from e
    if isinstance(value, dict):
        if value.get("array") is not None:
            return np.asarray(value["array"], dtype=np.float32), int(value.get("sampling_rate") or rate_column_value
                                                                     or TARGET_RATE)
        if value.get("bytes"):
            require_extra("speech", "reading audio files")
            import soundfile

            try:
                data, rate = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            except Exception as e:
                name = f" ({value['path']})" if value.get("path") else ""
                raise UndecodableAudio(f"{where}: could not decode the audio bytes{name}: {type(e).__name__}: {e}") \
                    from e
            return data.mean(axis=1), int(rate)
        if value.get("path"):
            return _read_entry(value["path"], rate_column_value, base_dirs, where)
        raise UserInputError(f"{where}: audio entry has neither 'array', 'bytes' nor 'path': {sorted(value)}")
    if value is None:
        raise UserInputError(f"{where}: audio is missing (empty cell)")
    return np.asarray(value, dtype=np.float32), int(rate_column_value or TARGET_RATE)


def _convert_split(ds, split: str, source: str, audio_column: str, text_column: str | None, base_dirs: list[str],
                   resample: bool, max_seconds: float, label_column: str | None = None,
                   window_seconds: float | None = None, window_option: str | None = None):
    """One split as rows of 16 kHz float32 audio and text (or, with `label_column`, the label column as it is: the
    label rules of `hfcompress.data.encode_labels` follow), incomplete or too long rows dropped (with a warning);
    clips longer than `window_seconds` and undecodable files refused (see the module docstring)."""
    from datasets import Audio, Dataset, List, Value

    target_role, target = ("label", label_column) if label_column else ("transcript", text_column)
    for role, col in (("audio", audio_column), (target_role, target)):
        if col not in ds.column_names:
            flag = {"audio": "--audio_column", "transcript": "--text_column", "label": "--label_column"}[role]
            raise UserInputError(f"{role} column {col!r} not found in split {split!r} ({source}); columns are "
                                 f"{ds.column_names}; expected {flag} to name one of them")
    feature = ds.features[audio_column]
    if isinstance(feature, Audio):
        ds = ds.cast_column(audio_column, Audio(decode=False))
    if label_column:
        texts = ["label"] * len(ds)  # a label row is complete here; a missing label is encode_labels' to drop
    else:
        texts = [" ".join(str(t).split()) if t is not None else "" for t in ds[text_column]]
    rates = ds["sampling_rate"] if "sampling_rate" in ds.column_names else None
    fast = (isinstance(feature, List) and feature.feature == Value("float32") and rates is not None
            and all(r == TARGET_RATE for r in rates))
    if fast:  # the synthesized sets: already 16 kHz float32 (no copy of the samples)
        import pyarrow.compute as pc

        lengths = pc.list_value_length(ds.data.column(audio_column)).to_numpy(zero_copy_only=False)
        out = ds.select_columns([audio_column, target])
        if audio_column != "audio":
            out = out.rename_column(audio_column, "audio")
        if target != ("label" if label_column else "text"):
            out = out.rename_column(target, "label" if label_column else "text")
    else:
        audios, lengths, undecodable = [], [], []
        for i, value in enumerate(ds[audio_column]):
            where = f"split {split!r} ({source}), row {i}"
            try:
                audio, rate = _read_entry(value, rates[i] if rates is not None else None, base_dirs, where)
            except UndecodableAudio as e:
                undecodable.append(str(e))
                audios.append(np.zeros(0, np.float32))
                lengths.append(0)
                continue
            try:
                audio = resample_or_error(audio, rate, TARGET_RATE, resample=resample)
            except UserInputError as e:
                name = f" ({value})" if isinstance(value, str) else ""
                raise UserInputError(f"{where}{name}: {e}; or pass --resample_audio to resample") from None
            audios.append(audio)
            lengths.append(len(audio))
        if undecodable:
            shown = "; ".join(undecodable[:10]) + ("; ..." if len(undecodable) > 10 else "")
            raise UndecodableAudio(f"{len(undecodable)} of {len(ds)} audio entries of split {split!r} ({source}) "
                                   f"could not be decoded: {shown}. Expected audio soundfile reads (WAV, FLAC, OGG, ...) "
                                   "or 16-bit .raw; fix or remove those rows (hfcompress does not skip them: every "
                                   "model must be measured on the same clips)")
        if rates is None and len(ds) and not isinstance(ds[0][audio_column], (str, dict)):
            logger.info("split %r (%s): audio arrays without a 'sampling_rate' column are taken as %d Hz", split,
                        source, TARGET_RATE)
        if label_column:
            features = _features(label_feature=ds.features[label_column])
            out = Dataset.from_dict({"audio": audios, "label": ds[label_column]}, features=features)
        else:
            out = Dataset.from_dict({"audio": audios, "text": texts}, features=_features())
        lengths = np.asarray(lengths)
    no_text = np.asarray([not t for t in texts])
    if window_seconds is not None:
        _refuse_longer_than_window(ds, audio_column, split, source, np.asarray(lengths), no_text, window_seconds,
                                   window_option)
    too_long = np.asarray(lengths) > max_seconds * TARGET_RATE
    empty = np.asarray(lengths) == 0
    drop = no_text | too_long | empty
    if drop.all():
        raise UserInputError(f"split {split!r} ({source}) has no usable rows: all {len(ds)} have an empty transcript "
                             f"in column {target!r}, no audio, or audio longer than {max_seconds:g} s")
    if drop.any():
        logger.warning("Dropped %d of %d rows of split %r (%s): %d with an empty transcript in column %r, %d without "
                       "audio, %d longer than %g s", int(drop.sum()), len(ds), split, source, int(no_text.sum()),
                       target, int(empty.sum()), int(too_long.sum()), max_seconds)
        out = out.select(np.flatnonzero(~drop))
    return out


def _refuse_longer_than_window(ds, audio_column: str, split: str, source: str, lengths: np.ndarray, no_text,
                               window_seconds: float, window_option: str | None = None) -> None:
    """One error for the clips of a split longer than the window the model hears (rows dropped anyway for an empty
    transcript do not count): the first and the longest named, with their lengths and how many there are.
    `window_option` names the option that set the window (e.g. ``--student_window_seconds 10``)."""
    over = np.flatnonzero((lengths > window_seconds * TARGET_RATE) & ~np.asarray(no_text))
    if not len(over):
        return

    def name(i: int) -> str:
        value = ds[int(i)][audio_column]
        return f"row {int(i)}" + (f" ({value})" if isinstance(value, str) else "") + \
            f", {lengths[int(i)] / TARGET_RATE:.2f} s"

    longest = over[np.argmax(lengths[over])]
    needed = int(np.ceil(lengths[longest] / TARGET_RATE))
    if window_option:
        what, fix = f"the student's {window_seconds:g} s encoder window ({window_option})", \
            f"or pass a window of at least {needed} s (or 0: the teacher's)"
    else:
        what, fix = f"the {window_seconds:g} s window the model hears (Whisper's encoder window, max_source_positions)", \
            f"or use a model (or --audio_window_seconds) with a window of at least {needed} s"
    raise UserInputError(
        f"split {split!r} ({source}): {len(over)} clip(s) longer than {what}: first {name(over[0])}, longest "
        f"{name(longest)}. Clips are not chunked (a transcript cannot be cut where the audio is cut): cut or drop "
        f"those clips, {fix}")


def _carve(train, validation_size: float, test_size: float, seed: int, missing: list[str]) -> dict:
    """Random validation/test splits out of train (seeded)."""
    n = len(train)
    order = np.random.default_rng(seed).permutation(n)
    sizes = {"validation": validation_size, "test": test_size}
    out, start = {}, 0
    for split in missing:
        k = max(1, int(round(sizes[split] * n)))
        out[split] = train.select(sorted(order[start : start + k]))
        start += k
    if n - start < 1:
        raise UserInputError(f"the train split has {n} rows: too few to carve {' and '.join(missing)} out of it; "
                             "expected more rows, or validation/test files")
    out["train"] = train.select(sorted(order[start:]))
    return out


def _read_splits(name_or_path: str) -> tuple[dict, dict, list[str]]:
    """A user's files or saved dataset as {train/validation/test: Dataset}, their sources, and the folders relative
    audio paths are looked up in."""
    from ..data import read_raw_splits, split_alias

    raw, sources = read_raw_splits(name_or_path)
    path = os.path.expanduser(name_or_path)
    base = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
    splits, src = {}, {}
    for name, ds in raw.items():
        target = split_alias(name)
        if target is None:
            logger.info("Ignoring split %r of %s: only train/validation/test are used", name, sources[name])
            continue
        if target in splits:
            raise UserInputError(f"two splits map to {target!r}: {src[target]} and {sources[name]}; expected one")
        splits[target], src[target] = ds, sources[name]
    if "train" not in splits:
        raise UserInputError(f"dataset {name_or_path!r} has no train split (found {sorted(raw)}); expected a split or "
                             "file named train")
    return splits, src, [base, os.path.join(base, "data"), os.getcwd()]


def load_audio_classification_dataset(
    name_or_path: str = KEYWORDS_NAME,
    audio_column: str = "audio",
    label_column: str = "label",
    seed: int = 42,
    resample: bool = True,
    max_seconds: float = 30.0,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    synth_settings: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    window_seconds: float | None = None,
    window_option: str | None = None,
):
    """An audio-classification `DatasetDict` (train/validation/test; columns ``audio``, 16 kHz float32 samples, and
    ``label``). ``speech-keywords`` is the project's synthesized keyword set (`synth.build_keyword_dataset`: twenty
    spoken words, "zero".."nine", yes, no, up, ..., split by voice; `synth_settings` go to it); otherwise the files and
    saved datasets `load_transcription_dataset` reads, with a label column instead of a transcript, labelled as
    text classification data is (`hfcompress.data.encode_labels`: class names become a sorted `ClassLabel`, integer ids
    stay ids; missing validation/test splits are carved out of train, stratified)."""
    from datasets import DatasetDict

    from ..data import encode_labels

    if name_or_path.strip().lower() == KEYWORDS_NAME and not os.path.exists(name_or_path):
        from ..assets import hfcompress_home
        from .synth import build_keyword_dataset

        built = build_keyword_dataset(cache_dir=cache_dir or hfcompress_home() / "speech", **(synth_settings or {}))
        out = DatasetDict({s: built[s].select_columns(["audio", "label"]) for s in _SPLITS})
        if window_seconds is not None:
            import pyarrow.compute as pc

            for s, ds in out.items():
                lengths = pc.list_value_length(ds.data.column("audio")).to_numpy(zero_copy_only=False)
                _refuse_longer_than_window(ds, "audio", s, KEYWORDS_NAME, lengths, np.zeros(len(ds), bool),
                                           window_seconds, window_option)
        return out
    splits, src, base_dirs = _read_splits(name_or_path)
    out = {s: _convert_split(ds, s, src[s], audio_column, None, base_dirs, resample, max_seconds,
                             label_column=label_column, window_seconds=window_seconds, window_option=window_option)
           for s, ds in splits.items()}
    encoded = encode_labels(out, src, "label", seed=seed, validation_size=validation_size, test_size=test_size)
    return DatasetDict({s: encoded[s] for s in _SPLITS})


def load_transcription_dataset(
    name_or_path: str = SYNTH_NAME,
    audio_column: str = "audio",
    text_column: str = "text",
    seed: int = 42,
    resample: bool = True,
    max_seconds: float = 30.0,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    synth_settings: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    window_seconds: float | None = None,
    window_option: str | None = None,
):
    """A speech-recognition `DatasetDict` (train/validation/test; columns ``audio``, ``text``). See the module
    docstring for what is accepted; `window_seconds`: refuse clips longer than it (`window_option`: the option that
    set it, named in the error). `synth_settings` go to `build_transcription_dataset` for ``speech-synth``
    (cached in `cache_dir`, default ``$HFCOMPRESS_HOME/speech``)."""
    from datasets import DatasetDict

    if name_or_path.strip().lower() == SYNTH_NAME and not os.path.exists(name_or_path):
        from ..assets import hfcompress_home
        from .synth import build_transcription_dataset

        raw = dict(build_transcription_dataset(cache_dir=cache_dir or hfcompress_home() / "speech",
                                               **(synth_settings or {})))
        splits, src = raw, {s: f"{SYNTH_NAME} split {s!r}" for s in raw}
        base_dirs = [os.getcwd()]
    else:
        splits, src, base_dirs = _read_splits(name_or_path)
    out = {s: _convert_split(ds, s, src[s], audio_column, text_column, base_dirs, resample, max_seconds,
                             window_seconds=window_seconds, window_option=window_option) for s, ds in splits.items()}
    missing = [s for s in ("validation", "test") if s not in out]
    if missing:
        out.update(_carve(out["train"], validation_size, test_size, seed, missing))
    return DatasetDict({s: out[s] for s in _SPLITS})
