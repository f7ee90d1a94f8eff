"""The speech data of `hfcompress.speech`: the WER normalizer, the synthesized sets and the pocketsphinx clips.

Synthesis tests need the Debian programs ``espeak-ng`` / ``flite`` and are skipped without them; the pocketsphinx
test needs the ``pocketsphinx-testdata`` package. Everything synthesized here is tiny (a few utterances).
"""

import json
import shutil

import numpy as np
import pytest

from hfcompress.errors import UserInputError
from hfcompress.quantize.dynamic import CONFIG_KEY
from hfcompress.speech import synth
from hfcompress.speech.normalize import (
    align_counts,
    compression_ratio,
    is_looping,
    normalize,
    wer_interval,
    word_error_rate,
)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)"
)
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
needs_pocketsphinx = pytest.mark.skipif(
    not (synth.POCKETSPHINX_DATA / "librivox" / "transcription").is_file(),
    reason="pocketsphinx-testdata not installed (apt-get install pocketsphinx-testdata)",
)


# ------------------------------------------------------------------------------------------------------ normalizer


@pytest.mark.parametrize(
    "spoken, written",
    [
        ("five", "5"),
        ("twenty one", "21"),
        ("Twenty-one", "21"),
        ("two thousand and five", "2005"),
        ("one hundred", "100"),
        ("a hundred", "100"),
        ("one hundred and one", "101"),
        ("nine hundred ninety nine thousand nine hundred ninety nine", "999999"),
        ("four seven two", "472"),
        ("four seven two", "4, 7, 2."),
        ("four seventy-two", "4-7-2"),
        ("nineteen ninety nine", "1999"),
        ("three five oh", "350"),
        ("the twenty-first century", "the 21st century"),
        ("one thousand people", "1,000 people"),
        ("ten percent", "10%"),
    ],
)
def test_spoken_and_written_numbers_match(spoken, written):
    assert normalize(spoken) == normalize(written)


def test_normalize_rules():
    assert normalize("It's 5 o'clock!") == "it's 5 o'clock"
    assert normalize("  Don't   'quote' me,  OK?  ") == "don't quote me ok"
    assert normalize("“Abandon” will leave you — wanting") == "abandon will leave you wanting"
    assert normalize("Mr. John Dashwood") == "mister john dashwood"
    assert normalize("cold-hearted") == "cold hearted"
    assert normalize("oh no, rock and roll") == "oh no rock and roll"  # "oh"/"and" stay words outside numbers
    # digit strings: one digit per word; whole numbers only with split_digits=False
    assert normalize("one two three") == "1 2 3" == normalize("123")
    assert normalize("twenty one", split_digits=False) == "21"
    assert normalize("two thousand and five", split_digits=False) == "2005"
    assert normalize("one two three", split_digits=False) == "1 2 3"
    assert normalize("nineteen ninety nine", split_digits=False) == "19 99"
    assert normalize("one hundred", split_digits=False) == "100"
    assert normalize("first and second", split_digits=False) == "1st and 2nd"
    assert normalize("3.5") == "3.5"
    assert normalize("") == ""


def test_word_error_rate_hand_computed():
    # "a b c d" -> "a x c": b->x substituted, d deleted; "e f" -> "e f g": g inserted. 3 errors / 6 words.
    out = word_error_rate(["a b c d", "e f"], ["a x c", "e f g"], normalizer=None)
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (1, 1, 1, 4)
    assert out["num_ref_words"] == 6 and out["wer"] == pytest.approx(0.5)
    # characters: "a b c d" vs "a x c" = 1 substitution + 2 deletions (" d"); "e f" vs "e f g" = 2 insertions
    assert out["char_errors"] == 5 and out["num_ref_chars"] == 10 and out["cer"] == pytest.approx(0.5)
    assert word_error_rate("the cat sat", "the cat sat down", normalizer=None)["wer"] == pytest.approx(1 / 3)
    assert align_counts([], ["x", "y"]) == (0, 0, 0, 2)


