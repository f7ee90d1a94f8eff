"""Speech models through the same pruning and quantization paths as text: Whisper (``WhisperForConditionalGeneration``,
``WhisperForAudioClassification``), wav2vec2 and HuBERT (``...ForCTC``, ``...ForSequenceClassification``), on tiny
randomly initialised configs (no pretrained wav2vec2 / HuBERT weights install offline).

Covered, for each of the six models:
  * structured pruning (`StructuredPruner`, Taylor scores from the model's own loss on ``labels``: seq2seq
    cross-entropy, CTC, classification; global ranking, half the heads and FFN neurons): the masked model and the cut
    model give the same outputs; Whisper's decoder self- and cross-attention and encoder self-attention all lose
    heads; ``WhisperForAudioClassification`` (encoder only) prunes its one stack;
  * `save_structured`, then in FRESH processes: `hfcompress.loading.load_model` and `load_structured`, and, with
    hfcompress made unimportable and the folder moved elsewhere, ``AutoModelForSpeechSeq2Seq`` / ``AutoModelForCTC``
    / ``AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True)``: identical logits, and for
    Whisper identical ``generate`` tokens;
  * bitsandbytes 8-bit and nf4 (`load_quantized` -> `save_quantized`, after a forward) and torch dynamic int8
    (`quantize_dynamic_int8` -> `save_dynamic_int8`), reloaded in the same fresh processes (`load_model`; bnb also by a
    plain ``from_pretrained`` without hfcompress): identical outputs to the model that was saved; the task head
    (``proj_out``, ``lm_head``, ``projector`` + ``classifier``) stays full precision;
  * a pruned Whisper quantized to dynamic int8 reloads at its pruned shape;
  * `load_model` / `load_quantized` pick the speech auto class from ``architectures``; text checkpoints keep
    ``AutoModelForSequenceClassification``.

All reloads run in two subprocesses (one with hfcompress, one without). Hidden size 64: bitsandbytes' CPU 4-bit
kernel needs in_features % 64 == 0, so the nf4 models really hold 4-bit layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import NO_HFCOMPRESS

from hfcompress.prune import PruningConfig, StructuredPruner, is_structured_checkpoint, save_structured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_TOKENS = 6

_WHISPER = dict(vocab_size=96, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=8,
                max_source_positions=16, max_target_positions=24, pad_token_id=0, decoder_start_token_id=1,
                eos_token_id=2, bos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None,
                num_labels=3, classifier_proj_size=32)
_W2V = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(64, 64),
            conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
            classifier_proj_size=64, num_labels=3, vocab_size=12, pad_token_id=0, layerdrop=0.0, mask_time_prob=0.0,
            ctc_zero_infinity=True)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


INPUTS = {
    "input_features": torch.randn(2, 8, 32, generator=_gen(0)),  # Whisper: 8 mel bins x 2 * max_source_positions
    "decoder_input_ids": torch.randint(3, 96, (2, 5), generator=_gen(1)),
    "input_values": torch.randn(2, 1600, generator=_gen(2)),  # wav2vec2 / HuBERT: 0.1 s at 16 kHz -> 98 frames
}


def _models():
    import transformers as tf

    # a new config per model: pruning records the shape in the model's config
    whisper, w2v, hubert = (lambda: tf.WhisperConfig(**_WHISPER)), (lambda: tf.Wav2Vec2Config(**_W2V)), \
        (lambda: tf.HubertConfig(**_W2V))
    seq_labels = torch.randint(3, 96, (2, 7), generator=_gen(3))
    ctc_labels = torch.randint(1, 12, (2, 5), generator=_gen(4))
    cls_labels = torch.tensor([0, 2])
    # name: (build, kind of input, labels for the pruning loss, auto class, task head)
    return {
        "whisper": (lambda: tf.WhisperForConditionalGeneration(whisper()), "seq2seq", seq_labels,
                    "AutoModelForSpeechSeq2Seq", ["proj_out"]),
        "whisper_cls": (lambda: tf.WhisperForAudioClassification(whisper()), "features", cls_labels,
                        "AutoModelForAudioClassification", ["projector", "classifier"]),
        "wav2vec2_ctc": (lambda: tf.Wav2Vec2ForCTC(w2v()), "audio", ctc_labels, "AutoModelForCTC", ["lm_head"]),
        "wav2vec2_cls": (lambda: tf.Wav2Vec2ForSequenceClassification(w2v()), "audio", cls_labels,
                         "AutoModelForAudioClassification", ["projector", "classifier"]),
        "hubert_ctc": (lambda: tf.HubertForCTC(hubert()), "audio", ctc_labels, "AutoModelForCTC", ["lm_head"]),
        "hubert_cls": (lambda: tf.HubertForSequenceClassification(hubert()), "audio", cls_labels,
                       "AutoModelForAudioClassification", ["projector", "classifier"]),
    }


# Run in this process and in the fresh ones alike: what a model computes on the fixed inputs.
RUN = r"""
import torch

