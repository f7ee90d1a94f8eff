"""Quantization-aware training (hfcompress/qat): the ternary / binary / int8 row quantizers and their straight-through
gradients, fake-quantized layers in a plain Trainer, packed checkpoints that reload in a fresh process with the
logits of the trained model, refused bad input (quantized sources, KD without a teacher, packed files that disagree
with their config), and `hfcompress qat` end to end on tiny local assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    ROOT,
    check_publishable_card,
    make_dataset,
    make_texts,
    make_tokenizer,
    save_tiny_assets,
    tiny_bert,
)
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from hfcompress.errors import UserInputError
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.qat import (
    QAT_KEY,
    QAT_WEIGHTS_NAME,
    QATCallback,
    QATConfig,
    QATLinear,
    apply_qat,
    dequantize,
    fake_quantize_weight,
    load_qat,
    quantize_rows,
    save_qat,
    save_qat_dense,
)
from hfcompress.registry import StageArgs, StageOrderError, get_method


def test_ternary_binary_and_int8_rows():
    w = torch.tensor([[0.9, -0.05, 0.3, -0.6], [0.0, 0.0, 0.0, 0.0]])
    codes, scales = quantize_rows(w, 2)
    # row 0: delta = 0.7 * mean|w| = 0.3325: 0.9, -0.6 kept (a = 0.75), 0.3 and -0.05 become 0
    assert torch.equal(codes[0] - 1, torch.tensor([1, 0, 0, -1]))
    assert torch.allclose(scales, torch.tensor([0.75, 0.0]))
    assert torch.allclose(dequantize(codes, scales, 2)[0], torch.tensor([0.75, 0.0, 0.0, -0.75]))
    codes, scales = quantize_rows(w, 1)
    assert torch.allclose(dequantize(codes, scales, 1)[0], torch.tensor([1, -1, 1, -1]) * 0.4625)
    codes, scales = quantize_rows(w, 8)
    assert torch.allclose(dequantize(codes, scales, 8), w, atol=0.9 / 127 / 2 + 1e-7)
    assert torch.equal(dequantize(codes, scales, 8)[1], torch.zeros(4))
    # straight-through: the gradient reaches the float weights unchanged
    p = torch.randn(3, 5, requires_grad=True)
    x = torch.randn(5)
    (fake_quantize_weight(p, 2) @ x).sum().backward()
    assert torch.allclose(p.grad, x.expand(3, 5))


def test_qat_layers_train_in_a_plain_trainer(tmp_path, tokenizer):
    model = tiny_bert()
    data = make_dataset().map(lambda b: tokenizer(b["text"], truncation=True), batched=True).remove_columns("text")
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    args = TrainingArguments(str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=16, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer,
                      callbacks=[QATCallback(qat_weight_bits=2)])
    trainer.train()
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, QATLinear) and query.weight_bits == 2
    assert not torch.equal(query.weight, before)  # the float weights learned through the quantizer
    assert type(model.classifier) is torch.nn.Linear  # the task head stays float
    assert model.config.to_dict()[QAT_KEY]["embedding_bits"] == 2


_FRESH = r"""
import sys, torch
from hfcompress.loading import load_model
from conftest import make_tokenizer, make_texts
torch.set_num_threads(int(sys.argv[1]))
enc = make_tokenizer()(make_texts(6, 2)[0], padding=True, return_tensors="pt")
for folder in sys.argv[3:]:
    with torch.no_grad():
        torch.save(load_model(folder)(**enc).logits, folder + ".logits.pt")
