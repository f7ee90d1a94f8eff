"""Audio classification through the text classifiers' run (`hfcompress/run/audio.py`): `scripts/distill.py` and
`scripts/prune.py` with a speech teacher on labelled audio — a Whisper checkpoint without a classifier (fine-tuned
once into `WhisperForAudioClassification` on a shortened window, cached), wav2vec2 and HuBERT classifiers — on real
WAV files listed in a CSV with string labels, the way users have data. Tiny random models; every saved model reloads
in a fresh process with the same logits. Bad audio input fails before any training, naming what is wrong."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import load_script

from hfcompress.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000

_WHISPER = dict(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
                max_source_positions=150, max_target_positions=24, pad_token_id=0, decoder_start_token_id=1,
                eos_token_id=2, bos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None)
_W2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
            classifier_proj_size=16, layerdrop=0.0, mask_time_prob=0.0)


def write_clips(folder, n=48, seed=0, rate=RATE, name="clips.csv"):
    """`n` WAV files (a low or a high tone with noise, 0.3-0.8 s) and a CSV ``path,label`` with class names."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(n):
        label = "low" if i % 2 == 0 else "high"
        t = np.arange(int(rng.uniform(0.3, 0.8) * rate)) / rate
        audio = 0.3 * np.sin(2 * np.pi * (300 if label == "low" else 2500) * t) + 0.02 * rng.standard_normal(len(t))
        path = f"wav/{i:03d}.wav"
        os.makedirs(os.path.join(folder, "wav"), exist_ok=True)
        soundfile.write(os.path.join(folder, path), audio.astype(np.float32), rate)
        rows.append((path, label))
    csv_path = os.path.join(folder, name)
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return csv_path


def tiny_whisper(folder):
    """A Whisper speech-to-text checkpoint (no classifier) with a 3 s window and its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig(**_WHISPER)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=8, chunk_length=3).save_pretrained(folder)
    return folder


def tiny_audio_classifier(folder, family):
    import transformers as tf

    torch.manual_seed(0)
    cfg_cls, model_cls = {"wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2ForSequenceClassification),
                          "hubert": (tf.HubertConfig, tf.HubertForSequenceClassification)}[family]
    model = model_cls(cfg_cls(**_W2V, num_labels=2, id2label={0: "high", 1: "low"}, label2id={"high": 0, "low": 1}))
    model.save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, return_attention_mask=True).save_pretrained(folder)
    return folder


def common(csv_path, out, *extra):
    return ["--dataset", csv_path, "--audio_column", "path", "--label_column", "label",
            "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--save_strategy", "no",
            "--eval_strategy", "no", "--no_measure", "--output_dir", str(out), "--logging_steps", "2", *extra]


FRESH = r"""
import json, sys, numpy as np, torch, soundfile
from transformers import AutoFeatureExtractor
from hfcompress.loading import load_model
path, clip = sys.argv[1], sys.argv[2]
model, fe = load_model(path), AutoFeatureExtractor.from_pretrained(path)
audio, rate = soundfile.read(clip, dtype="float32")
kwargs = {"padding": True} if "input_values" in fe.model_input_names else {}
with torch.no_grad():
    print(json.dumps(model(**fe([audio], sampling_rate=rate, return_tensors="pt", **kwargs)).logits.tolist()))
