"""CTC distillation of wav2vec2 / HuBERT (``...ForCTC``) through the one `DistillationLoss` and `DistillationTrainer`,
on tiny random teachers (hidden 32, 4 layers, 2 heads, a two-layer conv stack of stride 40: 0.25-0.6 s of 16 kHz
audio -> 99-239 frames; no pretrained weights install offline), a character `Wav2Vec2CTCTokenizer` whose vocab.json
the test writes, and WAV clips (tones and noise of different lengths) listed with their transcripts in a CSV file.

Covered: the loss equals its definition (KL over the real frames, the CTC loss summed over clips, both divided by the
label characters) and the model's own CTC loss; a few training steps with the KD and CTC parts finite and logged
(wav2vec2 with an attention mask; HuBERT without one, with a hidden-state term); gradient accumulation 2 x 2 gives
the gradients of one batch of 4, through `DistillationTrainer` and through `Trainer(compute_loss_func=...)`; the
student saves as safetensors and reloads in a fresh process with identical logits; a vocabulary mismatch is a
`UserInputError` before training. Tolerances: float32 sums in another order (1e-5 relative)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GradCapture
from datasets import Dataset
from transformers import (
    HubertConfig,
    HubertForCTC,
    Trainer,
    TrainingArguments,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
)

from hfcompress.distill import (
    DistillationArguments,
    DistillationCallback,
    DistillationConfig,
    DistillationLoss,
    DistillationTrainer,
    init_student_from_teacher,
)
from hfcompress.distill.collator import CTCDistillationCollator
from hfcompress.distill.loss import TeacherOutputs, is_ctc
from hfcompress.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000
TEXTS = ["the cat", "a dog", "tea set", "hat", "the heat", "a hen", "ten", "the end"]
CHARS = sorted(set("".join(TEXTS)) - {" "})


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(CHARS)}}
    path = tmp_path_factory.mktemp("tok") / "vocab.json"
    path.write_text(json.dumps(vocab))
    return Wav2Vec2CTCTokenizer(str(path), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")


def clip(i: int) -> np.ndarray:
    """A tone plus noise, 0.25 to 0.6 s long."""
    seconds = 0.25 + 0.05 * (i % 8)
    t = np.arange(int(RATE * seconds)) / RATE
    rng = np.random.default_rng(i)
    return (0.3 * np.sin(2 * np.pi * (180 + 70 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def train_rows(tmp_path_factory, tokenizer):
    """8 WAV files and a CSV (audio path, transcript) written as users have them, then read back into rows of raw
    samples and character ids."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("data")
    os.makedirs(root / "clips")
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "transcript"])
        for i in range(8):
            sf.write(str(root / "clips" / f"{i}.wav"), clip(i), RATE, subtype="PCM_16")
            writer.writerow([f"clips/{i}.wav", TEXTS[i]])
    audio, labels, texts = [], [], []
    with open(root / "train.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            samples, rate = sf.read(str(root / row["audio"]), dtype="float32")
            assert rate == RATE
            audio.append(samples.tolist())
            labels.append(tokenizer(row["transcript"]).input_ids)
            texts.append(row["transcript"])
    assert len({len(a) for a in audio}) == 8 and len({len(l) for l in labels}) > 1  # padding on both sides
    assert tokenizer.decode(labels[0]) == TEXTS[0]
    return Dataset.from_dict({"audio": audio, "labels": labels, "transcript": texts})


def _config(cls, vocab_size, layer_norm=True, **kw):
    return cls(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32), conv_stride=(5, 8), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer" if layer_norm else "group",
        do_stable_layer_norm=layer_norm, pad_token_id=0, ctc_loss_reduction="sum", ctc_zero_infinity=True,
        mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, **kw,
    )


def teacher_for(kind: str, tokenizer, seed: int = 0):
    """wav2vec2: layer-normalised feature encoder, reads an attention mask; HuBERT: group-normalised, reads
    zero-padded audio without one (as the base checkpoints of both families)."""
    torch.manual_seed(seed)
    if kind == "wav2vec2":
        return Wav2Vec2ForCTC(_config(Wav2Vec2Config, len(tokenizer), layer_norm=True))
    return HubertForCTC(_config(HubertConfig, len(tokenizer), layer_norm=False))


