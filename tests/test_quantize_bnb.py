"""bitsandbytes 8-bit / 4-bit through hfcompress.quantize.bnb, on CPU with tiny random models.

What is checked:
  * the task head stays full precision (module type and dtype) for BERT, DistilBERT, wav2vec2 and Whisper;
  * logits stay close to fp32 (tolerances below) but are not identical (the layers really are quantized);
  * saving is exact whether or not a forward ran first (bitsandbytes repacks 4-bit weights for its CPU kernel on the
    first eval forward, and its own save then wrote wrong block scales), also for a reloaded checkpoint saved again,
    and in a fresh Python process;
  * refusals: bad bit width, two bit widths, a checkpoint quantized already, a skip pattern matching nothing.

4-bit tests use hidden sizes >= 64 (bitsandbytes' 4-bit block size). The fp32 fixture scales each input column of
every matrix by 0.2 ... 3, so the 4-bit block scales differ along a row: a save that reorders them (the bug this
guards against) then moves the logits by ~0.1 instead of being invisible.

Tolerances: on these models, max |logit - fp32 logit| measured 0.003-0.004 for 8-bit (int8 rows, fp16 activations)
and 0.015-0.021 for 4-bit (16 levels per 64-weight block, bf16 activations in the CPU kernel), with logits of size
~0.5-2. The bounds are about 5x that: 0.02 (8-bit) and 0.1 (4-bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import tiny_bert
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hfcompress.errors import UserInputError

bnb = pytest.importorskip("bitsandbytes")

from hfcompress.quantize.bnb import (  # noqa: E402
    bnb_config,
    load_quantized,
    quantized_size_mb,
    reload_quantized,
    save_quantized,
)

TOL = {8: 0.02, 4: 0.1}
IDS = torch.randint(5, 60, (3, 11), generator=torch.Generator().manual_seed(0))


def _skewed_bert(hidden=128):
    model = tiny_bert(num_layers=2, hidden=hidden, heads=4, seed=3).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p.mul_(torch.linspace(0.2, 3.0, p.shape[1]))
    return model


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bnb") / "fp32"
    model = _skewed_bert()
    model.save_pretrained(path)
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
    return str(path), ref


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _meta(model_fn):
    with torch.device("meta"):
        return model_fn()


# ---------------------------------------------------------------------------------------------------------- config


def test_default_skip_is_the_task_head_of_each_family():
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        Wav2Vec2Config,
        Wav2Vec2ForSequenceClassification,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    models = {
        "bert": (lambda: tiny_bert(hidden=64), ["classifier"]),
        "distilbert": (lambda: DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=64, dim=64, n_layers=1, n_heads=4, hidden_dim=128)), ["pre_classifier", "classifier"]),
        "wav2vec2": (lambda: Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**_W2V)), ["projector", "classifier"]),
        "whisper": (lambda: WhisperForConditionalGeneration(WhisperConfig(**_WHISPER)), ["proj_out"]),
    }
    for family, (make, heads) in models.items():
        cfg = bnb_config(8, model=_meta(make))
        assert cfg.load_in_8bit and not cfg.load_in_4bit
        assert sorted(cfg.llm_int8_skip_modules) == sorted(heads), family


def test_4bit_config_also_skips_layers_the_cpu_kernel_cannot_run():
    # hidden 32: every encoder matrix has in_features % 64 != 0 -> all kept full precision, named one by one
    cfg = bnb_config(4, model=_meta(lambda: tiny_bert(hidden=32)))
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert "classifier" in cfg.llm_int8_skip_modules
    assert "bert.encoder.layer.0.attention.self.query" in cfg.llm_int8_skip_modules
    # hidden 64: only the 2-label head (out_features 2 % 32 != 0) would fail, and it is skipped anyway
    cfg = bnb_config(4, "fp4", double_quant=False, skip_modules=[], model=_meta(lambda: tiny_bert(hidden=64)))
    assert cfg.llm_int8_skip_modules == ["classifier"] and cfg.bnb_4bit_quant_type == "fp4"


def test_config_errors():
    model = _meta(lambda: tiny_bert(hidden=64))
    for bits in (3, 16, True, "four", None):
        with pytest.raises(UserInputError, match="bits must be 4 or 8"):
            bnb_config(bits, model=model)
    with pytest.raises(UserInputError, match="quant_type"):
        bnb_config(4, "int4", model=model)
    with pytest.raises(UserInputError, match="needs model="):
        bnb_config(8)
    with pytest.raises(UserInputError) as err:
        bnb_config(8, skip_modules=["classifer"], model=model)
    msg = str(err.value)
    assert "classifer" in msg and "bert, dropout, classifier" in msg and "query" in msg and "dense" in msg
    # patterns use transformers' rule: a prefix to a module boundary or a suffix
    assert bnb_config(8, skip_modules=["bert.pooler", "value"], model=model).llm_int8_skip_modules == [
        "bert.pooler", "value"]
    assert bnb_config(8, skip_modules="classifier").llm_int8_skip_modules == ["classifier"]


# ----------------------------------------------------------------------------------------------------- load + run


def test_8bit_close_to_fp32_head_full_precision(fp32_dir):
    path, ref = fp32_dir
    model = load_quantized(path, 8)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, bnb.nn.Linear8bitLt)
    assert isinstance(model.bert.pooler.dense, bnb.nn.Linear8bitLt)
    assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32
    out = _logits(model)
    assert 0 < (out - ref).abs().max() < TOL[8]


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", True), ("fp4", False)])
def test_4bit_close_to_fp32_head_full_precision(fp32_dir, quant_type, double_quant):
    path, ref = fp32_dir
    model = load_quantized(path, 4, quant_type=quant_type, double_quant=double_quant)
    layer = model.bert.encoder.layer[1].output.dense
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == quant_type and layer.weight.quant_state.nested == double_quant
    assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32
    out = _logits(model)
    assert 0 < (out - ref).abs().max() < TOL[4]


# ------------------------------------------------------------------------------------------------------------ save


def _file_tensors(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("bits,double_quant", [(4, False), (4, True), (8, True)])
def test_save_after_forward_is_exact(fp32_dir, tmp_path, bits, double_quant):
    path, _ = fp32_dir
    # reference: a save before any forward
    untouched = load_quantized(path, bits, double_quant=double_quant)
    save_quantized(untouched, str(tmp_path / "before"))
    model = load_quantized(path, bits, double_quant=double_quant)
    before = _logits(model)  # on an AVX512-BF16 CPU this repacks every 4-bit weight
    save_quantized(model, str(tmp_path / "after"))
    assert torch.equal(_logits(model), before)  # saving did not change the live model
    # the file is what a save before any forward writes, tensor for tensor
    a, b = _file_tensors(tmp_path / "before"), _file_tensors(tmp_path / "after")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "after")
    assert torch.equal(_logits(reloaded.eval()), before)
    assert sorted(os.listdir(tmp_path / "after")) == ["config.json", "model.safetensors"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".hfc-save-")]  # temp folder gone


@pytest.mark.parametrize("bits", [4, 8])
def test_checkpoint_reloaded_by_transformers_saves_again_exactly(fp32_dir, tmp_path, bits):
    """A model from a plain from_pretrained of a saved checkpoint (no hfcompress state copy), run, then saved:
    transformers alone fails here (NotImplementedError reversing the bitsandbytes load conversion), and the 4-bit
    scales were repacked by the forward."""
    path, _ = fp32_dir
    save_quantized(load_quantized(path, bits), str(tmp_path / "first"))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "first").eval()
    before = _logits(model)
    save_quantized(model, str(tmp_path / "second"))
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "second").eval()
    assert torch.equal(_logits(again), before)
    # reload_quantized keeps the state copy: its re-save is the first file exactly
    model = reload_quantized(str(tmp_path / "first"))
    _logits(model)
    save_quantized(model, str(tmp_path / "third"))
    a, b = _file_tensors(tmp_path / "first"), _file_tensors(tmp_path / "third")
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_fresh_process_reloads_same_logits(fp32_dir, tmp_path):
    path, _ = fp32_dir
    model = load_quantized(path, 4)
    before = _logits(model)
    save_quantized(model, str(tmp_path / "q"))
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "ids = torch.tensor(json.loads(sys.argv[2]))\n"
        "with torch.no_grad():\n"
        "    print('LOGITS', json.dumps(m(input_ids=ids).logits.tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "q"), json.dumps(IDS.tolist())],
                         capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("LOGITS "))
    assert torch.equal(torch.tensor(json.loads(line[7:]), dtype=torch.float32), before)


def test_saved_checkpoint_is_smaller(fp32_dir, tmp_path):
    path, _ = fp32_dir
    fp32 = quantized_size_mb(path)
    save_quantized(load_quantized(path, 8), str(tmp_path / "q8"))
    save_quantized(load_quantized(path, 4), str(tmp_path / "q4"))
    q8, q4 = quantized_size_mb(str(tmp_path / "q8")), quantized_size_mb(str(tmp_path / "q4"))
    # 94% of this model's weights are in quantized Linear layers: 8-bit ~0.3x, 4-bit ~0.2x of fp32
    assert q8 < 0.4 * fp32 and q4 < 0.8 * q8, (fp32, q8, q4)


def test_save_replaces_an_earlier_sharded_save(fp32_dir, tmp_path):
    path, _ = fp32_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text("{}")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    save_quantized(load_quantized(path, 8), str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "notes.txt"]


# ------------------------------------------------------------------------------------------------------- refusals


def test_refusals(fp32_dir, tmp_path):
    path, _ = fp32_dir
    with pytest.raises(UserInputError, match="both given"):
        load_quantized(path, 4, load_in_8bit=True)
    with pytest.raises(UserInputError, match="bits= only"):
        load_quantized(path, 8, quantization_config=object())
    with pytest.raises(UserInputError, match="bits must be 4 or 8"):
        load_quantized(path, 2)
    with pytest.raises(UserInputError, match="match no module"):
        load_quantized(path, 8, skip_modules=["classifier", "pooler.densee"])
    save_quantized(load_quantized(path, 8), str(tmp_path / "q8"))
    with pytest.raises(UserInputError, match="already quantized: bitsandbytes 8-bit"):
        load_quantized(str(tmp_path / "q8"), 4)
    # a hfcompress torch int8 checkpoint is refused too
    from hfcompress.quantize.dynamic import quantize_dynamic_int8, save_dynamic_int8

    fp32 = AutoModelForSequenceClassification.from_pretrained(path)
    save_dynamic_int8(quantize_dynamic_int8(fp32), str(tmp_path / "dyn"))
    with pytest.raises(UserInputError, match="already quantized: hfcompress torch_dynamic_int8"):
        load_quantized(str(tmp_path / "dyn"), 8)
    with pytest.raises(UserInputError, match="no bitsandbytes layers"):
        save_quantized(fp32, str(tmp_path / "nope"))
    with pytest.raises(UserInputError, match="not a folder"):
        load_quantized(str(tmp_path / "missing"), 8)
    with pytest.raises(UserInputError, match="no bitsandbytes quantization_config"):
        reload_quantized(path)
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA device"):
            load_quantized(path, 8, device="cuda")


# --------------------------------------------------------------------------------------------------------- speech

_W2V = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, conv_dim=(64, 64),
            conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
            classifier_proj_size=64, num_labels=3)
_WHISPER = dict(vocab_size=96, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=8,
                max_source_positions=16, max_target_positions=16, pad_token_id=0, decoder_start_token_id=1,
                eos_token_id=2, bos_token_id=1)


def test_wav2vec2_classifier_4bit(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**_W2V)).eval()
    model.save_pretrained(tmp_path / "fp32")
    audio = torch.randn(2, 800, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_values=audio).logits
    q = load_quantized(str(tmp_path / "fp32"), 4, model_class=Wav2Vec2ForSequenceClassification)
    assert type(q.projector) is nn.Linear and type(q.classifier) is nn.Linear
    assert isinstance(q.wav2vec2.encoder.layers[0].feed_forward.intermediate_dense, bnb.nn.Linear4bit)
    with torch.no_grad():
        out = q(input_values=audio).logits
    assert 0 < (out - ref).abs().max() < TOL[4]
    save_quantized(q, str(tmp_path / "q"))
    again = Wav2Vec2ForSequenceClassification.from_pretrained(tmp_path / "q").eval()
    with torch.no_grad():
        assert torch.equal(again(input_values=audio).logits, out)


@pytest.mark.parametrize("bits", [8, 4])
def test_whisper_quantized_keeps_proj_out(tmp_path, bits):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**_WHISPER)).eval()
    model.save_pretrained(tmp_path / "fp32")
    inputs = {"input_features": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0)),
              "decoder_input_ids": torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        ref = model(**inputs).logits
    q = load_quantized(str(tmp_path / "fp32"), bits, model_class=WhisperForConditionalGeneration)
    assert type(q.proj_out) is nn.Linear and q.proj_out.weight.dtype == torch.float32
    kind = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    assert isinstance(q.model.decoder.layers[0].encoder_attn.q_proj, kind)
    with torch.no_grad():
        out = q(**inputs).logits
    assert 0 < (out - ref).abs().max() < TOL[bits]
    save_quantized(q, str(tmp_path / "q"))
    again = WhisperForConditionalGeneration.from_pretrained(tmp_path / "q").eval()
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, out)