"""


def logits_here(path, clip):
    from transformers import AutoFeatureExtractor

    from hfcompress.loading import load_model

    model, fe = load_model(path), AutoFeatureExtractor.from_pretrained(path)
    audio, rate = soundfile.read(clip, dtype="float32")
    kwargs = {"padding": True} if "input_values" in fe.model_input_names else {}
    with torch.no_grad():
        return model(**fe([audio], sampling_rate=rate, return_tensors="pt", **kwargs)).logits


def fresh_logits(path, clip):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", FRESH, str(path), str(clip)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_whisper_checkpoint_becomes_a_keyword_classifier_then_a_shallower_student(tmp_path):
    csv_path = write_clips(tmp_path / "data")
    teacher = tiny_whisper(tmp_path / "whisper")
    out = tmp_path / "run"
    record = load_script("distill").main(common(
        csv_path, out, "--teacher_model", str(teacher), "--speech_task", "audio-classification",
        "--student_layers", "1", "--teacher_finetune_epochs", "2", "--teacher_learning_rate", "1e-3",
        "--learning_rate", "1e-3",
    ))
    # the teacher: a classifier fine-tuned once on the encoder, its window cut to the longest clip (0.8 s -> 1 s)
    t_dir = record.models["teacher"]["path"]
    assert t_dir.endswith("-1s") and os.path.isfile(os.path.join(t_dir, "finetune_summary.json"))
    t_cfg = json.load(open(os.path.join(t_dir, "config.json")))
    assert t_cfg["architectures"] == ["WhisperForAudioClassification"] and t_cfg["max_source_positions"] == 50
    assert json.load(open(os.path.join(t_dir, "preprocessor_config.json")))["chunk_length"] == 1
    # the student: encoder block 1 of the teacher, the class names of the CSV (sorted), logits + hidden distilled
    model_dir = record.artifacts["model"]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert cfg["encoder_layers"] == 1 and cfg["id2label"] == {"0": "high", "1": "low"}
    assert record.data["task"] == "audio-classification" and record.data["audio_window_s"] == 1
    losses = [h for h in record.trainer.state.log_history if "loss_kd" in h]
    assert losses and all(np.isfinite(h["loss_kd"]) and np.isfinite(h["loss_hidden"]) for h in losses)
    assert 0 <= record.metrics["student"]["test"]["test_accuracy"] <= 1
    summary = json.load(open(out / "distill_summary.json"))
    assert summary["metrics"]["teacher"]["test"]["rows"] == record.data["splits"]["test"]
    # a second run reuses the cached teacher
    again = load_script("distill").main(common(
        csv_path, tmp_path / "run2", "--teacher_model", str(teacher), "--speech_task", "audio-classification",
        "--student_layers", "0", "--teacher_finetune_epochs", "2", "--teacher_learning_rate", "1e-3", "--max_steps", "1",
    ))
    assert json.load(open(os.path.join(t_dir, "finetune_summary.json")))["cache_key"]
    assert again.models["teacher"]["path"] == t_dir
    clip = os.path.join(tmp_path, "data", "wav", "000.wav")
    assert torch.allclose(fresh_logits(model_dir, clip), logits_here(model_dir, clip), atol=1e-5)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_wav2vec2_and_hubert_classifiers_distil_and_prune_with_removal(tmp_path, family):
    csv_path = write_clips(tmp_path / "data", n=32)
    teacher = tiny_audio_classifier(tmp_path / family, family)
    record = load_script("distill").main(common(csv_path, tmp_path / "kd", "--teacher_model", str(teacher),
                                                "--student_layers", "1", "--max_steps", "3"))
    cfg = json.load(open(os.path.join(record.artifacts["model"], "config.json")))
    assert cfg["num_hidden_layers"] == 1 and record.data["task"] == "audio-classification"
    assert any("loss_kd" in h for h in record.trainer.state.log_history)
    pruned = load_script("prune").main(common(
        csv_path, tmp_path / "prune", "--teacher_model", str(teacher), "--granularity", "structured",
        "--method", "taylor", "--target_sparsity", "0.5", "--num_train_epochs", "2",
    ))
    model_dir = pruned.artifacts["model"]
    from hfcompress.prune import is_structured_checkpoint

    assert is_structured_checkpoint(model_dir)
    layer = pruned.trainer.model.base_model.encoder.layers[0]
    assert layer.feed_forward.intermediate_dense.out_features < _W2V["intermediate_size"]
    clip = os.path.join(tmp_path, "data", "wav", "001.wav")
    assert torch.allclose(fresh_logits(model_dir, clip), logits_here(model_dir, clip), atol=1e-5)


def test_bad_audio_input_fails_before_training(tmp_path):
    teacher = tiny_whisper(tmp_path / "whisper")
    run = load_script("distill").main
    base = ["--teacher_model", str(teacher), "--speech_task", "audio-classification"]
    # audio at 8 kHz with resampling refused: one error naming both rates
    low = write_clips(tmp_path / "low", n=12, rate=8000)
    with pytest.raises(UserInputError, match="8000.*16000|16000.*8000"):
        run(common(low, tmp_path / "o1", *base, "--no_resample_audio"))
    # a label column that is not there
    csv_path = write_clips(tmp_path / "data", n=12)
    with pytest.raises(UserInputError, match="label column 'kind' not found"):
        run(common(csv_path, tmp_path / "o2", *base, "--label_column", "kind"))
    # a window longer than the model hears
    with pytest.raises(UserInputError, match="--audio_window_seconds 5"):
        run(common(csv_path, tmp_path / "o3", *base, "--audio_window_seconds", "5"))
    # a student layer the teacher does not have
    with pytest.raises(UserInputError, match="out of range"):
        run(common(csv_path, tmp_path / "o4", *base, "--student_layers", "0,7"))
    # nothing was trained or written
    assert not (tmp_path / "home" / "teachers").exists()
    assert not any((tmp_path / f"o{i}" / "model").exists() for i in range(1, 5))


def test_audio_run_kind_and_a_speech_task_without_a_speech_teacher(tmp_path):
    from hfcompress.run.arguments import DataArguments, ModelArguments, SpeechArguments
    from hfcompress.run.audio import audio_run_kind

    whisper = str(tiny_whisper(tmp_path / "whisper"))
    ctc = str(tiny_ctc(tmp_path / "ctc"))
    cls = str(tiny_audio_classifier(tmp_path / "cls", "hubert"))

    def kind(teacher, task="auto", dataset="rotten-tomatoes"):
        return audio_run_kind(ModelArguments(teacher_model=teacher), DataArguments(dataset=dataset),
                              SpeechArguments(speech_task=task))

    assert kind(whisper) is None  # Whisper transcription: the sequence-to-sequence run
    assert kind(whisper, dataset="speech-keywords") == kind(whisper, "audio-classification") == "classification"
    assert kind(ctc) == kind(ctc, "transcription") == "ctc" and kind(cls) == "classification"
    with pytest.raises(UserInputError, match="needs a speech teacher"):
        kind("minilm-l6", "audio-classification")


def tiny_ctc(folder):
    """A wav2vec2 CTC model with a character tokenizer (upper-case letters, as such vocabularies often are)."""
    import transformers as tf

    os.makedirs(folder, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}}
    with open(os.path.join(folder, "vocab.json"), "w") as fh:
        json.dump(vocab, fh)
    tok = tf.Wav2Vec2CTCTokenizer(os.path.join(folder, "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                  word_delimiter_token="|")
    fe = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, return_attention_mask=True)
    torch.manual_seed(0)
    tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(**_W2V, vocab_size=len(vocab), pad_token_id=0, ctc_zero_infinity=True,
                                        ctc_loss_reduction="mean")).save_pretrained(folder)
    tf.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(folder)
    return folder


def test_ctc_model_distils_through_the_distill_script_from_a_csv_of_transcripts(tmp_path):
    csv_path = write_clips(tmp_path / "data", n=24)
    rows = list(csv.reader(open(csv_path)))
    with open(csv_path, "w", newline="") as fh:  # transcripts instead of labels, lower-case as people write
        w = csv.writer(fh)
        w.writerow(["path", "sentence"])
        w.writerows((p, "a low tone" if label == "low" else "a high tone") for p, label in rows[1:])
    teacher = tiny_ctc(tmp_path / "ctc")
    record = load_script("distill").main([
        "--teacher_model", str(teacher), "--dataset", csv_path, "--audio_column", "path", "--text_column", "sentence",
        "--student_layers", "1", "--per_device_train_batch_size", "4", "--max_steps", "3", "--save_strategy", "no",
        "--eval_strategy", "no", "--no_measure", "--logging_steps", "1", "--output_dir", str(tmp_path / "run"),
    ])
    assert record.data["task"] == "ctc"
    parts = [h for h in record.trainer.state.log_history if "loss_ctc" in h]
    assert parts and all(np.isfinite(h["loss_ctc"]) and np.isfinite(h["loss_kd"]) for h in parts)
    test = record.metrics["student"]["test"]
    assert np.isfinite(test["test_wer"]) and record.metrics["teacher"]["test"]["rows"] == record.data["splits"]["test"]
    model_dir = record.artifacts["model"]
    assert json.load(open(os.path.join(model_dir, "config.json")))["num_hidden_layers"] == 1
    assert os.path.isfile(os.path.join(model_dir, "vocab.json"))  # the processor travels with the student


def test_fit_audio_window_keeps_outputs_on_the_window_and_reloads(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    from hfcompress.arch.speech import audio_window_seconds, fit_audio_window

    torch.manual_seed(0)
    model = WhisperForAudioClassification(WhisperConfig(**_WHISPER, num_labels=2)).eval()
    fe = WhisperFeatureExtractor(feature_size=8, chunk_length=3)
    assert audio_window_seconds(model) == 3
    position_rows = model.encoder.embed_positions.weight[:50].clone()
    fe1 = fit_audio_window(model, fe, 1)
    assert audio_window_seconds(model) == 1 and fe1.chunk_length == 1 and fe1.nb_max_frames == 100
    assert torch.equal(model.encoder.embed_positions.weight, position_rows)
    audio = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    feats = fe1([audio], sampling_rate=RATE, return_tensors="pt")["input_features"]
    assert feats.shape[-1] == 100
    with torch.no_grad():
        before = model(input_features=feats).logits
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        after = WhisperForAudioClassification.from_pretrained(tmp_path / "m")(input_features=feats).logits
    assert torch.allclose(before, after)
    with pytest.raises(UserInputError, match="whole number of seconds"):
        fit_audio_window(model, fe1, 0.5)