"""


def test_packed_checkpoints_reload_in_a_fresh_process_with_the_same_logits(tmp_path):
    tok = make_tokenizer()
    enc = tok(make_texts(6, 2)[0], padding=True, return_tensors="pt")
    expected, folders = {}, []
    for bits in (2, 1, 8):
        model = tiny_bert(seed=bits, vocab=64)
        apply_qat(model, QATConfig(qat_weight_bits=bits))
        model.eval()
        folder = str(tmp_path / f"w{bits}")
        save_qat(model, folder, tok)
        save_qat_dense(model, str(tmp_path / f"w{bits}-dense"), tok)
        assert checkpoint_format(folder) == "qat"
        with torch.no_grad():
            expected[folder] = model(**enc).logits
        folders.append(folder)
        packed = os.path.getsize(os.path.join(folder, QAT_WEIGHTS_NAME))
        dense = os.path.getsize(tmp_path / f"w{bits}-dense" / "model.safetensors")
        assert packed < dense / (2.5 if bits < 8 else 2)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    res = subprocess.run([sys.executable, str(script), str(torch.get_num_threads()), "-", *folders], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for folder in folders:
        # same weights, same ops; only float summation order may differ between processes (CPU kernels choose their
        # vector path by memory alignment), so equal to float rounding, not bit for bit
        torch.testing.assert_close(torch.load(folder + ".logits.pt"), expected[folder], rtol=0, atol=1e-6,
                                   msg=folder)
    # the dense export holds the quantized weights for any tool (activations float there)
    dense = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "w2-dense"))
    assert torch.unique(dense.bert.encoder.layer[0].output.dense.weight[0]).numel() <= 3


def test_packed_widths_that_disagree_with_the_config_are_refused(tmp_path):
    model = tiny_bert()
    apply_qat(model, QATConfig(qat_weight_bits=2))
    save_qat(model, str(tmp_path / "m"))
    assert isinstance(load_qat(str(tmp_path / "m")).bert.pooler.dense, QATLinear)
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[QAT_KEY]["modules"]["bert.pooler.dense"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UserInputError, match=r"bert.pooler.dense.weight: stored with 2-bit codes, the config says "
                                             r"1-bit"):
        load_qat(str(tmp_path / "m"))


@pytest.mark.parametrize("kwargs, message", [
    ({"qat_weight_bits": 4}, "qat_weight_bits must be one of 1, 2, 7, 8, got 4"),
    ({"qat_activation_bits": 1}, "qat_activation_bits must be 0"),
    ({"qat_modules": ["nothing_here"]}, "matches no nn.Linear"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        apply_qat(tiny_bert(), QATConfig(**kwargs))


def test_an_already_quantized_model_is_refused():
    model = tiny_bert()
    model.config.hfcompress_quantization = {"method": "dynamic_int8"}
    with pytest.raises(UserInputError, match="already quantized: hfcompress torch int8"):
        apply_qat(model, QATConfig(qat_weight_bits=8))


def test_a_qat_checkpoint_is_not_quantized_again():
    """`compress --quantization ...` on a QAT folder (packed codes, not float weights) is refused before loading."""
    from hfcompress.quantize.config import QuantizationConfig
    from hfcompress.run.quantize import CompressArguments, check_plan

    with pytest.raises(UserInputError, match=r"already quantized \(qat checkpoint\)"):
        check_plan("qat", QuantizationConfig(quantization="onnx_int8"), CompressArguments())


def test_recipe_order():
    method = get_method("qat")
    assert method.next_shape("structured", StageArgs()) == "qat"
    for shape in ("quantized", "sparse", "shared"):
        with pytest.raises(StageOrderError):
            method.next_shape(shape, StageArgs())
    line, tags = method.describe({"qat_weight_bits": 2, "qat_activation_bits": 8, "qat_embedding_bits": 2,
                                  "layers": 9, "qat_distill": True})
    assert "ternary {-a, 0, +a} weights (2-bit" in line and "with distillation" in line and "ternary" in tags


def _cmd(tmp_path, teacher_dir, data_file, out, *flags, measure=False):
    return [sys.executable, "-m", "hfcompress", "qat", "--teacher_model", teacher_dir, "--dataset", data_file,
            "--output_dir", str(tmp_path / out), "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no",
            "--use_cpu", "--learning_rate", "1e-3", "--dataloader_num_workers", "0",
            *(["--latency_rounds", "1", "--no_measure_memory"] if measure else ["--no_measure"]), *flags]


def test_qat_command_end_to_end_and_its_bad_input(tmp_path):
    teacher_dir, data_file = save_tiny_assets(tmp_path / "assets")
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    res = subprocess.run(_cmd(tmp_path, teacher_dir, data_file, "out", measure=True), env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "out"
    record = json.loads((out / "qat_summary.json").read_text())
    entry = record["methods"]["qat"]
    assert entry["qat_weight_bits"] == 2 and entry["scheme"] == "ternary" and entry["layers"] > 0
    assert record["methods"]["distillation"]["hidden_weight"] == 1.0  # logits + hidden states (TernaryBERT)
    assert checkpoint_format(str(out / "model")) == "qat"
    model = load_model(str(out / "model"))
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, QATLinear)
    weights = model.bert.encoder.layer[0].intermediate.dense.weight
    assert all(torch.unique(row).numel() <= 3 for row in weights)
    check_publishable_card(out / "model", run_dir=tmp_path)  # measured against the teacher; its code runs
    # bad input, one clear error each before any work: KD without a teacher; QAT of a quantized model
    from hfcompress.run.scripts import command_main

    with pytest.raises(UserInputError, match="needs the full-precision model as --teacher_model"):
        command_main("qat")(_cmd(tmp_path, "", data_file, "bad1")[4:])
    with pytest.raises(UserInputError, match=r"is a quantized checkpoint \(qat\)"):
        command_main("qat")(_cmd(tmp_path, str(out / "model"), data_file, "bad2")[4:])
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2" / "teacher_cache").exists()


def test_a_resumed_plain_trainer_run_ends_where_the_uninterrupted_one_does(tmp_path, tokenizer):
    """QATCallback on a plain Trainer: a run resumed from its checkpoint ends with the weights and the learned
    activation ranges of the uninterrupted run (the ranges are buffers of the checkpoint: they must not restart)."""
    from conftest import whole_and_resumed

    from hfcompress.qat.modules import RANGE_BUFFER

    whole, resumed = whole_and_resumed(tmp_path, tokenizer, lambda: QATCallback(qat_weight_bits=8))
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    ranges = {n: b for n, b in whole.named_buffers() if n.endswith(RANGE_BUFFER)}
    assert ranges and all(float(r) > 0 for r in ranges.values())
    again = dict(resumed.named_buffers())
    for name, r in ranges.items():
        assert torch.allclose(r, again[name], atol=1e-6), name