def outputs(model, kind, inputs):
    with torch.no_grad():
        if kind == "audio":
            return {"logits": model(input_values=inputs["input_values"]).logits.float()}
        if kind == "features":
            return {"logits": model(input_features=inputs["input_features"]).logits.float()}
        out = {"logits": model(input_features=inputs["input_features"],
                               decoder_input_ids=inputs["decoder_input_ids"]).logits.float()}
        out["tokens"] = model.generate(inputs["input_features"], max_new_tokens=%d, do_sample=False, num_beams=1)
        return out
""" % NEW_TOKENS
exec(RUN)  # defines outputs()

WITH_HFCOMPRESS = RUN + r"""
import json, sys
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.prune import load_structured
cases, inputs = json.load(open(sys.argv[1])), torch.load(sys.argv[2])
result = {}
for name, case in cases.items():
    model = load_model(case["path"])
    result[name] = {"class": type(model).__name__, "format": checkpoint_format(case["path"]),
                    **outputs(model, case["kind"], inputs)}
    if result[name]["format"] == "structured":
        result[name + "/load_structured"] = outputs(load_structured(case["path"]), case["kind"], inputs)
torch.save(result, sys.argv[3])
"""

WITHOUT_HFCOMPRESS = NO_HFCOMPRESS + RUN + r"""
import json
import transformers
cases, inputs = json.load(open(sys.argv[1])), torch.load(sys.argv[2])
result = {}
for name, case in cases.items():
    auto = getattr(transformers, case["auto"])
    model = auto.from_pretrained(case["path"], trust_remote_code=case["remote_code"]).eval()
    result[name] = {"class": type(model).__name__, **outputs(model, case["kind"], inputs)}
torch.save(result, sys.argv[3])
"""


def _fresh(code, cases, tmp_path, tag, cwd):
    (tmp_path / f"{tag}.json").write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{tag}.json"), str(tmp_path / "inputs.pt"),
                          str(tmp_path / f"{tag}.pt")], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(tmp_path / f"{tag}.pt")


def _prune(model, kind, labels):
    """Two steps of Taylor scores from the model's own loss, then half the heads and neurons masked (global)."""
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", target_sparsity=0.5, pruning_start=0,
                                                   pruning_end=1, scope="global", method="taylor"))
    pruner.set_total_steps(2)
    model.train()
    batch = ({"input_values": INPUTS["input_values"]} if kind == "audio"
             else {"input_features": INPUTS["input_features"]})
    for step in (1, 2):
        model(**batch, labels=labels).loss.backward()
        pruner.before_optimizer_step()
        model.zero_grad()
        pruner.step(step)
    return pruner, model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every model pruned, quantized and saved; the reloads of all of them in two fresh processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the fresh processes (OMP_NUM_THREADS=1): the same kernels, bit for bit
    try:
        yield _build(tmp_path_factory.mktemp("speech"))
    finally:
        torch.set_num_threads(threads)


