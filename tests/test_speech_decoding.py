"""Whisper decoding in hfcompress's speech evaluation: the language of a multilingual model (teacher and student),
the decoding guards (temperature fallback with compression-ratio / log-probability thresholds) reaching `generate`,
and looping clips counted. Tiny random Whisper configs, seconds."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from test_distill_seq2seq import FAST, TEXTS, _script, _write_data, clip, teacher_dir  # noqa: F401 (fixture)
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor
from transformers.generation.utils import GenerationMixin

from hfcompress.arch.speech import decoder_prompt_ids
from hfcompress.errors import UserInputError
from hfcompress.run.arguments import ModelArguments, SpeechArguments
from hfcompress.run.speech import (
    _load,
    build_speech_student,
    check_language,
    transcription_metrics,
    wer_metrics,
)
from hfcompress.speech.decoding import generation_kwargs_of, whisper_generation_kwargs


@pytest.fixture(scope="module")
def multilingual_dir(teacher_dir, tmp_path_factory):  # noqa: F811
    """The tiny teacher as a multilingual Whisper (language and task tokens in its generation config, none named)."""
    path = tmp_path_factory.mktemp("multilingual") / "teacher"
    shutil.copytree(teacher_dir, path)
    tok = WhisperProcessor.from_pretrained(path).tokenizer
    gen = GenerationConfig.from_pretrained(path)
    gen.is_multilingual = True
    # '<|de|>' only names a language (the tiny vocabulary has no such token): for the checks of --language
    gen.lang_to_id = {"<|en|>": tok.convert_tokens_to_ids("<|en|>"),
                      "<|de|>": tok.convert_tokens_to_ids("<|startoflm|>")}
    gen.task_to_id = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")}
    gen.save_pretrained(path)
    return str(path)


class GenerateSpy:
    """Records the keyword arguments of every Whisper `generate` call and counts the decoding passes under it (one
    per temperature tried: `GenerationMixin.generate`)."""

    def __init__(self, monkeypatch):
        self.calls, self.passes, self.prompts = [], 0, []
        whisper_generate, mixin_generate = WhisperForConditionalGeneration.generate, GenerationMixin.generate

        def outer(model, *args, **kwargs):
            self.calls.append(kwargs)
            return whisper_generate(model, *args, **kwargs)

        def inner(model, *args, **kwargs):
            self.passes += 1
            if kwargs.get("decoder_input_ids") is not None:
                self.prompts.append(kwargs["decoder_input_ids"][0].tolist())
            return mixin_generate(model, *args, **kwargs)

        monkeypatch.setattr(WhisperForConditionalGeneration, "generate", outer)
        monkeypatch.setattr(GenerationMixin, "generate", inner)


def _split(n=4):
    return Dataset.from_dict({"audio": [clip(i) for i in range(n)], "text": [TEXTS[i] for i in range(n)]})


# ------------------------------------------------------------------------------------------------------- language


def test_multilingual_defaults_to_english_for_targets_and_generation(multilingual_dir, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        teacher, processor = _load(multilingual_dir, "teacher")
    assert "multilingual Whisper without a language: transcribing as 'en'" in caplog.text
    tok = processor.tokenizer
    prompt = [tok.convert_tokens_to_ids(t) for t in
              ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]
    assert decoder_prompt_ids(tok) == prompt  # the training targets' prompt (collator, pseudo-labels)
    assert (teacher.generation_config.language, teacher.generation_config.task) == ("en", "transcribe")
    spy = GenerateSpy(monkeypatch)
    transcription_metrics(teacher, processor, _split(2), max_new_tokens=3)
    assert spy.prompts and all(p == prompt for p in spy.prompts)  # generation starts from the same prompt

    # a given student follows the teacher's language (here the default), so both decoders read one prompt
    model_args = ModelArguments(teacher_model=multilingual_dir, student_model=multilingual_dir)
    student, student_processor = build_speech_student(model_args, SpeechArguments(), teacher, processor)
    assert student.generation_config.language == "en"
    assert decoder_prompt_ids(student_processor.tokenizer) == prompt


def test_language_option_is_checked_against_both_models(multilingual_dir, teacher_dir):  # noqa: F811
    check_language(ModelArguments(teacher_model=multilingual_dir), SpeechArguments(language="en"))
    check_language(ModelArguments(teacher_model=teacher_dir), SpeechArguments(language="en"))  # .en takes 'en'
    with pytest.raises(UserInputError, match=r"--language 'fr': not one of this Whisper's languages \(de, en, \.\.\.\) "
                                             r"\(--teacher_model "):
        check_language(ModelArguments(teacher_model=multilingual_dir), SpeechArguments(language="fr"))
    with pytest.raises(UserInputError, match=r"--language 'de': this Whisper is English-only.*\(--student_model "):
        check_language(ModelArguments(teacher_model=multilingual_dir, student_model=teacher_dir),
                       SpeechArguments(language="de"))


# ---------------------------------------------------------------------------------------------- decoding guards


def test_guard_options_are_checked_and_off_by_default():
    assert generation_kwargs_of(SpeechArguments(generation_max_new_tokens=7)) == {
        "max_new_tokens": 7, "num_beams": 1, "do_sample": False}
    on = generation_kwargs_of(SpeechArguments(decoding_guards=True, guard_temperatures="0,0.5"))
    assert on == {"max_new_tokens": 128, "num_beams": 1, "temperature": (0.0, 0.5), "compression_ratio_threshold": 1.35,
                  "logprob_threshold": -1.0}
    with pytest.raises(UserInputError, match="--guard_temperatures '0.4,0.2': expected one or more temperatures"):
        SpeechArguments(decoding_guards=True, guard_temperatures="0.4,0.2")
    with pytest.raises(UserInputError, match="--no_speech_threshold 0.6: needs --logprob_threshold"):
        SpeechArguments(decoding_guards=True, no_speech_threshold=0.6, logprob_threshold=None)


def test_guards_reach_generate_and_fall_back(teacher_dir, monkeypatch):  # noqa: F811
    model, processor = WhisperForConditionalGeneration.from_pretrained(teacher_dir), \
        WhisperProcessor.from_pretrained(teacher_dir)
    split = _split(3)
    spy = GenerateSpy(monkeypatch)
    transcription_metrics(model, processor, split, max_new_tokens=6)
    assert spy.calls[-1] == {"max_new_tokens": 6, "num_beams": 1, "do_sample": False} and spy.passes == 1

    # A random decoder is unlikely everywhere (log-probability far below -1): every temperature is tried.
    kwargs = whisper_generation_kwargs(6, guards=True, temperatures="0.0,0.5,1.0")
    spy.calls.clear()
    spy.passes = 0
    torch.manual_seed(0)
    metrics = transcription_metrics(model, processor, split, max_new_tokens=6, generate_kwargs=kwargs)
    call = spy.calls[-1]
    assert call["temperature"] == (0.0, 0.5, 1.0) and call["logprob_threshold"] == -1.0
    assert call["compression_ratio_threshold"] == 1.35
    assert spy.passes == 3 and metrics["num_utterances"] == 3


def test_evaluation_with_fallback_sampling_leaves_the_training_generator_alone(teacher_dir):  # noqa: F811
    """The trainer's evaluation decodes through `generate_keeping_rng`: with the temperature fallback sampling, the
    random state training continues from is the one it had before the evaluation."""
    from hfcompress.distill.trainer import generate_keeping_rng

    model, processor = WhisperForConditionalGeneration.from_pretrained(teacher_dir).eval(), \
        WhisperProcessor.from_pretrained(teacher_dir)
    features = processor.feature_extractor([np.asarray(a, np.float32) for a in _split(2)["audio"]],
                                           sampling_rate=16000, return_tensors="pt").input_features
    kwargs = whisper_generation_kwargs(6, guards=True, temperatures="0.0,0.5,1.0")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    generate_keeping_rng(model, {"input_features": features}, kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    model.generate(input_features=features, **kwargs)  # what the evaluation did before: it samples, the state moves
    assert not torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------------------------------------------ looping clips


def _with_eos(model, processor, allowed: bool):
    """`allowed`: end-of-text forced as the first token (no clip loops); else suppressed (every clip runs to
    max_new_tokens: a loop)."""
    eos = processor.tokenizer.eos_token_id
    gen = model.generation_config
    gen.suppress_tokens = [t for t in gen.suppress_tokens if t != eos] + ([] if allowed else [eos])
    with torch.no_grad():
        model.proj_out.weight.data[eos] = 0
        if allowed:
            model.model.decoder.embed_tokens.weight.data[eos] = 0  # tied: the logit bias below stays on eos only
            model.proj_out.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    return model


def test_looping_clips_are_counted(teacher_dir):  # noqa: F811
    split = _split(3)
    for allowed, loops in ((False, 3), (True, 0)):
        model, processor = WhisperForConditionalGeneration.from_pretrained(teacher_dir), \
            WhisperProcessor.from_pretrained(teacher_dir)
        metrics = transcription_metrics(_with_eos(model, processor, allowed), processor, split, max_new_tokens=5)
        assert metrics["looping_clips"] == loops

    # the training-time evaluation (`compute_metrics` on generated ids, padded with -100) counts the same way
    tok = WhisperProcessor.from_pretrained(teacher_dir).tokenizer
    word = tok(" the", add_special_tokens=False).input_ids[0]
    preds = np.array([[word] * 5, [word, tok.eos_token_id, -100, -100, -100]])
    labels = np.array([[word, tok.eos_token_id], [word, tok.eos_token_id]])
    out = wer_metrics(tok, max_new_tokens=5)(type("P", (), {"predictions": preds, "label_ids": labels})())
    assert out["looping_clips"] == 1


def test_script_evaluates_with_guards_and_records_loops(teacher_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data")
    spy = GenerateSpy(monkeypatch)
    out = tmp_path / "out"
    _script().main(["--teacher_model", teacher_dir, "--dataset", data, "--student_decoder_layers", "0,3",
                    "--output_dir", str(out), *FAST, "--no_measure", "--decoding_guards",
                    "--guard_temperatures", "0.0,0.4"])
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["settings"]["speech"]["decoding_guards"] is True
    guarded = [c for c in spy.calls if c.get("temperature") == (0.0, 0.4)]
    assert guarded and all(c["compression_ratio_threshold"] == 1.35 for c in guarded)
    assert "test_looping_clips" in summary["metrics"]["student"]["test"]


def test_benchmark_guards_reach_generate_and_loops_are_counted(teacher_dir, monkeypatch):  # noqa: F811
    from conftest import load_script

    bench = load_script("benchmark_speech_sets")
    args = bench.SpeechSetsArguments(decoding_guards=True, guard_temperatures="0.0,0.5", max_new_tokens=5,
                                     bootstrap=10)
    system = bench.TransformersWhisper(teacher_dir, 5, generation_kwargs_of(args, args.max_new_tokens))
    eos = system.processor.tokenizer.eos_token_id
    system.gen.suppress_tokens = [*system.gen.suppress_tokens, eos]  # no clip can end: every one loops
    spy = GenerateSpy(monkeypatch)
    clips = [(f"c{i}", clip(i), TEXTS[i]) for i in range(2)]
    rows = [(*system(audio), 0.1) for _, audio, _ in clips]
    assert all(c["temperature"] == (0.0, 0.5) and c["logprob_threshold"] == -1.0 for c in spy.calls)
    assert spy.passes == 4  # a random decoder is unlikely: each clip is decoded again at 0.5
    assert [r[1] for r in rows] == [5, 5]
    assert bench.summarize("tiny", rows, clips, args)["looping_clips"] == 2


def test_benchmark_result_in_the_issue_keys_also_from_an_older_file(tmp_path):
    import os

    from conftest import load_script

    bench = load_script("benchmark_speech_sets")
    old = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "speech_sets.json")
    with open(old) as fh:
        result = json.load(fh)
    result.pop("by_model", None)
    view = bench.by_model(result)
    for model in result["models"]:
        entry = view[model]
        others = {n for n in result["results"][model] if n != "transformers_fp32" and not n.startswith("faster_")}
        assert entry["model"] == model and set(entry["variants"]) == others  # int8 and --variants rows
        for name in others:
            assert entry["variants"][name]["wer_natural"] == result["results"][model][name]["sets"]["natural"]["wer"]
        assert set(entry["peer"]) == {"faster_whisper_int8", "faster_whisper_float32"}
        base = entry["base"]
        for s in result["sets"]:
            assert base[f"wer_{s}"] == result["results"][model]["transformers_fp32"]["sets"][s]["wer"]
        assert base["speedup"] == 1.0 and base["params"] > 0 and base["size_mb"] > 0
        assert base["looping_clips"] == sum(base[f"looping_clips_{s}"] for s in result["sets"])
        assert entry["peer"]["faster_whisper_int8"]["params"] is None
    out = tmp_path / "r.json"
    out.write_text(json.dumps(result))
    bench.main(["--rewrite_only", "--output", str(out)])
    assert json.loads(out.read_text())["by_model"] == json.loads(json.dumps(view))
    assert "| whisper-base | faster_whisper_int8 |" in (tmp_path / "r.md").read_text()


# ------------------------------------------------------------------------------------- bad audio, data-level rules


def test_classification_clips_longer_than_the_window_and_undecodable_bytes_are_refused(tmp_path):
    import soundfile as sf
    from datasets import DatasetDict

    from hfcompress.speech.dataset import load_audio_classification_dataset, load_transcription_dataset

    (tmp_path / "clips").mkdir()
    lines = ["audio,label"]
    for i in range(10):
        sf.write(str(tmp_path / "clips" / f"{i}.wav"), clip(i, seconds=2.5 if i == 6 else 0.4), 16000)
        lines.append(f"clips/{i}.wav,{'yes' if i % 2 else 'no'}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    assert len(load_audio_classification_dataset(str(tmp_path / "train.csv"), window_seconds=3)["train"]) > 0
    with pytest.raises(UserInputError, match=r"1 clip\(s\) longer than the 2 s window .*first row 6 \(clips/6.wav\), "
                                             r"2.50 s, longest row 6"):
        load_audio_classification_dataset(str(tmp_path / "train.csv"), window_seconds=2)

    # a saved dataset whose audio bytes are not audio: every such row named, nothing skipped
    good = (tmp_path / "clips" / "0.wav").read_bytes()
    entries = [{"bytes": good, "path": "a.wav"}, {"bytes": b"not audio", "path": "b.wav"},
               {"bytes": b"\x00" * 10, "path": "c.wav"}]
    DatasetDict(train=Dataset.from_dict({"audio": entries, "text": TEXTS[:3]})).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserInputError, match=r"2 of 3 audio entries of split 'train' .* could not be decoded: .*row 1: "
                                             r"could not decode the audio bytes \(b.wav\).*row 2: .*\(c.wav\)"):
        load_transcription_dataset(str(tmp_path / "saved"))