def test_word_error_rate_normalizes_both_sides():
    out = word_error_rate(["I have twenty-one cats."], ["i have 21 cats"])
    assert out["wer"] == 0.0 and out["cer"] == 0.0
    # with raw text the same pair has errors: "I"/"i", "twenty-one"/"21", "cats."/"cats"
    assert word_error_rate(["I have twenty-one cats."], ["i have 21 cats"], normalizer=None)["substitutions"] == 3
    out = word_error_rate(["four seven two"], ["four seven three"])
    assert out["wer"] == pytest.approx(1 / 3)


def test_word_error_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="2 references but 1"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        word_error_rate([], [])
    with pytest.raises(ValueError, match="no word"):
        word_error_rate(["!!"], ["a"])


# ---------------------------------------------------------------------------------------------------------- audio


def test_wer_interval_bootstrap():
    lo, hi = wer_interval([1, 0, 2, 0, 1], [10, 10, 10, 10, 10], resamples=4000)
    assert 0 <= lo < 0.08 < hi <= 0.2  # the corpus WER 4/50 inside
    assert wer_interval([0, 0], [5, 5]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equally long"):
        wer_interval([1], [5, 5])


def test_looping():
    assert compression_ratio("") == 0.0
    assert not is_looping("And Mr. John Dashwood had then leisure to consider how much there might be.")
    assert is_looping("the end. " * 20)
    assert is_looping("short", generated_tokens=96, max_new_tokens=96)
    assert not is_looping("short", generated_tokens=5, max_new_tokens=96)


def _sine(freq, rate, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_resample_8k_to_16k_doubles_length_and_keeps_pitch():
    x = _sine(440.0, 8000)
    y = synth.resample_or_error(x, 8000, 16000)
    assert y.dtype == np.float32 and len(y) == 2 * len(x)
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert peak_hz == pytest.approx(440.0, abs=3)
    assert synth.resample_or_error(x, 16000) is not None  # already 16 kHz: returned as is
    stereo = np.stack([x, x])
    assert synth.resample_or_error(stereo, 8000).shape == (2 * len(x),)


def test_resample_refused_names_both_rates():
    with pytest.raises(UserInputError, match=r"8000 Hz.*16000 Hz"):
        synth.resample_or_error(_sine(440.0, 8000), 8000, 16000, resample=False)


def test_noise_keeps_length_at_the_asked_snr_and_speed_scales_length():
    x = _sine(300.0, 16000, 1.0)
    rng = np.random.default_rng(0)
    for color in ("white", "pink"):
        y = synth.add_noise(x, 10.0, rng, color=color)
        assert len(y) == len(x) and y.dtype == np.float32 and not np.allclose(x, y)
        snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
        assert snr == pytest.approx(10.0, abs=0.5)
    for factor in (0.9, 1.1):
        assert len(synth.speed_perturb(x, factor)) == round(len(x) / factor)


def test_split_voices_is_disjoint_and_spreads_engines():
    voices = [synth.Voice("espeak-ng", f"en+m{i}") for i in range(8)] + [synth.Voice("flite", n) for n in "abcd"]
    parts = synth.split_voices(voices, validation_size=0.2, test_size=0.2, seed=1)
    ids = {s: {v.id for v in vs} for s, vs in parts.items()}
    assert sum(len(v) for v in ids.values()) == 12 and len(set.union(*ids.values())) == 12
    assert len(ids["test"]) == 2 and len(ids["validation"]) == 2
    assert {v.engine for v in parts["test"]} == {"espeak-ng", "flite"}
    with pytest.raises(UserInputError, match="num_voices"):
        synth.split_voices(voices[:2])


def test_missing_synthesizer_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(UserInputError, match="apt-get install espeak-ng"):
        synth.require_engine("espeak-ng")
    with pytest.raises(UserInputError, match="'flite'"):
        synth.list_voices(["flite"])
    with pytest.raises(UserInputError, match="espeak-ng.*flite"):
        synth.build_keyword_dataset(num_voices=3, per_voice=1)


def test_missing_pocketsphinx_data(tmp_path):
    with pytest.raises(UserInputError, match="pocketsphinx-testdata"):
        synth.load_pocketsphinx_set("librivox", root=tmp_path / "nope")
    with pytest.raises(UserInputError, match="unknown"):
        synth.load_pocketsphinx_set("nope")


# ------------------------------------------------------------------------------------------------------ synthesis


SENTENCES = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    cache = tmp_path_factory.mktemp("speech-cache")
    kwargs = dict(
        num_voices=3, per_voice=2, seed=3, sentences=SENTENCES, digits_fraction=0.3, engines="espeak-ng",
        noise_snr_db=20.0, speed_factors=(1.0,), validation_size=0.2, test_size=0.2, cache_dir=cache, num_workers=1,
    )
    return synth.build_transcription_dataset(**kwargs), kwargs


@needs_espeak
def test_tiny_transcription_set(tiny_set):
    dsd, _ = tiny_set
    assert set(dsd) == {"train", "validation", "test"}
    voices = {s: set(dsd[s]["voice"]) for s in dsd}
    assert all(len(v) == 1 for v in voices.values())
    assert not (voices["train"] & voices["test"]) and not (voices["train"] & voices["validation"])
    assert not (voices["validation"] & voices["test"])
    for split in dsd:
        ds = dsd[split].with_format("numpy")
        assert len(ds) == 2
        for row in ds:
            audio = row["audio"]
            assert audio.dtype == np.float32 and audio.ndim == 1 and row["sampling_rate"] == 16000
            seconds = len(audio) / 16000
            words = len(row["text"].split())
            assert 0.15 * words < seconds < 1.0 * words + 2.0, (row["text"], seconds)
            assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
            assert row["kind"] in ("sentence", "digits") and row["snr_db"] == pytest.approx(20.0)
            if row["kind"] == "sentence":
                assert row["text"] in SENTENCES
            else:
                assert all(w in synth.DIGIT_WORDS for w in row["text"].split())
            assert row["voice"].startswith("espeak-ng:") and row["engine"] == "espeak-ng"


@needs_espeak
def test_tiny_set_is_cached(tiny_set):
    dsd, kwargs = tiny_set
    again = synth.build_transcription_dataset(**kwargs)  # loaded from cache_dir, not synthesized
    assert again["train"]["id"] == dsd["train"]["id"] and again["train"]["text"] == dsd["train"]["text"]
    assert len(list(kwargs["cache_dir"].iterdir())) == 1


@needs_espeak
def test_noise_and_speed_on_synthesized_speech():
    voice = synth.Voice("espeak-ng", "en-us+f3")
    audio, rate = synth.synthesize("seven", voice, rate=160, pitch=50)
    assert rate == 22050
    clean = synth.resample_or_error(audio, rate)
    assert 0.2 < len(clean) / 16000 < 2.0
    noisy = synth.add_noise(clean, 10.0, np.random.default_rng(0))
    assert len(noisy) == len(clean) and not np.allclose(noisy, clean)
    fast = synth.speed_perturb(clean, 1.1)
    assert len(fast) == round(len(clean) / 1.1)


@needs_espeak
def test_keyword_set_labels():
    keywords = ("yes", "no", "seven")
    dsd = synth.build_keyword_dataset(
        num_voices=3, per_voice=3, seed=0, keywords=keywords, engines="espeak-ng", speed_factors=(0.9, 1.1),
        noise_snr_db=(15.0, 25.0), num_workers=1,
    )
    names = dsd["train"].features["label"].names
    assert names == list(keywords)
    for split in dsd:
        ds = dsd[split]
        assert sorted(ds["label"]) == [0, 1, 2]  # each voice says every keyword once
        assert [names[label] for label in ds["label"]] == list(ds["text"])
        assert set(ds["kind"]) == {"keyword"} and all(min(abs(f - 0.9), abs(f - 1.1)) < 1e-6 for f in ds["speed"])
        assert all(15.0 <= s <= 25.0 for s in ds["snr_db"])


@needs_flite
def test_flite_voice():
    voices = [v.name for v in synth.list_voices("flite")]
    assert voices and "awb_time" not in voices
    audio, rate = synth.synthesize("nine one one", synth.Voice("flite", voices[-1]))
    audio = synth.resample_or_error(audio, rate)
    assert 0.3 < len(audio) / 16000 < 4.0 and np.abs(audio).max() > 0.05


# ---------------------------------------------------------------------------------------------------- pocketsphinx


@needs_pocketsphinx
def test_pocketsphinx_sets():
    libri = synth.load_pocketsphinx_set("librivox")
    assert len(libri) == 5 and libri[1]["text"] == "he was not an ill disposed young man"
    assert set(libri["sampling_rate"]) == {16000} and set(libri["engine"]) == {"real"}
    durations = [len(a) / 16000 for a in libri.with_format("numpy")["audio"]]
    assert all(2.5 < d < 8 for d in durations)
    cards = synth.load_pocketsphinx_set("cards")
    assert cards[0]["text"] == "ten of clubs" and "<s>" not in " ".join(cards["text"])
    everything = synth.load_pocketsphinx_set("all")
    assert len(everything) == 12 and "two nine three four zero" in everything["text"]
    assert everything.features == libri.features


# ------------------------------------------------------------------------------------- the sets that measure compression

needs_natural_voices = pytest.mark.skipif(
    shutil.which("text2wave") is None or shutil.which("flite") is None
    or not any(synth.FESTIVAL_VOICE_DIRS[0].glob("*/cmu_us_slt_arctic_hts")),
    reason="festival's HTS voice or flite not installed (apt-get install festival festvox-us-slt-hts flite)",
)
needs_alsa = pytest.mark.skipif(
    not (synth.ALSA_SOUNDS / "Front_Center.wav").is_file(), reason="alsa-utils not installed (apt-get install alsa-utils)"
)


def test_plain_sentence_filter():
    assert synth._clean_sentence("The movie is good fun.", 12, plain=True) == "The movie is good fun."
    assert synth._clean_sentence("I liked it a lot.", 12, plain=True) == "I liked it a lot."
    assert synth._clean_sentence("Renner carries the whole film.", 12, plain=True) is not None  # first word: allowed
    assert synth._clean_sentence("A film that Schmidt carries.", 12, plain=True) is None  # a name inside
    assert synth._clean_sentence("A film that Schmidt carries.", 12) is not None
    assert synth._clean_sentence("The problem: it is not funny.", 12, plain=True) is None
    assert synth._clean_sentence("Good fun.", 12, plain=True, min_words=3) is None


def test_missing_festival_and_voice_name_their_debian_packages(monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.setattr(synth.shutil, "which", lambda p: None if p == "text2wave" else real_which(p))
    with pytest.raises(UserInputError, match="Debian package 'festival'"):
        synth.build_natural_dataset(per_voice=1, cache_dir=tmp_path)
    monkeypatch.setattr(synth.shutil, "which", lambda p: f"/usr/bin/{p}")
    monkeypatch.setattr(synth, "FESTIVAL_VOICE_DIRS", (tmp_path / "voices",))
    with pytest.raises(UserInputError, match="festvox-us-slt-hts"):
        synth.build_natural_dataset(per_voice=1, cache_dir=tmp_path)
    assert not list(tmp_path.glob("natural*"))  # refused before anything was synthesized or cached


def test_natural_set_bad_arguments():
    with pytest.raises(UserInputError, match="distinct"):
        synth.build_natural_dataset(voices=[("flite", "awb"), ("flite", "awb")])
    with pytest.raises(UserInputError, match="per_voice"):
        synth.build_natural_dataset(per_voice=0)


@needs_natural_voices
def test_natural_sets_clean_and_noisy(tmp_path):
    pool = ["The film is a lot of fun.", "It is one of the best movies of the year.", "Not worth the time at all."]
    clean = synth.build_natural_dataset(per_voice=1, sentences=pool, cache_dir=tmp_path)["test"]
    assert len(clean) == 5 and clean["voice"] == [f"{e}:{n}" for e, n in synth.NATURAL_VOICES]
    assert set(clean["sampling_rate"]) == {16000} and set(clean["speed"]) == {1.0} and clean["snr_db"] == [None] * 5
    # dealt out round-robin: voice j says sentence j (wrapping)
    assert clean["text"] == [pool[j % 3] for j in range(5)]
    audio = clean.with_format("numpy")["audio"]
    assert all(0.5 < len(a) / 16000 < 6 and np.abs(a).max() > 0.05 for a in audio)
    noisy = synth.build_natural_dataset(per_voice=1, sentences=pool, cache_dir=tmp_path, noise_snr_db=(15, 25))["test"]
    assert noisy["id"] == clean["id"] and all(15 <= s <= 25 for s in noisy["snr_db"])
    noisy_audio = noisy.with_format("numpy")["audio"]
    assert all(len(a) == len(b) and not np.allclose(a, b) for a, b in zip(audio, noisy_audio))
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["natural", "natural"]
    again = synth.build_natural_dataset(per_voice=1, sentences=pool, cache_dir=tmp_path)["test"]  # from the cache
    np.testing.assert_array_equal(again.with_format("numpy")["audio"][0], audio[0])


def test_natural_training_set_refuses_test_voices_and_bad_splits(tmp_path):
    with pytest.raises(UserInputError, match="speak the natural test set"):
        synth.build_natural_training_set(tmp_path / "t", voices=[("flite", "awb"), ("festival", "ked_diphone")])
    with pytest.raises(UserInputError, match="split must be one of"):
        synth.build_natural_dataset(split="dev")
    with pytest.raises(UserInputError, match="stretch_range"):
        synth.build_natural_dataset(split="train", stretch_range=(1.2, 0.9))
    assert not (tmp_path / "t").exists()


needs_training_voices = pytest.mark.skipif(
    not all(synth.festival_voice_installed(n) for e, n in synth.TRAINING_VOICES if e == "festival"),
    reason="festival diphone voices not installed (apt-get install festival festvox-kdlpc16k festvox-kallpc16k)")


@needs_natural_voices
@needs_training_voices
def test_natural_training_set_is_other_voices_and_sentences_with_the_test_set_as_test(tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "train-set"
    dsd = synth.build_natural_training_set(out, per_voice=3, validation_per_voice=1, test_per_voice=1)
    assert {k: len(v) for k, v in dsd.items()} == {"train": 6, "validation": 2, "test": 5}
    assert set(dsd["train"]["voice"]) == {"festival:ked_diphone", "festival:kal_diphone"}
    assert dsd["test"]["voice"] == [f"{e}:{n}" for e, n in synth.NATURAL_VOICES]
    assert {round(x, 3) for x in dsd["train"]["speed"]} <= {0.9, 1.0, 1.1} and set(dsd["train"]["sampling_rate"]) == {16000}
    assert not set(dsd["train"]["text"]) & set(dsd["test"]["text"]), "no test sentence in the training audio"
    audio = dsd["train"].with_format("numpy")["audio"]
    assert all(0.5 < len(a) / 16000 < 8 and np.abs(a).max() > 0.05 for a in audio)
    assert (out / "dataset_dict.json").exists() and len(load_from_disk(str(out))["train"]) == 6  # what --dataset reads
    again = synth.build_natural_training_set(out, per_voice=3, validation_per_voice=1, test_per_voice=1)
    np.testing.assert_array_equal(again["train"].with_format("numpy")["audio"][0], audio[0])


@needs_alsa
def test_alsa_words():
    words = synth.load_alsa_words()
    assert len(words) == 8 and "front center" in words["text"] and "noise" not in words["text"]
    assert set(words["voice"]) == {"real:alsa"} and set(words["sampling_rate"]) == {16000}


def test_missing_alsa_words(tmp_path):
    with pytest.raises(UserInputError, match="'alsa-utils'"):
        synth.load_alsa_words(tmp_path)
    with pytest.raises(UserInputError, match="expected some of"):
        synth.build_real_dataset(sources=("librivox",))
    with pytest.raises(UserInputError, match="unknown"):
        synth.build_speech_test_sets(tmp_path, names=("natural", "clean"))


@needs_alsa
@needs_pocketsphinx
def test_real_set_is_cached(tmp_path):
    real = synth.build_real_dataset(cache_dir=tmp_path)["test"]
    assert len(real) == 20 and set(real["voice"]) >= {"real:librivox", "real:cards", "real:alsa"}
    from datasets import load_from_disk

    (folder,) = tmp_path.glob("real-*")
    assert load_from_disk(str(folder))["test"]["id"] == real["id"]


def test_speech_sets_command_names_a_bad_set(tmp_path, capsys):
    from hfcompress.commands import main

    assert main(["speech-sets", "--output_dir", str(tmp_path), "--sets", "natural,clean"]) == 2
    assert "['clean'] are unknown" in capsys.readouterr().err


@needs_alsa
@needs_pocketsphinx
def test_speech_sets_command_writes_a_loadable_folder(tmp_path, capsys):
    from datasets import load_from_disk

    from hfcompress.commands import main

    assert main(["speech-sets", "--output_dir", str(tmp_path), "--sets", "real"]) == 0
    name, clips, voices, folder = capsys.readouterr().out.strip().split("\t")
    assert (name, clips) == ("real", "20 clips") and folder.startswith(str(tmp_path))
    assert len(load_from_disk(folder)["test"]) == 20


# ------------------------------------------------------------------------------------- scripts/benchmark_speech_sets.py


def test_speech_sets_benchmark_subset_and_diagnosis():
    from conftest import load_script
    from datasets import Dataset

    bench = load_script("benchmark_speech_sets")
    ds = Dataset.from_dict({"voice": ["a"] * 6 + ["b"] * 6 + ["c"] * 2})
    picked = bench.seeded_subset(ds, 5, seed=0)
    voices = [ds[i]["voice"] for i in picked]
    assert picked == sorted(picked) and (voices.count("a"), voices.count("b"), voices.count("c")) == (2, 2, 1)
    assert picked == bench.seeded_subset(ds, 5, seed=0) != bench.seeded_subset(ds, 5, seed=1)
    assert bench.seeded_subset(ds, 0, seed=0) == list(range(14))

    refs = ["the film is good", "a waste of time"]
    result = {"sets": ["natural"], "test_sets": {"natural": {"references": refs}}, "results": {
        "tiny": {"transformers_fp32": {"sets": {"natural": {"transcripts": ["the film is good", "a waist of thyme"]}}}},
        "base": {"transformers_fp32": {"sets": {"natural": {"transcripts": ["the film is food", "a waist of thyme"]}}}},
    }}
    d = bench.diagnose(result)["natural"]
    # clip 2: both models alike (2 errors of 8 words); clip 1: they disagree, base has 1 error
    assert d["wer_on_clips_all_models_transcribe_alike"] == 2 / 8
    assert d["wer_on_the_other_clips"] == {"tiny": 0.0, "base": 1 / 8}


def test_speech_sets_floors_come_from_the_rows_and_variants_are_checked_first(tmp_path):
    from conftest import load_script

    bench = load_script("benchmark_speech_sets")

    def row(speedup, natural, real, ci=None):
        return {"speedup": speedup, "wer_natural": natural, "wer_real": real,
                "wer_natural_95ci": ci or [natural - 0.02, natural + 0.02]}

    views = {"whisper-base": {"base": row(1.0, 0.080, 0.042),
                              "variants": {"transformers_int8": row(1.6, 0.085, 0.042), "dec2": row(2.3, 0.089, 0.050)},
                              "peer": {"faster_whisper_int8": row(1.5, 0.103, 0.034, [0.07, 0.13])}},
             "whisper-tiny-en": {"base": row(1.0, 0.126, 0.050),
                                 "variants": {"transformers_int8": row(1.2, 0.140, 0.05)},
                                 "peer": {"faster_whisper_int8": row(1.4, 0.129, 0.076, [0.10, 0.16])}}}
    f = bench.floors(views)
    # dec2 is 2.3x but 0.9 natural and 0.8 real points worse: within +1.0 on both
    assert f["base_2x_within_1pt"] == {"met": True, "by": ["dec2"]}
    assert f["whisper-base_beats_faster_whisper_int8"]["by"] == ["transformers_int8", "dec2"]
    assert f["whisper-tiny-en_beats_faster_whisper_int8"]["met"] is False  # int8 is slower than the peer
    views["whisper-base"]["variants"]["dec2"]["wer_real"] = 0.060  # +1.8 points on the real set
    assert bench.floors(views)["base_2x_within_1pt"] == {"met": False, "by": []}
    views["whisper-base"]["peer"] = {}
    assert bench.floors(views)["whisper-base_beats_faster_whisper_int8"] is None

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert bench.parse_variants(f"whisper-base:dec2={tmp_path / 'm'}", ["whisper-base"]) == [
        ("whisper-base", "dec2", str(tmp_path / "m"))]
    for text, says in ((f"dec2={tmp_path / 'm'}", "is not model:name=folder"),
                       (f"whisper-tiny-en:dec2={tmp_path / 'm'}", "which --models does not measure"),
                       (f"whisper-base:dec2={tmp_path / 'none'}", "holds no saved model")):
        with pytest.raises(SystemExit, match=says):
            bench.parse_variants(text, ["whisper-base"])
    # --int8_variants quantizes float folders only: a folder already in int8 is named before any measuring
    assert bench.parse_variants(f"whisper-base:dec2={tmp_path / 'm'}", ["whisper-base"], int8=True)
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "config.json").write_text(json.dumps({CONFIG_KEY: {"per_channel": True}}))
    with pytest.raises(SystemExit, match=r"--int8_variants: .*q is already quantized \(torch_int8\)"):
        bench.parse_variants(f"whisper-base:dec2q={tmp_path / 'q'}", ["whisper-base"], int8=True)


def test_speech_sets_refuse_a_clip_longer_than_a_variants_window():
    """A window-cut student (10 s) would hear only the start of a 12 s clip: refused before measuring, named."""
    from types import SimpleNamespace

    from conftest import load_script

    bench = load_script("benchmark_speech_sets")
    clips = [("short", np.zeros(16000 * 4, np.float32), "a"), ("long-one", np.zeros(16000 * 12, np.float32), "b")]
    systems = {"whisper-base/transformers_fp32": SimpleNamespace(window_s=30.0),
               "whisper-base/w10": SimpleNamespace(window_s=10.0), "whisper-base/faster_whisper_int8": object()}
    with pytest.raises(SystemExit, match=r"whisper-base/w10 hears 10 s windows, but clip long-one lasts 12.0 s"):
        bench.refuse_clips_beyond_window(systems, clips)
    bench.refuse_clips_beyond_window(systems, clips[:1])  # every clip fits: nothing said


def test_speech_sets_merge_into_speech_json_keeps_other_keys_and_one_run_per_model(tmp_path):
    """--into: each model's rows of a run go under ``natural_sets`` of the target JSON (its other keys kept, a later
    run of the same model replacing the earlier one) and the floors are recomputed over all models there. Rows from
    the committed base result file, as the benchmark wrote them."""
    import os

    from conftest import ROOT, load_script

    bench = load_script("benchmark_speech_sets")
    with open(os.path.join(ROOT, "benchmarks", "results", "speech_sets_base_enc.json")) as fh:
        base_run = json.load(fh)
    target = tmp_path / "speech.json"
    target.write_text(json.dumps({"base": {"wer": 0.6}, "variants": {}}))
    bench.merge_into(str(target), base_run, "results/base.json")
    tiny_run = {"by_model": {"whisper-tiny-en": {**base_run["by_model"]["whisper-base"], "model": "whisper-tiny-en"}},
                "command": "tiny run"}
    doc = bench.merge_into(str(target), tiny_run, "results/tiny.json")
    assert json.loads(target.read_text()) == doc
    assert doc["base"] == {"wer": 0.6} and doc["variants"] == {}  # the synthetic benchmark's keys, untouched
    assert sorted(doc["natural_sets"]) == ["whisper-base", "whisper-tiny-en"]
    assert doc["natural_sets"]["whisper-base"]["source"] == "results/base.json"
    assert doc["natural_sets"]["whisper-tiny-en"]["command"] == "tiny run"
    assert doc["natural_sets_floors"] == bench.floors(doc["natural_sets"])
    assert doc["natural_sets_floors"]["base_2x_within_1pt"]["met"] is True
    assert set(doc["natural_sets_floors"]) == {"base_2x_within_1pt", "whisper-base_beats_faster_whisper_int8",
                                               "whisper-tiny-en_beats_faster_whisper_int8"}
    again = {**base_run, "by_model": {"whisper-base": {**base_run["by_model"]["whisper-base"], "variants": {}}}}
    doc = bench.merge_into(str(target), again, "results/base2.json")  # a later base run replaces the earlier entry
    assert doc["natural_sets"]["whisper-base"]["source"] == "results/base2.json"
    assert doc["natural_sets"]["whisper-base"]["variants"] == {}
    assert doc["natural_sets_floors"]["base_2x_within_1pt"]["met"] is False
    (tmp_path / "bad.json").write_text("[1, 2]")
    for bad in (tmp_path / "bad.json", tmp_path / "missing" / "x.json", tmp_path):
        with pytest.raises(SystemExit, match="--into"):
            bench.check_into(str(bad))