def _build(tmp):
    from hfcompress.quantize import load_quantized, quantize_dynamic_int8, save_dynamic_int8, save_quantized

    torch.save(INPUTS, tmp / "inputs.pt")
    info, expected, ours, theirs = {}, {}, {}, {}
    for name, (make, kind, labels, auto, heads) in _models().items():
        torch.manual_seed(0)
        dense = make().eval()
        dense_dir = str(tmp / name / "fp32")
        dense.save_pretrained(dense_dir)
        rec = info[name] = {"kind": kind, "auto": auto, "heads": heads, "dense_dir": dense_dir,
                            "dense": outputs(dense, kind, INPUTS)}
        # ---- structured pruning
        model = make()
        model.load_state_dict(dense.state_dict())
        pruner, model = _prune(model, kind, labels)
        rec["scores_nonzero"] = all(float(g.score.sum()) > 0 for g in pruner.groups)
        rec["masked"] = outputs(model, kind, INPUTS)["logits"]
        rec["summary"] = pruner.fold()
        rec["stacks"] = [s.layers_path for s in pruner.stacks]
        rec["heads_by_attention"] = {
            f"{s.layers_path}.{a.module}": [getattr(blk.get_submodule(a.module), "num_heads")
                                            for blk in model.base_model.get_submodule(s.layers_path)]
            for s in pruner.stacks for a in s.attentions}
        rec["cut"] = outputs(model, kind, INPUTS)
        pruned_dir = str(tmp / name / "pruned")
        save_structured(model, pruned_dir)
        rec["pruned_dir"] = pruned_dir
        expected[f"{name}/pruned"] = rec["cut"]
        ours[f"{name}/pruned"] = {"path": pruned_dir, "kind": kind}
        moved = tmp / "elsewhere" / name
        shutil.copytree(pruned_dir, moved)  # the folder alone: nothing points back to hfcompress
        theirs[f"{name}/pruned"] = {"path": str(moved), "kind": kind, "auto": auto, "remote_code": True}
        # ---- bitsandbytes 8-bit and nf4: saved after a forward (bitsandbytes repacks 4-bit weights on it)
        for bits in (8, 4):
            q = load_quantized(dense_dir, bits)
            rec[f"bnb{bits}_model"] = _layer_types(q, heads)
            expected[f"{name}/bnb{bits}"] = outputs(q, kind, INPUTS)
            path = str(tmp / name / f"bnb{bits}")
            save_quantized(q, path)
            ours[f"{name}/bnb{bits}"] = {"path": path, "kind": kind}
            theirs[f"{name}/bnb{bits}"] = {"path": path, "kind": kind, "auto": auto, "remote_code": False}
            del q
        # ---- torch dynamic int8
        q = quantize_dynamic_int8(dense, per_channel=True)
        rec["int8_model"] = _layer_types(q, heads)
        expected[f"{name}/int8"] = outputs(q, kind, INPUTS)
        path = str(tmp / name / "int8")
        save_dynamic_int8(q, path)
        ours[f"{name}/int8"] = {"path": path, "kind": kind}
        if name == "whisper":  # pruned, then int8: reloads at its pruned shape
            q = quantize_dynamic_int8(model, per_channel=True)
            expected["whisper/pruned_int8"] = outputs(q, kind, INPUTS)
            path = str(tmp / name / "pruned_int8")
            save_dynamic_int8(q, path)
            ours["whisper/pruned_int8"] = {"path": path, "kind": kind}
    got_ours = _fresh(WITH_HFCOMPRESS, ours, tmp, "ours", cwd=ROOT)
    got_theirs = _fresh(WITHOUT_HFCOMPRESS, theirs, tmp, "theirs", cwd=str(tmp))
    return {"info": info, "expected": expected, "ours": got_ours, "theirs": got_theirs, "tmp": tmp}


def _layer_types(model, heads) -> dict:
    """Which quantized layer types the model holds, and whether its task head stayed plain full-precision Linear."""
    import bitsandbytes as bnb
    import torch.ao.nn.quantized.dynamic as nnqd

    types = {type(m).__name__ for m in model.modules()
             if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit, nnqd.Linear))}
    head_linears = [m for h in heads for m in model.get_submodule(h).modules() if isinstance(m, nn.Linear)]
    plain = all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in head_linears) and bool(head_linears)
    return {"types": sorted(types), "head_full_precision": plain}


NAMES = ["whisper", "whisper_cls", "wav2vec2_ctc", "wav2vec2_cls", "hubert_ctc", "hubert_cls"]