def collator_for(kind: str) -> CTCDistillationCollator:
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=kind == "wav2vec2")
    return CTCDistillationCollator(fe)



def _trainer(kind, tokenizer, rows, tmp_path, bs=4, ga=1, max_steps=1, **kw):
    teacher = teacher_for(kind, tokenizer)
    student = init_student_from_teacher(teacher, layers=[0, 3])
    args = DistillationArguments(
        output_dir=str(tmp_path / f"{kind}-{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=max_steps, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=5,
        temperature=2.0, alpha=0.6, use_cpu=True, learning_rate=1e-3, dataloader_num_workers=0, **kw,
    )
    return DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=rows,
                               data_collator=collator_for(kind))


# ---------------------------------------------------------------------------------------------------------- loss


def test_loss_equals_its_definition_and_the_models_own_ctc_loss(tokenizer, train_rows):
    teacher = teacher_for("wav2vec2", tokenizer)
    student = init_student_from_teacher(teacher, layers=[0, 3])
    assert is_ctc(student) and not is_ctc(teacher.config)  # built in memory: the model's class tells
    with torch.no_grad():  # a student further from its teacher than a fresh copy (a KL well above float32 noise)
        student.lm_head.weight.mul_(4.0)
    batch = collator_for("wav2vec2")([train_rows[i] for i in (0, 3, 6)])
    assert batch["attention_mask"].shape == batch["input_values"].shape
    labels = batch.pop("labels")
    with torch.no_grad():
        s_logits = student(**batch).logits
        t_logits = teacher(**batch).logits
        own = student(**batch, labels=labels).loss  # ctc_loss_reduction="sum": the sum over the clips
    frames = student._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
    assert len(set(frames.tolist())) == 3 and int(frames.max()) == s_logits.shape[1]
    cfg = DistillationConfig(alpha=0.3, temperature=2.0)
    kd = DistillationLoss(cfg, student.config, teacher)
    assert kd.ctc
    out = type("Out", (), {"logits": s_logits})()
    got, parts = kd(out, labels, teacher_outputs=TeacherOutputs(logits=t_logits),
                    attention_mask=batch["attention_mask"], return_parts=True)
    # by hand: KL per real frame, CTC per clip on its own frames, both over the label characters
    T, n = cfg.temperature, int(labels.ne(-100).sum())
    kl_sum = ctc_sum = 0.0
    for b in range(labels.shape[0]):
        f = int(frames[b])
        ps = torch.log_softmax(s_logits[b, :f].double() / T, -1)
        pt = torch.log_softmax(t_logits[b, :f].double() / T, -1)
        kl_sum += T * T * float((pt.exp() * (pt - ps)).sum())
        target = labels[b][labels[b].ne(-100)]
        lp = torch.log_softmax(s_logits[b, :f].double(), -1)[:, None]
        ctc_sum += float(F.ctc_loss(lp, target[None], [f], [len(target)], blank=0, reduction="sum"))
    want = (cfg.alpha * kl_sum + (1 - cfg.alpha) * ctc_sum) / n
    assert abs(float(got) - want) <= 1e-5 * want
    assert float(parts["loss_kd"]) == pytest.approx(kl_sum / n, rel=1e-5)
    assert float(parts["loss_ctc"]) == pytest.approx(ctc_sum / n, rel=1e-5)
    assert float(own) == pytest.approx(ctc_sum, rel=1e-5)  # the same CTC loss as the model's, unnormalised
    # padded frames do not count
    noisy = s_logits.clone()
    for b in range(labels.shape[0]):
        noisy[b, int(frames[b]):] = torch.randn_like(noisy[b, int(frames[b]):]) * 10
    again = kd(type("Out", (), {"logits": noisy})(), labels, teacher_outputs=TeacherOutputs(logits=t_logits),
               attention_mask=batch["attention_mask"])
    assert float(again) == pytest.approx(float(got), rel=1e-6)
    # evaluation (no teacher): the CTC loss alone; num_items_in_batch is the denominator when given
    ev, ev_parts = kd(out, labels, attention_mask=batch["attention_mask"], return_parts=True)
    assert set(ev_parts) == {"loss_ctc"} and float(ev) == pytest.approx(ctc_sum / n, rel=1e-5)
    assert float(kd(out, labels, 2 * n, attention_mask=batch["attention_mask"])) == pytest.approx(ctc_sum / (2 * n),
                                                                                                rel=1e-5)


