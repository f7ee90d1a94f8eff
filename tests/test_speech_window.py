"""A Whisper student with a shorter encoder window (--student_window_seconds): the tiny random Whisper of
tests/test_distill_seq2seq.py (a 30 s window, 1,500 encoder positions) distilled into a 2 s student (100 positions,
200 mel frames). Covered: the teacher and the student read different-length features of the same clips in one
training step; the script saves a student that plain transformers (no hfcompress, a fresh process) reloads with its
short window and that `pipeline("automatic-speech-recognition")` runs on a WAV file; a clip longer than the student's
window, a window not shorter than the teacher's, and the option on a non-Whisper run are each one error before any
work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import test_distill_seq2seq as seq2seq
import torch
from conftest import NO_HFCOMPRESS, command_fails
from test_distill_seq2seq import FAST, _script, _write_data, clip, load, rows
from transformers import Wav2Vec2Config

from hfcompress.arch.speech import decoder_prompt_ids
from hfcompress.distill import (
    DistillationArguments,
    DistillationTrainer,
    SpeechSeq2SeqDistillationCollator,
    init_seq2seq_student,
)
from hfcompress.run.speech import shorten_student_window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
teacher_dir, _threads = seq2seq.teacher_dir, seq2seq._threads  # the tiny Whisper teacher and one thread, as there


def test_teacher_and_student_read_their_own_windows_in_one_step(teacher_dir, tmp_path):
    teacher, processor = load(teacher_dir)
    student, student_processor = shorten_student_window(init_seq2seq_student(teacher, [0, 3]), processor, 2)
    assert student.config.max_source_positions == 100 and student.get_encoder().embed_positions.num_embeddings == 100
    assert torch.equal(student.get_encoder().embed_positions.weight, teacher.get_encoder().embed_positions.weight[:100])
    fe = student_processor.feature_extractor
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (2, 32000, 200)
    assert teacher.config.max_source_positions == 1500  # the teacher is not touched
    tok = processor.tokenizer
    collator = SpeechSeq2SeqDistillationCollator(fe, decoder_prompt_ids(tok), tok.pad_token_id,
                                                 teacher_feature_extractor=processor.feature_extractor)
    seen = {}

    def record(role):
        def hook(module, args, kwargs):
            seen[role] = tuple((args[0] if args else kwargs["input_features"]).shape)
        return hook

    hooks = [m.get_encoder().register_forward_pre_hook(record(role), with_kwargs=True)
             for role, m in (("teacher", teacher), ("student", student))]
    args = DistillationArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=1,
                                 report_to="none", save_strategy="no", use_cpu=True, learning_rate=1e-3)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=rows(processor, 4),
                                  data_collator=collator)
    trainer.train()
    for h in hooks:
        h.remove()
    assert seen == {"teacher": (4, 80, 3000), "student": (4, 80, 200)}
    assert trainer.state.log_history[-1]["train_loss"] > 0


FRESH = NO_HFCOMPRESS + r"""
import json
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration, pipeline
torch.set_num_threads(1)
model = WhisperForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1])
asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
               feature_extractor=processor.feature_extractor, device="cpu")
import soundfile
audio, rate = soundfile.read(sys.argv[2], dtype="float32")  # a file path would need ffmpeg, not installed here
# greedy, as the test's own generate (the pipeline defaults to 5 beams)
greedy = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}
text = asr({"raw": audio, "sampling_rate": rate}, generate_kwargs=greedy)["text"]
print(json.dumps({"text": text, "positions": model.config.max_source_positions,
                  "frames": processor.feature_extractor.nb_max_frames}))
"""


def test_script_saves_a_short_window_student_plain_transformers_runs(teacher_dir, tmp_path, monkeypatch):
    import soundfile as sf

    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data", seconds_of=lambda i: 1.5 if i == 3 else 0.4)  # 1.5 s fits a 2 s window
    out = tmp_path / "out"
    record = _script().main(["--teacher_model", teacher_dir, "--dataset", data, "--student_decoder_layers", "0,3",
                             "--student_window_seconds", "2", "--output_dir", str(out), *FAST])
    summary = json.loads((out / "distill_summary.json").read_text())
    kd = summary["methods"]["distillation"]
    assert (kd["student_window_seconds"], kd["teacher_window_seconds"]) == (2.0, 30.0)
    assert kd["encoder_outputs"] == "online"  # the encoders differ: nothing cached
    model_dir = out / "model"
    assert json.loads((model_dir / "config.json").read_text())["max_source_positions"] == 100
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert (pre["chunk_length"], pre["n_samples"], pre["nb_max_frames"]) == (2, 32000, 200)
    assert summary["metrics"]["per_clip"]["student"]["median_ms_per_clip"] > 0

    wav = tmp_path / "clip.wav"
    sf.write(str(wav), clip(11, 16000, 1.2), 16000, subtype="PCM_16")
    from transformers import WhisperProcessor

    model = record.trainer.model.eval()
    processor = WhisperProcessor.from_pretrained(model_dir)
    audio, _ = sf.read(str(wav), dtype="float32")
    features = processor.feature_extractor([audio], sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape[-1] == 200
    with torch.inference_mode():
        here = processor.tokenizer.batch_decode(model.generate(features, max_new_tokens=6, do_sample=False),
                                                skip_special_tokens=True)[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", FRESH, str(model_dir), str(wav)], capture_output=True, text=True,
                         timeout=180, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert (got["positions"], got["frames"]) == (100, 200)
    assert got["text"].strip() == here.strip()


def _wav2vec2_teacher(root):
    path = root / "w2v"
    Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   architectures=["Wav2Vec2ForCTC"]).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("longer_clip", r"split 'train' \(file \S+train.csv\): 1 clip\(s\) longer than the student's 2 s encoder window "
                    r"\(--student_window_seconds 2\): first row 5 \(clips/5.wav\), 3.00 s, .*window of at least 3 s"),
    ("not_shorter", r"--student_window_seconds 30: expected whole seconds from 1 to 29, shorter than the 30 s window "
                    r"of --teacher_model"),
    ("fraction", r"--student_window_seconds 2.5: expected whole seconds"),
    ("wav2vec2", r"--student_window_seconds 2: a shorter encoder window is for Whisper transcription students \(a "
                 r"Whisper teacher\); this is a audio-ctc run|--student_window_seconds 2: .* this is a \S+ run"),
    ("whisper_classifier", r"--student_window_seconds 2: a shorter encoder window is for Whisper transcription "
                           r"students .*use --audio_window_seconds"),
])
def test_bad_window_is_one_error_before_work(teacher_dir, tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    data = _write_data(tmp_path / "data", seconds_of=lambda i: 3.0 if (case == "longer_clip" and i == 5) else 0.4)
    teacher = _wav2vec2_teacher(tmp_path) if case == "wav2vec2" else teacher_dir
    window = {"not_shorter": "30", "fraction": "2.5"}.get(case, "2")
    extra = ["--speech_task", "audio-classification"] if case == "whisper_classifier" else []
    out = tmp_path / "out"
    argv = ["--teacher_model", teacher, "--dataset", data, "--output_dir", str(out), "--student_window_seconds",
            window, *extra, *FAST]
    line = command_fails("distill", argv, tmp_path)
    assert re.search(message, line), line
    assert not (out / "checkpoints").exists() and not (out / "teacher_cache").exists()