@pytest.mark.parametrize("name", NAMES)
def test_pruning_scores_from_the_loss_and_masked_equals_cut(built, name):
    rec = built["info"][name]
    assert rec["scores_nonzero"]  # every head / neuron group got Taylor scores from the real loss
    assert torch.allclose(rec["masked"], rec["cut"]["logits"], atol=1e-5)
    s = rec["summary"]
    assert s["heads_after"] == s["heads_before"] - round(0.5 * s["heads_before"])
    assert s["neurons_after"] == s["neurons_before"] - round(0.5 * s["neurons_before"])
    assert s["parameters_after"] < s["parameters_before"]
    if name == "whisper":  # encoder self-attention, decoder self- and cross-attention, both FFN stacks
        assert rec["stacks"] == ["encoder.layers", "decoder.layers"]
        assert set(rec["heads_by_attention"]) == {"encoder.layers.self_attn", "decoder.layers.self_attn",
                                                  "decoder.layers.encoder_attn"}
        assert sum(map(sum, rec["heads_by_attention"].values())) == s["heads_after"] < s["heads_before"] == 24
    elif name == "whisper_cls":  # encoder only: no decoder to prune
        assert rec["stacks"] == ["encoder.layers"] and s["heads_before"] == 8


@pytest.mark.parametrize("name", NAMES)
def test_pruned_reloads_in_fresh_processes_with_and_without_hfcompress(built, name):
    rec, key = built["info"][name], f"{name}/pruned"
    cfg = json.load(open(os.path.join(rec["pruned_dir"], "config.json")))
    assert is_structured_checkpoint(rec["pruned_dir"])
    assert cfg["auto_map"][rec["auto"]].endswith(f"HfcPruned{cfg['architectures'][0]}")
    expected = built["expected"][key]
    for got in (built["ours"][key], built["ours"][key + "/load_structured"], built["theirs"][key]):
        assert torch.equal(got["logits"], expected["logits"])
        if "tokens" in expected:
            assert torch.equal(got["tokens"], expected["tokens"]) and got["tokens"].shape[1] > 1
    assert built["ours"][key]["format"] == "structured"
    assert built["theirs"][key]["class"] == "HfcPruned" + cfg["architectures"][0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["bnb8", "bnb4", "int8"])
def test_quantized_reloads_in_a_fresh_process(built, name, variant):
    rec, key = built["info"][name], f"{name}/{variant}"
    layers = rec[f"{variant}_model"]
    assert layers["types"] == [{"bnb8": "Linear8bitLt", "bnb4": "Linear4bit", "int8": "Linear"}[variant]]
    assert layers["head_full_precision"]
    expected = built["expected"][key]
    dense = rec["dense"]["logits"]
    assert 0 < (expected["logits"] - dense).abs().max() < 0.5  # really quantized, still the same model
    fresh = [built["ours"][key]] + ([built["theirs"][key]] if variant.startswith("bnb") else [])
    for got in fresh:
        assert torch.equal(got["logits"], expected["logits"]), (got["logits"] - expected["logits"]).abs().max()
        if "tokens" in expected:
            assert torch.equal(got["tokens"], expected["tokens"])
    assert built["ours"][key]["class"] == {"whisper": "WhisperForConditionalGeneration",
                                           "whisper_cls": "WhisperForAudioClassification",
                                           "wav2vec2_ctc": "Wav2Vec2ForCTC",
                                           "wav2vec2_cls": "Wav2Vec2ForSequenceClassification",
                                           "hubert_ctc": "HubertForCTC",
                                           "hubert_cls": "HubertForSequenceClassification"}[name]


def test_pruned_whisper_in_int8_reloads_at_its_pruned_shape(built):
    got, expected = built["ours"]["whisper/pruned_int8"], built["expected"]["whisper/pruned_int8"]
    assert got["format"] == "torch_int8" and got["class"] == "HfcPrunedWhisperForConditionalGeneration"
    assert torch.equal(got["logits"], expected["logits"]) and torch.equal(got["tokens"], expected["tokens"])


def test_load_model_picks_the_auto_class_of_the_saved_architecture(built):
    from hfcompress.loading import load_model

    for name in NAMES:
        rec = built["info"][name]
        model = load_model(rec["dense_dir"])
        assert type(model).__name__ == json.load(open(os.path.join(rec["dense_dir"], "config.json")))["architectures"][0]
        assert torch.equal(outputs(model, rec["kind"], INPUTS)["logits"], rec["dense"]["logits"])