# ------------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_training_logs_finite_kd_and_ctc_parts(kind, tokenizer, train_rows, tmp_path):
    # HuBERT (no attention mask: every frame counts) also distils hidden states: student blocks 1, 2 -> teacher 2, 4
    extra = {"hidden_weight": 1.0, "layer_map": "1:2,2:4"} if kind == "hubert" else {}
    trainer = _trainer(kind, tokenizer, train_rows, tmp_path, bs=4, max_steps=3, **extra)
    assert trainer.distillation_loss.ctc
    cap = GradCapture()
    trainer.add_callback(cap)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    steps = [l for l in cap.logs if "loss" in l]
    assert len(steps) == 3
    wanted = {"loss_kd", "loss_ctc"} | ({"loss_hidden"} if kind == "hubert" else set())
    for log in steps:
        assert wanted <= set(log), log
        assert all(math.isfinite(log[k]) for k in wanted | {"loss"}) and log["loss_ctc"] > 0 and log["loss_kd"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    # evaluation: the student's CTC loss, no teacher
    metrics = trainer.evaluate(eval_dataset=train_rows.select(range(4)))
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0


def test_gradient_accumulation_2x2_equals_1x4(tokenizer, train_rows, tmp_path):
    """The `num_items_in_batch` trap: per-micro-batch means would weight the clips of a 2 x 2 run differently from one
    batch of 4; items counted over the whole accumulated batch give the same gradients."""
    caps = []
    for bs, ga in ((2, 2), (4, 1)):
        trainer = _trainer("wav2vec2", tokenizer, train_rows, tmp_path, bs=bs, ga=ga, hidden_weight=0.5,
                           layer_map="1:2,2:4")
        cap = GradCapture()
        trainer.add_callback(cap)
        trainer.train()
        caps.append(cap)
    a, b = caps[0].grads, caps[1].grads
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        scale = b[name].abs().max().item()
        assert (a[name] - b[name]).abs().max().item() <= 1e-5 * scale + 1e-7, name
    la, lb = ([l for l in c.logs if "loss" in l][0] for c in caps)
    for key in ("loss", "loss_kd", "loss_ctc", "loss_hidden"):
        assert la[key] == pytest.approx(lb[key], rel=1e-4, abs=1e-4), key

    # The same loss as `Trainer(compute_loss_func=...)` on an unmodified Trainer (one mechanism), 2 x 2 as well; its
    # evaluation is the CTC loss over the real frames (the attach hook keeps the attention mask for it).
    teacher = teacher_for("wav2vec2", tokenizer)
    student = init_student_from_teacher(teacher, layers=[0, 3])
    kd = DistillationLoss(DistillationConfig(alpha=0.6, temperature=2.0, hidden_weight=0.5, layer_map="1:2,2:4"),
                          student.config, teacher).attach(student)
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_steps=1, max_grad_norm=0.0, report_to="none",
                             save_strategy="no", seed=5, use_cpu=True, learning_rate=1e-3, dataloader_num_workers=0)
    cap = GradCapture()
    plain = Trainer(model=student, args=args, train_dataset=train_rows, data_collator=collator_for("wav2vec2"),
                    compute_loss_func=kd, callbacks=[DistillationCallback(kd), cap])
    plain.train()
    assert cap.grads.keys() == b.keys()
    for name in b:
        scale = b[name].abs().max().item()
        assert (cap.grads[name] - b[name]).abs().max().item() <= 1e-5 * scale + 1e-7, name
    batch = collator_for("wav2vec2")([train_rows[i] for i in range(4)])
    labels = batch.pop("labels")
    with torch.no_grad():
        want = float(student.eval()(**batch, labels=labels).loss) / int(labels.ne(-100).sum())
    assert plain.evaluate(eval_dataset=train_rows.select(range(4)))["eval_loss"] == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------- save and reload


