"""PyTorch dynamic int8 (hfcompress.quantize.dynamic): quantization, its safetensors checkpoint format, refusals.

Tolerance: on these tiny random models dynamic int8 moved the logits by at most 0.0008 (per-tensor) / 0.0005
(per-channel), with logits of size ~0.1-1; the bound 0.01 is more than 10x that and still far below the distance
between the logits of two different random models. Reloads must be bit-identical: the saved int8 values and scales
are exactly what the packed weights hold.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
import torch.ao.nn.quantized as nnq  # noqa: E402
import torch.ao.nn.quantized.dynamic as nnqd  # noqa: E402
import torch.nn as nn
from conftest import tiny_bert
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hfcompress.errors import UserInputError
from hfcompress.quantize.dynamic import (
    CONFIG_KEY,
    WEIGHTS_NAME,
    dynamic_int8_size_mb,
    load_dynamic_int8,
    quantize_dynamic_int8,
    save_dynamic_int8,
)

TOL = 0.01
IDS = torch.randint(5, 60, (3, 11), generator=torch.Generator().manual_seed(0))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def model():
    return tiny_bert(num_layers=2, hidden=64, heads=4, seed=2).eval()


def test_linears_int8_head_fp32_original_untouched(model):
    ref = _logits(model)
    q = quantize_dynamic_int8(model)
    assert q is not model and type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear
    assert isinstance(q.bert.encoder.layer[0].attention.self.query, nnqd.Linear)
    assert isinstance(q.bert.pooler.dense, nnqd.Linear)
    assert type(q.classifier) is nn.Linear and q.classifier.weight.dtype == torch.float32
    assert type(q.bert.embeddings.word_embeddings) is nn.Embedding
    w = q.bert.encoder.layer[0].intermediate.dense.weight()
    assert w.dtype == torch.qint8 and w.qscheme() == torch.per_tensor_affine
    out = _logits(q)
    assert 0 < (out - ref).abs().max() < TOL
    meta = getattr(q.config, CONFIG_KEY)
    assert meta["method"] == "torch_dynamic_int8" and meta["weight_qscheme"] == "per_tensor"
    assert len(meta["modules"]) == 2 * 6 + 1 and "classifier" not in meta["modules"]
    assert not hasattr(model.config, CONFIG_KEY)


def test_per_channel_skip_patterns_and_inplace(model):
    ref = _logits(model)
    q = quantize_dynamic_int8(model, per_channel=True, skip_modules=["bert.pooler", "value"])
    assert q.bert.encoder.layer[1].output.dense.weight().qscheme() == torch.per_channel_affine
    assert type(q.bert.pooler.dense) is nn.Linear and type(q.bert.encoder.layer[0].attention.self.value) is nn.Linear
    # an explicit list replaces the default: the head is quantized here
    assert isinstance(q.classifier, nnqd.Linear)
    assert 0 < (_logits(q) - ref).abs().max() < TOL
    same = quantize_dynamic_int8(model, skip_modules=[], inplace=True)
    assert same is model and isinstance(model.classifier, nnqd.Linear)


def test_embeddings_option_quantizes_the_token_table(model):
    q = quantize_dynamic_int8(model, embeddings=True)
    emb = q.bert.embeddings.word_embeddings
    assert isinstance(emb, nnq.Embedding) and emb.weight().qscheme() == torch.per_channel_affine_float_qparams
    assert type(q.bert.embeddings.position_embeddings) is nn.Embedding
    assert getattr(q.config, CONFIG_KEY)["embeddings"] == ["bert.embeddings.word_embeddings"]
    assert (_logits(q) - _logits(model)).abs().max() < TOL


@pytest.mark.parametrize("options", [{}, {"per_channel": True}, {"embeddings": True, "per_channel": True}])
def test_save_load_identical_logits(model, tmp_path, options):
    q = quantize_dynamic_int8(model, **options)
    out = _logits(q)
    save_dynamic_int8(q, str(tmp_path / "q"))
    assert sorted(os.listdir(tmp_path / "q")) == ["config.json", WEIGHTS_NAME]
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg[CONFIG_KEY]["method"] == "torch_dynamic_int8"
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    tensors = load_file(tmp_path / "q" / WEIGHTS_NAME)
    name = "bert.encoder.layer.0.attention.self.query"
    assert tensors[f"{name}.weight_int8"].dtype == torch.int8 and tensors[f"{name}.weight_int8"].shape == (64, 64)
    assert tensors[f"{name}.weight_scale"].shape == ((64,) if options.get("per_channel") else ())
    assert f"{name}.bias" in tensors and "classifier.weight" in tensors and f"{name}.weight" not in tensors
    again = load_dynamic_int8(str(tmp_path / "q"))
    assert type(again) is type(q) and not again.training
    assert torch.equal(_logits(again), out)
    assert [type(m) for m in again.modules()] == [type(m) for m in q.modules()]
    assert getattr(again.config, CONFIG_KEY)["modules"] == getattr(q.config, CONFIG_KEY)["modules"]


def test_checkpoint_is_smaller_and_plain_from_pretrained_refuses_it(tmp_path):
    model = tiny_bert(num_layers=2, hidden=128, heads=4, seed=2).eval()
    model.save_pretrained(tmp_path / "fp32")
    save_dynamic_int8(quantize_dynamic_int8(model), str(tmp_path / "q"))
    fp32, q = dynamic_int8_size_mb(str(tmp_path / "fp32")), dynamic_int8_size_mb(str(tmp_path / "q"))
    # 94% of the weights are in quantized Linear layers (int8 = 1/4 of fp32); embeddings and head stay fp32
    assert q < 0.35 * fp32, (fp32, q)
    # no model.safetensors: transformers fails loudly instead of initialising the int8 layers at random
    with pytest.raises(OSError):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")


def test_save_over_a_float_checkpoint_removes_its_weights(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    save_dynamic_int8(quantize_dynamic_int8(model), str(tmp_path / "m"))
    assert "model.safetensors" not in os.listdir(tmp_path / "m")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".hfc-save-")]


def test_refuses_to_quantize_twice_and_bad_input(model, tmp_path):
    q = quantize_dynamic_int8(model)
    with pytest.raises(UserInputError, match="already quantized, hfcompress torch_dynamic_int8"):
        quantize_dynamic_int8(q)
    # the modules alone are enough to refuse (config key removed)
    delattr(q.config, CONFIG_KEY)
    with pytest.raises(UserInputError, match="already quantized, 13 quantized modules"):
        quantize_dynamic_int8(q)
    with pytest.raises(UserInputError, match="not a torch dynamic int8 model"):
        save_dynamic_int8(q, str(tmp_path / "x"))
    with pytest.raises(UserInputError, match="not a torch dynamic int8 model"):
        save_dynamic_int8(model, str(tmp_path / "x"))
    with pytest.raises(UserInputError, match=r"\['clasifier'\] match no module.*Linear layers end in: classifier"):
        quantize_dynamic_int8(model, skip_modules=["clasifier"])
    with pytest.raises(UserInputError, match="not a valid regular expression"):
        quantize_dynamic_int8(model, skip_modules=["bert.("])
    with pytest.raises(UserInputError, match="from float32 weights"):
        quantize_dynamic_int8(tiny_bert(hidden=64).to(torch.bfloat16))
    model.save_pretrained(tmp_path / "fp32")
    with pytest.raises(UserInputError, match="not a torch dynamic int8 checkpoint"):
        load_dynamic_int8(str(tmp_path / "fp32"))


def test_no_torch_ao_deprecation_noise(model, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_dynamic_int8(model, per_channel=True, embeddings=True)
        save_dynamic_int8(q, str(tmp_path / "q"))
        _logits(load_dynamic_int8(str(tmp_path / "q")))
    noisy = [str(w.message)[:80] for w in caught if "deprecated" in str(w.message)]
    assert not noisy, noisy


def test_whisper_tied_head_round_trip(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=96, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=8, max_source_positions=16,
        max_target_positions=16, pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, bos_token_id=1)).eval()
    inputs = {"input_features": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0)),
              "decoder_input_ids": torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        ref = model(**inputs).logits
    # embeddings=True: the decoder's token table is tied to proj_out (the head), so it stays fp32
    q = quantize_dynamic_int8(model, embeddings=True)
    assert type(q.proj_out) is nn.Linear and isinstance(q.model.encoder.layers[0].fc1, nnqd.Linear)
    assert getattr(q.config, CONFIG_KEY)["embeddings"] == []
    with torch.no_grad():
        out = q(**inputs).logits
    assert 0 < (out - ref).abs().max() < 5 * TOL  # measured 0.014: an encoder-decoder chains ~3x more matmuls
    save_dynamic_int8(q, str(tmp_path / "w"))
    assert (tmp_path / "w" / "generation_config.json").exists()
    again = load_dynamic_int8(str(tmp_path / "w"))
    assert type(again) is WhisperForConditionalGeneration
    assert again.proj_out.weight is again.model.decoder.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, out)