def test_model_class_for_keeps_text_checkpoints_on_sequence_classification():
    import transformers

    from hfcompress.arch import model_class_for

    seq = transformers.AutoModelForSequenceClassification
    assert model_class_for({"model_type": "bert", "architectures": ["BertModel"]}) is seq
    assert model_class_for({"model_type": "bert", "architectures": ["BertForMaskedLM"]}) is seq
    assert model_class_for({"model_type": "bert"}) is seq
    assert model_class_for({"model_type": "whisper", "architectures": ["HfcPrunedWhisperForConditionalGeneration"]}) \
        is transformers.AutoModelForSpeechSeq2Seq
    assert model_class_for({"model_type": "hubert", "architectures": ["HubertForCTC"]}) is transformers.AutoModelForCTC
    assert model_class_for({"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]}) is transformers.Wav2Vec2Model


def test_task_heads_of_speech_models():
    from hfcompress.arch import task_head_names

    for name, (make, _, _, _, heads) in _models().items():
        with torch.device("meta"):
            model = make()
        assert sorted(task_head_names(model)) == sorted(heads), name
    import transformers as tf

    with torch.device("meta"):
        bare = [tf.WhisperModel(tf.WhisperConfig(**_WHISPER)), tf.Wav2Vec2Model(tf.Wav2Vec2Config(**_W2V))]
    assert [task_head_names(m) for m in bare] == [[], []]


def test_structured_stacks_prunes_only_the_chosen_stack():
    from hfcompress.errors import UserInputError

    make = _models()["whisper"][0]
    torch.manual_seed(0)
    model = make()
    encoder_before = [l.fc1.out_features for l in model.model.encoder.layers]
    model.generation_config.alignment_heads = [[0, 0], [0, 3], [1, 1], [1, 2]]  # cross-attention heads (timestamps)
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", target_sparsity=0.5, method="magnitude",
                                                   structured_stacks="decoder", pruning_start=0, pruning_end=1))
    assert [s.layers_path for s in pruner.stacks] == ["decoder.layers"]
    pruner.set_total_steps(1)
    pruner.step(1)
    kept = {g.block: g.mask.nonzero().flatten().tolist() for g in pruner.groups if g.kind == "heads" and g.attention == 1}
    pruner.fold()
    # the word-timestamp heads follow the cut: kept ones renumbered, removed ones dropped
    assert model.generation_config.alignment_heads == [[l, kept[l].index(h)] for l, h in [[0, 0], [0, 3], [1, 1], [1, 2]]
                                                       if h in kept[l]]
    assert [l.fc1.out_features for l in model.model.encoder.layers] == encoder_before
    assert [l.fc1.out_features for l in model.model.decoder.layers] == [64, 64]
    assert [l.self_attn.num_heads for l in model.model.encoder.layers] == [4, 4]
    assert [(l.self_attn.num_heads, l.encoder_attn.num_heads) for l in model.model.decoder.layers] == [(2, 2), (2, 2)]
    with pytest.raises(UserInputError, match="'encoder.layers', 'decoder.layers'"):
        StructuredPruner(make(), PruningConfig(granularity="structured", structured_stacks="decodr"))
    with pytest.raises(UserInputError, match="applies to granularity 'structured' only"):
        PruningConfig(structured_stacks="decoder")


def test_int8_whisper_reloads_with_its_own_generation_config(built, tmp_path):
    """(Found by the speech benchmark.) A torch-int8 Whisper is rebuilt from its config.json: its generation settings
    (prompt, timestamp token, alignment heads) must come from its own generation_config.json, not from defaults."""
    from transformers import GenerationConfig

    from hfcompress.loading import load_model

    path = tmp_path / "int8"
    shutil.copytree(built["tmp"] / "whisper" / "int8", path)
    saved = GenerationConfig.from_pretrained(path)
    saved.no_timestamps_token_id, saved.alignment_heads = 7, [[0, 1]]  # settings no config.json implies
    saved._from_model_config = False  # as in a real Whisper checkpoint
    saved.save_pretrained(path)
    got = load_model(str(path)).generation_config
    assert got.no_timestamps_token_id == 7 and got.alignment_heads == [[0, 1]]
