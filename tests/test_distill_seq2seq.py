"""Sequence-to-sequence distillation of a Whisper teacher (the distil-whisper recipe) through DistillationLoss,
DistillationTrainer and scripts/distill.py, on a tiny random Whisper (d_model 64, 2 encoder and 4 decoder layers; the
tiny byte-level tokenizer of tests/test_whisper_convert.py, written as a real Whisper folder by the CT2 converter)
and a few clips of synthetic audio. Tolerances: float32 sums in another order (1e-5 relative); cached encoder outputs
are float16 (2e-3 relative)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GradCapture, command_fails, load_script
from datasets import Dataset
from test_whisper_convert import N_TIMESTAMPS, hf_to_ct2, tiny_tokenizer, write_ct2_folder
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from hfcompress.arch.speech import decoder_prompt_ids, transcript_ids
from hfcompress.distill import (
    DistillationArguments,
    DistillationConfig,
    DistillationLoss,
    DistillationTrainer,
    SpeechSeq2SeqDistillationCollator,
    compute_encoder_outputs,
    init_seq2seq_student,
    load_or_compute_encoder_cache,
)
from hfcompress.distill.loss import CACHED_ENCODER, TeacherOutputs
from hfcompress.distill.student import spread_layers
from hfcompress.errors import UserInputError
from hfcompress.speech.whisper_ct2 import convert_whisper_ct2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "distill.py")
TEXTS = ["the cat", "a dog", "the the", "hat", "tea set", "eat", "the heat", "a hen", "ten", "the end"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random Whisper (4 decoder layers) as a model + processor + generation-config folder."""
    root = tmp_path_factory.mktemp("whisper_teacher")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>")
    cfg = WhisperConfig(
        vocab_size=tok.get_vocab_size() + N_TIMESTAMPS, num_mel_bins=80, d_model=64, encoder_layers=2,
        decoder_layers=4, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=48, pad_token_id=eot,
        bos_token_id=sot, eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
    ct2 = write_ct2_folder(root / "ct2", tok, hf_to_ct2(model))
    out = convert_whisper_ct2(ct2, root / "teacher")
    # Random weights favour the 1,501 timestamp tokens, which send `generate` into its long-form segment loop: keep
    # them out, as a trained English model does after <|notimestamps|>.
    converted = WhisperForConditionalGeneration.from_pretrained(out)
    first = WhisperProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids("<|0.00|>")
    converted.generation_config.suppress_tokens = sorted({*converted.generation_config.suppress_tokens,
                                                          *range(first, cfg.vocab_size)})
    converted.save_pretrained(out)
    return out


def clip(i: int, rate: int = 16000, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(i)
    return (0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def load(teacher_dir):
    return WhisperForConditionalGeneration.from_pretrained(teacher_dir), WhisperProcessor.from_pretrained(teacher_dir)


def collator_for(processor):
    tok = processor.tokenizer
    return SpeechSeq2SeqDistillationCollator(processor.feature_extractor, decoder_prompt_ids(tok), tok.pad_token_id)


def rows(processor, n=8):
    tok = processor.tokenizer
    return Dataset.from_dict({"audio": [clip(i) for i in range(n)],
                              "labels": [transcript_ids(tok, TEXTS[i % len(TEXTS)]) for i in range(n)]})


# ------------------------------------------------------------------------------------------------------- student


def test_student_keeps_the_encoder_and_the_chosen_decoder_layers(teacher_dir):
    teacher, processor = load(teacher_dir)
    assert spread_layers(4, 2) == [0, 3] and spread_layers(4, 3) == [0, 2, 3] and spread_layers(32, 2) == [0, 31]
    student = init_seq2seq_student(teacher, [0, 3])
    assert student.config.decoder_layers == 2 and teacher.config.decoder_layers == 4
    assert student.config.hfcompress_student_decoder_layers == [0, 3]
    t_dec, s_dec = teacher.model.decoder.layers, student.model.decoder.layers
    for s_idx, t_idx in ((0, 0), (1, 3)):
        for (name, a), (_, b) in zip(s_dec[s_idx].state_dict().items(), t_dec[t_idx].state_dict().items()):
            assert torch.equal(a, b), name
        assert s_dec[s_idx].self_attn.layer_idx == s_idx and s_dec[s_idx].encoder_attn.layer_idx == s_idx
    t_enc, s_enc = teacher.get_encoder().state_dict(), student.get_encoder().state_dict()
    assert t_enc.keys() == s_enc.keys() and all(torch.equal(t_enc[k], s_enc[k]) for k in t_enc)
    assert not any(p.requires_grad for p in student.get_encoder().parameters())
    assert all(p.requires_grad for p in student.model.decoder.parameters())
    # the student generates (the key/value cache follows the renumbered layers) from the teacher's prompt
    features = processor.feature_extractor([clip(0)], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        out = student.eval().generate(features, max_new_tokens=4, return_dict_in_generate=True)
    assert out.sequences[0, :2].tolist() == decoder_prompt_ids(processor.tokenizer)
    with pytest.raises(UserInputError, match=r"decoder layers \[4\] out of range: .* layers 0\.\.3"):
        init_seq2seq_student(teacher, [0, 4])
    assert init_seq2seq_student(teacher, num_decoder_layers=1, freeze_encoder=False).config.decoder_layers == 1


# ---------------------------------------------------------------------------------------------------------- loss


def test_collator_targets_and_loss_equal_their_definition(teacher_dir):
    teacher, processor = load(teacher_dir)
    student = init_seq2seq_student(teacher, [0, 3])
    tok = processor.tokenizer
    data = rows(processor, 3)
    batch = collator_for(processor)([data[i] for i in range(3)])
    prompt = decoder_prompt_ids(tok)
    targets = data["labels"]
    # decoder inputs: the prompt, then the targets shifted right; labels: -100 under the prompt and the padding
    for i, t in enumerate(targets):
        assert batch["decoder_input_ids"][i, : len(prompt) + len(t) - 1].tolist() == prompt + t[:-1]
        row = batch["labels"][i].tolist()
        assert row[: len(prompt) - 1] == [-100] * (len(prompt) - 1)
        assert row[len(prompt) - 1 : len(prompt) - 1 + len(t)] == t and set(row[len(prompt) - 1 + len(t):]) <= {-100}
    assert len({len(t) for t in targets}) > 1  # padding is exercised
    labels = batch.pop("labels")
    with torch.no_grad():
        s_logits = student(**batch).logits
        t_logits = teacher(**batch).logits
    cfg = DistillationConfig(alpha=0.3, temperature=2.0)
    kd = DistillationLoss(cfg, student.config, teacher)
    got, parts = kd(type("Out", (), {"logits": s_logits})(), labels, teacher_outputs=TeacherOutputs(logits=t_logits),
                    return_parts=True)
    # by hand: a Python loop over the labelled target tokens
    kl_sum = ce_sum = 0.0
    n = 0
    T = cfg.temperature
    for b in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            y = int(labels[b, j])
            if y == -100:
                continue
            n += 1
            ps = torch.log_softmax(s_logits[b, j].double() / T, -1)
            pt = torch.log_softmax(t_logits[b, j].double() / T, -1)
            kl_sum += T * T * float((pt.exp() * (pt - ps)).sum())
            ce_sum += -float(torch.log_softmax(s_logits[b, j].double(), -1)[y])
    want = (cfg.alpha * kl_sum + (1 - cfg.alpha) * ce_sum) / n
    assert n == sum(len(t) for t in targets)
    assert abs(float(got) - want) <= 1e-5 * abs(want)
    assert abs(float(parts["loss_kd"]) - kl_sum / n) <= 1e-5 * kl_sum / n
    # what happens under masked positions does not count
    noisy = s_logits.clone()
    noisy[labels.eq(-100)] = torch.randn_like(noisy[labels.eq(-100)]) * 10
    assert float(kd(type("Out", (), {"logits": noisy})(), labels, teacher_outputs=TeacherOutputs(logits=t_logits))) \
        == pytest.approx(float(got), rel=1e-6)
    # hidden-state terms, and a student with another vocabulary, are refused
    with pytest.raises(ValueError, match="decoder's logits"):
        DistillationLoss(DistillationConfig(hidden_weight=1.0), student.config, teacher)
    other = WhisperConfig(**{**student.config.to_dict(), "vocab_size": student.config.vocab_size + 1})
    with pytest.raises(ValueError, match="one vocabulary"):
        DistillationLoss(cfg, other, teacher)



def _trainer(teacher_dir, tmp_path, bs, ga, train=None, **kw):
    teacher, processor = load(teacher_dir)
    student = init_seq2seq_student(teacher, [0, 3])
    args = DistillationArguments(
        output_dir=str(tmp_path / f"run-{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=1, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=5,
        temperature=2.0, alpha=0.6, use_cpu=True, learning_rate=1e-3, **kw,
    )
    return DistillationTrainer(model=student, args=args, teacher_model=teacher,
                               train_dataset=train if train is not None else rows(processor, 8),
                               data_collator=collator_for(processor))


def test_gradient_accumulation_4x2_equals_1x8(teacher_dir, tmp_path):
    caps = []
    for bs, ga in ((2, 4), (8, 1)):
        trainer = _trainer(teacher_dir, tmp_path, bs, ga)
        cap = GradCapture()
        trainer.add_callback(cap)
        trainer.train()
        caps.append(cap)
    a, b = caps[0].grads, caps[1].grads
    assert a.keys() == b.keys() and len(a) > 10
    assert not any(".encoder." in n for n in a)  # frozen encoder: no gradient
    for name in a:
        scale = b[name].abs().max().item()
        assert (a[name] - b[name]).abs().max().item() <= 1e-5 * scale + 1e-7, name
    assert caps[0].losses[0] == pytest.approx(caps[1].losses[0], rel=1e-5)


def test_cached_encoder_outputs_give_the_online_loss(teacher_dir, tmp_path):
    trainer = _trainer(teacher_dir, tmp_path, 4, 1)
    collator = trainer.data_collator
    data = rows(WhisperProcessor.from_pretrained(teacher_dir), 4)
    teacher = trainer.teacher_model
    cached = compute_encoder_outputs(teacher, data, lambda r: collator.input_features(r["audio"]), batch_size=3)
    assert cached[0][CACHED_ENCODER] is not None and len(cached) == 4
    online_batch = collator([data[i] for i in range(4)])
    cached_batch = collator([cached[i] for i in range(4)])
    assert "input_features" not in cached_batch and cached_batch["encoder_outputs"][0].shape == (4, 1500, 64)
    calls = []
    hooks = [m.get_encoder().register_forward_hook(lambda *a: calls.append(1)) for m in (trainer.model, teacher)]
    model = trainer.model.train()
    items = online_batch["labels"].ne(-100).sum()
    online = trainer.compute_loss(model, dict(online_batch), num_items_in_batch=items)
    n_online = len(calls)
    cached_loss = trainer.compute_loss(model, dict(cached_batch), num_items_in_batch=items)
    for h in hooks:
        h.remove()
    assert n_online == 2 and len(calls) == 2  # online: both encoders ran; cached: neither
    assert float(cached_loss.detach()) == pytest.approx(float(online.detach()), rel=2e-3)
    # pseudo-labels: the teacher's greedy tokens after the prompt, up to its end-of-text
    tok = WhisperProcessor.from_pretrained(teacher_dir).tokenizer
    prompt = decoder_prompt_ids(tok)
    pseudo = compute_encoder_outputs(teacher, data.select(range(2)), lambda r: collator.input_features(r["audio"]),
                                     store_encoder=False, pseudo_labels={"prompt_ids": prompt, "max_new_tokens": 5,
                                     "eos_token_id": tok.eos_token_id, "do_sample": False})
    with torch.inference_mode():
        gen = teacher.generate(collator.input_features(data[:1]["audio"]), max_new_tokens=5, do_sample=False,
                               return_dict_in_generate=True).sequences[0].tolist()
    assert gen[: len(prompt)] == prompt
    want = gen[len(prompt):]
    want = want[: want.index(tok.eos_token_id)] if tok.eos_token_id in want else want
    assert pseudo[0]["labels"] == want + [tok.eos_token_id] and CACHED_ENCODER not in pseudo.column_names


def test_a_killed_encoder_cache_pass_resumes_from_its_saved_shards(teacher_dir, tmp_path):
    """The encoder-output + pseudo-label pass (18 min for Whisper base on 960 clips) is saved shard by shard: killed
    after two shards and started again with the same key it computes only the rest, and the cache equals an
    uninterrupted pass's; another pass (other options) does not reuse the shards."""
    teacher, processor = load(teacher_dir)
    tok, collator = processor.tokenizer, collator_for(processor)
    data = rows(processor, 7)
    pseudo = {"prompt_ids": decoder_prompt_ids(tok), "max_new_tokens": 4, "eos_token_id": tok.eos_token_id,
              "do_sample": False}
    computed = []

    def features(r, kill_after=None):
        if kill_after is not None and len(computed) >= kill_after:
            raise KeyboardInterrupt("killed from outside")
        computed.append(len(r["audio"]))
        return collator.input_features(r["audio"])

    def cache(name, fn, **kw):
        return load_or_compute_encoder_cache(str(tmp_path / name), "teacher", data, lambda: teacher, fn,
                                             batch_size=2, shard_batches=1, pseudo_labels=pseudo, **kw)

    whole, meta = cache("whole", features)
    assert meta["reused"] is False and computed == [2, 2, 2, 1] and not (tmp_path / "whole.partial").exists()
    computed.clear()
    with pytest.raises(KeyboardInterrupt):
        cache("killed", lambda r: features(r, kill_after=2))
    partial = tmp_path / "killed.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["partial.json", "shard-00000", "shard-00001"]
    assert not (tmp_path / "killed").exists()  # nothing half-written where the cache is read
    computed.clear()
    resumed, meta = cache("killed", features)
    assert computed == [2, 1] and meta["reused"] is False and not partial.exists()  # shards 2 and 3 only
    assert resumed["labels"] == whole["labels"] and len(resumed) == 7
    assert resumed[CACHED_ENCODER] == whole[CACHED_ENCODER]
    # a pass for pseudo-labels alone (a student whose encoder differs) is read from the saved encoder pass
    computed.clear()
    labels_only, meta = cache("whole", features, store_encoder=False)
    assert computed == [] and meta["read_from_encoder_pass"] and meta["encoder_outputs"] is False
    assert labels_only["labels"] == whole["labels"] and CACHED_ENCODER not in labels_only.column_names
    # shards of another pass (here: without pseudo-labels) are not taken
    computed.clear()
    with pytest.raises(KeyboardInterrupt):
        cache("other", lambda r: features(r, kill_after=1))
    computed.clear()
    other, _ = load_or_compute_encoder_cache(str(tmp_path / "other"), "teacher", data, lambda: teacher, features,
                                             batch_size=2, shard_batches=1)
    assert computed == [2, 2, 2, 1] and other["labels"] == data["labels"]
    assert cache("other", features)[1]["reused"] is False  # the key changed again: recomputed, not the old cache


# -------------------------------------------------------------------------------------------------------- script


def _script():
    return load_script("distill")


def _write_data(root, rate_of=lambda i: 16000, text_header="text", seconds_of=lambda i: 0.4):
    import soundfile as sf

    os.makedirs(root / "clips", exist_ok=True)
    for split, ids in (("train", range(8)), ("validation", range(8, 10)), ("test", range(10, 13))):
        lines = [f"audio,{text_header}"]
        for i in ids:
            rate = rate_of(i)
            sf.write(str(root / "clips" / f"{i}.wav"), clip(i, rate, seconds_of(i)), rate, subtype="PCM_16")
            lines.append(f"clips/{i}.wav,{TEXTS[i % len(TEXTS)]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return str(root)


FAST = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1", "--use_cpu", "--report_to", "none",
        "--latency_rounds", "1", "--no_measure_memory", "--measure_clips", "2", "--generation_max_new_tokens", "5",
        "--dataloader_num_workers", "0", "--seed", "3"]


def test_script_end_to_end_and_reload_in_a_fresh_process(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data", rate_of=lambda i: 8000 if i == 1 else 16000)  # one clip is resampled
    out = tmp_path / "out"
    record = _script().main(["--teacher_model", teacher_dir, "--dataset", data, "--student_decoder_layers", "0,3",
                             "--output_dir", str(out), *FAST])
    summary = json.loads((out / "distill_summary.json").read_text())
    kd = summary["methods"]["distillation"]
    assert kd["mode"] == "sequence-to-sequence" and kd["decoder_layers"] == [0, 3]
    assert kd["encoder_outputs"] == "cached" and kd["hidden_weight"] == 0.0 and kd["relation_weight"] == 0.0
    assert summary["data"]["splits"] == {"train": 8, "validation": 2, "test": 3}
    assert summary["training"]["steps"] == 2
    for split in ("validation", "test"):
        assert 0 <= summary["metrics"]["student"][split][f"{split}_wer"]
        assert "cer" in summary["metrics"]["teacher"]["test"] or split != "test"
    per_clip = summary["metrics"]["per_clip"]
    assert per_clip["clips"] == 2 and per_clip["student"]["median_ms_per_clip"] > 0 and per_clip["speedup"] > 0
    assert summary["models"]["student"]["decoder_layers"] == 2 and summary["models"]["teacher"]["decoder_layers"] == 4
    assert (out / "teacher_cache" / "teacher_cache.json").exists()
    model_dir = out / "model"
    assert json.loads((model_dir / "config.json").read_text())["decoder_layers"] == 2
    assert (model_dir / "processor_config.json").exists() and (model_dir / "tokenizer.json").exists()
    teacher_cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    saved_cfg = json.loads((model_dir / "config.json").read_text())
    assert {k: saved_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")} == \
        {k: teacher_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    gen_cfg = json.loads((model_dir / "generation_config.json").read_text())
    assert gen_cfg["decoder_start_token_id"] == teacher_cfg["decoder_start_token_id"]

    model = record.trainer.model.eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    features = processor.feature_extractor([clip(11)], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        here = model.generate(features, max_new_tokens=6, do_sample=False)[0].tolist()
    code = (
        "import sys, json, torch, numpy as np\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_distill_seq2seq import clip\n"
        "from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor\n"
        "torch.set_num_threads(1)\n"
        "m = AutoModelForSpeechSeq2Seq.from_pretrained(sys.argv[1]).eval()\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1])\n"
        "f = p.feature_extractor([clip(11)], sampling_rate=16000, return_tensors='pt').input_features\n"
        "with torch.inference_mode():\n"
        "    print(json.dumps(m.generate(f, max_new_tokens=6, do_sample=False)[0].tolist()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(model_dir), os.path.dirname(__file__)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                                          PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == here


def test_speech_data_from_a_file_and_a_saved_dataset(tmp_path, caplog):
    import logging

    from datasets import DatasetDict

    from hfcompress.speech.dataset import load_transcription_dataset

    root = tmp_path / "one"
    _write_data(root)
    (root / "validation.csv").unlink()
    (root / "test.csv").unlink()
    with open(root / "train.csv", "a") as fh:
        fh.write("clips/0.wav,\n")  # an empty transcript: dropped with a warning
    with caplog.at_level(logging.WARNING):
        dsd = load_transcription_dataset(str(root / "train.csv"))
    assert "Dropped 1 of 9 rows of split 'train'" in caplog.text
    assert {s: len(d) for s, d in dsd.items()} == {"train": 6, "validation": 1, "test": 1}  # carved, seeded
    assert dsd["train"].column_names == ["audio", "text"] and len(dsd["train"][0]["audio"]) == 6400

    DatasetDict(train=Dataset.from_dict({"speech": [clip(i, 8000) for i in range(3)], "sampling_rate": [8000] * 3,
                                         "words": TEXTS[:3]})).save_to_disk(str(tmp_path / "saved"))
    dsd = load_transcription_dataset(str(tmp_path / "saved"), "speech", "words", validation_size=0.3, test_size=0.3)
    assert {s: len(d) for s, d in dsd.items()} == {"train": 1, "validation": 1, "test": 1}
    assert len(dsd["validation"][0]["audio"]) == 6400  # resampled from 8 kHz
    with pytest.raises(UserInputError, match=r"row 0: audio is sampled at 8000 Hz but 16000 Hz is expected"):
        load_transcription_dataset(str(tmp_path / "saved"), "speech", "words", resample=False)
    with pytest.raises(UserInputError, match=r"audio column 'audio' not found in split 'train'.*\['speech', "):
        load_transcription_dataset(str(tmp_path / "saved"), "audio", "words")


def test_speech_options_are_documented():
    from dataclasses import fields

    from hfcompress.run.arguments import SpeechArguments
    from hfcompress.run.scripts import script

    assert SpeechArguments in script("distill").groups
    for f in fields(SpeechArguments):
        assert f.metadata.get("help"), f.name


def _other_tokenizer_student(teacher_dir, root):
    """A copy of the teacher whose tokenizer maps text to other ids (one token more)."""
    import shutil

    path = root / "student_other_tok"
    shutil.copytree(teacher_dir, path)
    processor = WhisperProcessor.from_pretrained(path)
    processor.tokenizer.add_tokens(["zzz"])
    processor.save_pretrained(path)
    return str(path)


def _short_window_student(teacher_dir, root, seconds: int = 2):
    """A copy of the teacher whose encoder hears `seconds` (its position table cut, `fit_audio_window`)."""
    import shutil

    from hfcompress.arch.speech import fit_audio_window

    path = root / "student_short_window"
    shutil.copytree(teacher_dir, path)
    model, processor = load(teacher_dir)
    fe = fit_audio_window(model, processor.feature_extractor, seconds)
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("rate", r"8000 Hz but 16000 Hz is expected"),
    ("text_column", r"transcript column 'transcript' not found in split '\w+' \(file .*\); columns are \['audio', 'text'\]"),
    ("layers", r"--student_decoder_layers 0,7: decoder layers \[7\] out of range: the teacher's decoder has layers "
               r"0\.\.3"),
    ("tokenizer", r"the teacher's and the student's tokenizers differ: teacher \S+/teacher \(1769 tokens, .*\), student "
                  r"\S+/student_other_tok \(1770 tokens, .*\); sequence-to-sequence distillation"),
    ("english_only", r"--language 'de': this Whisper is English-only \(no language tokens\); expected 'en' or no "
                     r"language \(--teacher_model \S+/teacher\)"),
    ("window", r"split 'train' \(file \S+train.csv\): 1 clip\(s\) longer than the 2 s window the model hears .*first "
               r"row 5 \(clips/5.wav\), 3.00 s, .*window of at least 3 s"),
    ("undecodable", r"1 of 8 audio entries of split 'train' \(file \S+train.csv\) could not be decoded: split "
                    r"'train' \(.*\), row 4: could not decode audio file \S+/clips/4.wav: \w+"),
])
def test_bad_input_is_one_error_before_training(teacher_dir, tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data", rate_of=lambda i: 8000 if (case == "rate" and i == 2) else 16000,
                       seconds_of=lambda i: 3.0 if (case == "window" and i == 5) else 0.4)
    if case == "undecodable":  # a file named .wav that is not audio: a header cut short
        (tmp_path / "data" / "clips" / "4.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    flags = {"rate": ["--no_resample_audio"], "text_column": ["--text_column", "transcript"],
             "layers": ["--student_decoder_layers", "0,7"],
             "tokenizer": ["--student_model", _other_tokenizer_student(teacher_dir, tmp_path)],
             "english_only": ["--language", "de"],
             "window": ["--student_model", _short_window_student(teacher_dir, tmp_path)] if case == "window" else [],
             "undecodable": []}[case]
    out = tmp_path / "out"
    argv = ["--teacher_model", teacher_dir, "--dataset", data, "--output_dir", str(out), *FAST, *flags]
    line = command_fails("distill", argv, tmp_path)
    import re

    assert re.search(message, line), line
    assert not (out / "checkpoints").exists() and not (out / "teacher_cache").exists()  # nothing trained or cached


def test_pseudo_labels_above_the_wer_threshold_are_dropped_and_counted(teacher_dir):
    from datasets import Dataset

    from hfcompress.arch.speech import transcript_ids
    from hfcompress.errors import UserInputError
    from hfcompress.run.arguments import SpeechArguments
    from hfcompress.run.speech import filter_pseudo_labels

    class Words:  # label ids stand for the words of a small vocabulary
        vocab = ["the", "film", "is", "good", "bad", "a", "loop", "loop"]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(self.vocab[i] for i in ids)

    data = Dataset.from_dict({
        "text": ["The film is good.", "the film is bad", "a film", "The film is good"],
        "labels": [[0, 1, 2, 3], [0, 1, 2, 3], [6, 7, 6, 7, 6], [0, 1, 2, 4]],  # right, 1 of 4 wrong, a loop, 1 wrong
        "audio": [[0.0], [0.1], [0.2], [0.3]],
    })
    kept, report = filter_pseudo_labels(data, Words(), 0.25)
    assert kept["text"] == ["The film is good.", "the film is bad", "The film is good"]
    assert kept["audio"] == [[0.0], [0.1], [0.3]]  # the rows' other columns travel with them
    assert report["kept"] == 3 and report["dropped"] == 1 and report["max_wer"] == 0.25
    assert report["wer_of_kept_labels"] == pytest.approx(2 / 12) and report["wer_of_all_labels"] > 2 / 12
    assert filter_pseudo_labels(data, Words(), 0.0)[1]["kept"] == 1
    with pytest.raises(UserInputError, match=r"every one of the 3 training clips' pseudo-labels is above it"):
        filter_pseudo_labels(data.select([1, 2, 3]), Words(), 0.1)
    # a real Whisper tokenizer on a saved dataset's label column: its own transcript tokens are 0 WER
    tok = WhisperProcessor.from_pretrained(teacher_dir).tokenizer
    texts = ["the film is good", "a waste of time"]
    real = Dataset.from_dict({"text": texts, "labels": [transcript_ids(tok, t) for t in texts]})
    kept, report = filter_pseudo_labels(real, tok, 0.0)
    assert report["kept"] == 2 and report["wer_of_all_labels"] == 0.0
    with pytest.raises(UserInputError, match="--pseudo_label_max_wer filters pseudo-labels: it needs --pseudo_labels"):
        SpeechArguments(pseudo_label_max_wer=0.1)
    with pytest.raises(UserInputError, match="must be a WER fraction of 0 or more"):
        SpeechArguments(pseudo_labels=True, pseudo_label_max_wer=-1)


# ------------------------------------------------------------------------------------------- pruning + distillation

PRUNE_ENCODER = ["--granularity", "structured", "--structured_stacks", "encoder", "--head_sparsity", "0.5",
                 "--ffn_sparsity", "0.5", "--method", "taylor", "--pruning_start", "0", "--pruning_end", "0.5"]


def test_encoder_heads_and_neurons_pruned_with_decoder_kd_reload_in_a_fresh_process(teacher_dir, tmp_path,
                                                                                    monkeypatch):
    """scripts/prune.py with a Whisper teacher: the encoder's heads and FFN neurons are cut (half of each) while the
    student learns from the teacher's decoder logits; the saved model generates the same tokens in a fresh process
    without hfcompress (transformers' auto class with the modeling code saved beside the weights)."""
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data")
    out = tmp_path / "out"
    fast = [a if a != "2" else "4" for a in FAST]  # 4 steps: pruned by step 2, trained 2 more
    record = load_script("prune").main(["--teacher_model", teacher_dir, "--dataset", data, "--no_freeze_encoder",
                                        *PRUNE_ENCODER, "--output_dir", str(out), *fast])
    summary = json.loads((out / "prune_summary.json").read_text())
    kd, pruning = summary["methods"]["distillation"], summary["methods"]["pruning"]
    assert kd["mode"] == "sequence-to-sequence" and kd["encoder"] == "trained"
    assert "AutoModelForSpeechSeq2Seq.from_pretrained" in pruning["loading"]
    assert summary["training"]["steps"] == 4
    teacher_cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    model = record.trainer.model.eval()
    for layer in model.model.encoder.layers:  # half the heads (4 -> 2) and neurons (128 -> 64) of every block
        assert layer.self_attn.q_proj.out_features == teacher_cfg["d_model"] // 2
        assert layer.fc1.out_features == teacher_cfg["encoder_ffn_dim"] // 2
    for layer in model.model.decoder.layers:  # the decoder is untouched
        assert layer.self_attn.q_proj.out_features == teacher_cfg["d_model"]
        assert layer.fc1.out_features == teacher_cfg["decoder_ffn_dim"]
    model_dir = out / "model"
    processor = WhisperProcessor.from_pretrained(model_dir)
    features = processor.feature_extractor([clip(11)], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        here = model.generate(features, max_new_tokens=6, do_sample=False)[0].tolist()
    torch.save(features, tmp_path / "features.pt")
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForSpeechSeq2Seq\n"
        "torch.set_num_threads(1)\n"
        "m = AutoModelForSpeechSeq2Seq.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "assert 'hfcompress' not in sys.modules\n"
        "f = torch.load(sys.argv[2])\n"
        "with torch.inference_mode():\n"
        "    print(json.dumps(m.generate(f, max_new_tokens=6, do_sample=False)[0].tolist()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(model_dir), str(tmp_path / "features.pt")], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                                          PYTHONPATH=""))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == here


@pytest.mark.parametrize("flags, message", [
    (PRUNE_ENCODER, r"--freeze_encoder \(the default\): the student's encoder is frozen .* but pruning changes it "
                    r"\(model\.encoder\.layers\.0, 2 in all\): pass --no_freeze_encoder"),
    (["--method", "magnitude", "--target_sparsity", "0.5"],  # weights: every Linear by default, the encoder's too
     r"but pruning changes it \(model\.encoder\.layers\.0\.self_attn\.k_proj, \d+ in all\)"),
])
def test_pruning_a_frozen_encoder_is_one_error_before_work(teacher_dir, tmp_path, monkeypatch, flags, message):
    import re

    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data")
    out = tmp_path / "out"
    line = command_fails("prune", ["--teacher_model", teacher_dir, "--dataset", data, *flags,
                                   "--output_dir", str(out), *FAST], tmp_path)
    assert re.search(message, line), line
    assert not (out / "checkpoints").exists() and not (out / "teacher_cache").exists()
