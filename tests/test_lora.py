"""LoRA through peft: the head is trained and saved with the adapter, the adapter reloads onto a fresh base in a fresh
object, merging gives a plain model with the same outputs, names that match nothing are one clear error, and
`scripts/distill.py --lora_r` writes adapter, base and merged model from a real file dataset (also onto a structurally
pruned student)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_texts, make_tokenizer, save_tiny_assets, tiny_bert
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

from hfcompress.errors import UserInputError
from hfcompress.lora import LoraArguments, apply_lora, load_lora, merge_lora
from hfcompress.prune import PruningConfig, StructuredPruner, save_structured
from hfcompress.run.lora import lora_model


def _batch(n=6, seq=8, seed=1):
    ids = torch.randint(5, 18, (n, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _train(model, steps=5):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch, labels = _batch(), torch.tensor([0, 1, 0, 1, 1, 0])
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_head_trains_saves_with_the_adapter_and_reloads_and_merges(tmp_path):
    model = tiny_bert(num_layers=2)
    base_dir = str(tmp_path / "base")
    model.save_pretrained(base_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = apply_lora(model, LoraArguments(lora_r=4, lora_alpha=8), base_dir=base_dir)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    # every attention and FFN projection of both blocks got LoRA factors
    assert sum(1 for n in trainable if "lora_A" in n) == 2 * 6
    _train(peft_model)
    with torch.no_grad():
        trained = peft_model(**_batch(seed=2)).logits
    # the frozen base did not move
    base_now = dict(peft_model.get_base_model().named_parameters())
    assert torch.equal(base_now["bert.encoder.layer.0.attention.self.query.base_layer.weight"],
                       before["bert.encoder.layer.0.attention.self.query.weight"])

    adapter_dir = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter_dir)
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as fh:
        assert any("classifier" in k for k in fh.keys())  # the head travels with the adapter
    with open(os.path.join(adapter_dir, "adapter_config.json")) as fh:
        assert json.load(fh)["base_model_name_or_path"] == os.path.abspath(base_dir)

    reloaded = load_lora(adapter_dir)  # base named by the adapter, loaded fresh from disk
    with torch.no_grad():
        assert torch.allclose(reloaded(**_batch(seed=2)).logits, trained, atol=1e-6)
    merged = merge_lora(reloaded)
    assert type(merged).__name__ == "BertForSequenceClassification"
    merged.save_pretrained(str(tmp_path / "merged"))
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.allclose(plain(**_batch(seed=2)).logits, trained, atol=1e-5)
    # and the head is not the fresh base's head: without the adapter the outputs differ
    with torch.no_grad():
        base_only = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()(**_batch(seed=2)).logits
    assert not torch.allclose(base_only, trained, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"lora_r": 4, "lora_target_modules": "query,qkv_proj"}, "'qkv_proj' match no linear module"),
    ({"lora_r": 4, "lora_modules_to_save": "score"}, "'score' match no module"),
])
def test_names_that_match_nothing_are_named(kwargs, message):
    with pytest.raises(UserInputError, match=message) as info:
        apply_lora(tiny_bert(), LoraArguments(**kwargs))
    assert "attention.self.query" in str(info.value) or "classifier" in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"lora_r": -1}, "--lora_r must be"),
    ({"lora_r": 4, "lora_quantization": "4bit+8bit"}, "--lora_quantization must be one of"),
    ({"lora_quantization": "4bit"}, "give --lora_r too"),
    ({"lora_r": 4, "lora_dropout": 1.5}, "--lora_dropout"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        LoraArguments(**kwargs)


def test_an_adapter_is_not_wrapped_twice():
    peft_model = apply_lora(tiny_bert(), LoraArguments(lora_r=2))
    with pytest.raises(UserInputError, match="already carries a peft adapter"):
        apply_lora(peft_model, LoraArguments(lora_r=2))


def _structured_student(path):
    """A tiny fine-tuned-looking BERT with half its heads and neurons cut out, saved as users get it from prune.py."""
    model = tiny_bert(num_layers=2, seed=3)
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", method="magnitude", target_sparsity=0.5,
                                                   pruning_start=0, pruning_end=1))
    pruner.set_total_steps(1)
    pruner.step(1)
    pruner.fold()
    save_structured(model, path, tokenizer=make_tokenizer())
    return model


@pytest.mark.parametrize("structured", [False, True])
def test_distill_script_with_lora(tmp_path, structured):
    teacher_dir, data_file = save_tiny_assets(tmp_path / "assets")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--teacher_model", teacher_dir,
           "--dataset", data_file, "--output_dir", str(out), "--max_steps", "6", "--eval_strategy", "no",
           "--save_strategy", "no", "--use_cpu", "--learning_rate", "5e-3", "--lora_r", "4",
           "--lora_target_modules", "query,value", "--dataloader_num_workers", "0", "--latency_rounds", "1",
           "--no_measure_memory"]
    if structured:
        _structured_student(str(tmp_path / "pruned"))
        cmd += ["--student_model", str(tmp_path / "pruned"), "--hidden_weight", "0", "--relation_weight", "0"]
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    with open(out / "distill_summary.json") as fh:
        record = json.load(fh)
    lora = record["methods"]["lora"]
    assert lora["lora_r"] == 4 and lora["trainable_parameters"] < lora["parameters"]
    assert lora["merged_max_logit_difference"] < 1e-4
    for name in ("adapter", "base_model", "model"):
        assert os.path.exists(out / name / "config.json" if name != "adapter" else out / name / "adapter_config.json")
    if structured:
        from hfcompress.prune import load_structured

        merged = load_structured(str(out / "model"))
        base = load_structured(str(out / "base_model"))
        assert merged.config.hfcompress_structure == base.config.hfcompress_structure
    else:
        merged = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
        base = AutoModelForSequenceClassification.from_pretrained(str(out / "base_model"))
    adapter = load_lora(str(out / "adapter"), base=base)
    tok = make_tokenizer()
    texts, _ = make_texts(8, 3)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, adapter(**enc).logits, atol=1e-5)


@pytest.mark.parametrize("bits, hidden", [("8bit", 32), ("4bit", 64)])
def test_qlora_trains_on_a_quantized_base_and_merges_into_the_full_precision_one(tmp_path, bits, hidden):
    model = tiny_bert(num_layers=2, hidden=hidden)
    base_dir = str(tmp_path / "base")
    model.save_pretrained(base_dir)
    peft_model = lora_model(model, LoraArguments(lora_r=4, lora_alpha=8, lora_quantization=bits), base_dir)
    base_types = {type(m).__name__ for m in peft_model.get_base_model().modules()}
    assert ("Linear8bitLt" if bits == "8bit" else "Linear4bit") in base_types
    head = peft_model.get_base_model().classifier
    assert not any(t in type(head).__name__ for t in ("8bit", "4bit"))  # the head stays full precision
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    _train(peft_model, steps=3)
    moved = [n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in moved) and any("classifier" in n for n in moved)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    merged = load_lora(str(tmp_path / "adapter"), merge=True)  # onto the full-precision base named in the adapter
    assert type(merged).__name__ == "BertForSequenceClassification"
    with torch.no_grad():
        trained = peft_model(**_batch(seed=2)).logits
        plain = merged(**_batch(seed=2)).logits
    # the merged model differs from the trained one only by the base's quantization error
    assert (trained - plain).abs().max() < 0.5


def test_qlora_settings_on_a_full_precision_model_are_refused():
    with pytest.raises(UserInputError, match="the model is not quantized"):
        apply_lora(tiny_bert(), LoraArguments(lora_r=4, lora_quantization="8bit"))