def test_trained_student_reloads_in_a_fresh_process(tokenizer, train_rows, tmp_path):
    trainer = _trainer("hubert", tokenizer, train_rows, tmp_path, bs=4, max_steps=2)
    trainer.train()
    student = trainer.model.eval()
    out = tmp_path / "student"
    student.save_pretrained(out)
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and saved["architectures"] == ["HubertForCTC"]
    values = collator_for("hubert")([train_rows[i] for i in (1, 5)])["input_values"]
    np.save(tmp_path / "values.npy", values.numpy())
    with torch.no_grad():
        here = student(input_values=values).logits
    code = (
        "import sys, numpy as np, torch\n"
        "from transformers import AutoModelForCTC\n"
        "torch.set_num_threads(1)\n"
        "m = AutoModelForCTC.from_pretrained(sys.argv[1]).eval()\n"
        "x = torch.from_numpy(np.load(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    np.save(sys.argv[3], m(input_values=x).logits.numpy())\n"
        "print(type(m).__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "values.npy"), str(tmp_path / "l.npy")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "HubertForCTC"
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "l.npy")), here)
    # and the reloaded config alone tells a CTC model (architectures), as a teacher cache would need
    from transformers import AutoConfig

    assert is_ctc(AutoConfig.from_pretrained(out))


# ------------------------------------------------------------------------------------------------------- errors


def test_vocabulary_mismatch_is_a_user_error_before_training(tokenizer, train_rows, tmp_path):
    teacher = teacher_for("wav2vec2", tokenizer)
    # a student with one character more
    torch.manual_seed(1)
    other = Wav2Vec2ForCTC(_config(Wav2Vec2Config, len(tokenizer) + 1))
    args = DistillationArguments(output_dir=str(tmp_path / "bad"), max_steps=1, report_to="none", use_cpu=True)
    with pytest.raises(UserInputError, match=r"student vocabulary: vocab_size is \d+ but the teacher's is \d+"):
        DistillationTrainer(model=other, args=args, teacher_model=teacher, train_dataset=train_rows,
                            data_collator=collator_for("wav2vec2"))
    # another blank
    blank = Wav2Vec2ForCTC(_config(Wav2Vec2Config, len(tokenizer), **{}))
    blank.config.pad_token_id = 4
    with pytest.raises(UserInputError, match=r"pad_token_id is 4 but the teacher's is 0"):
        DistillationLoss(DistillationConfig(), blank.config, teacher)
    # the same size, other characters at the ids: told by the tokenizers
    vocab = tokenizer.get_vocab()
    swapped = dict(vocab, **{CHARS[0]: vocab[CHARS[1]], CHARS[1]: vocab[CHARS[0]]})
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    other_tok = Wav2Vec2CTCTokenizer(str(tmp_path / "swapped.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    student = init_student_from_teacher(teacher, layers=[0, 3])
    with pytest.raises(UserInputError, match="student tokenizer: it maps characters to other ids"):
        DistillationLoss(DistillationConfig(), student.config, teacher, teacher_tokenizer=tokenizer,
                         student_tokenizer=other_tok)
    DistillationLoss(DistillationConfig(), student.config, teacher, teacher_tokenizer=tokenizer,
                     student_tokenizer=tokenizer)  # the same tokenizer: fine
    # a CTC teacher and a classifier student
    torch.manual_seed(2)
    classifier = Wav2Vec2ForSequenceClassification(_config(Wav2Vec2Config, len(tokenizer), num_labels=2))
    with pytest.raises(UserInputError, match="is not a CTC model but the teacher is"):
        DistillationTrainer(model=classifier, args=args, teacher_model=teacher, train_dataset=train_rows,
                            data_collator=collator_for("wav2vec2"))
    assert not os.path.exists(tmp_path / "bad" / "checkpoint-1")
