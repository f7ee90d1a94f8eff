"""ModernBERT and DeBERTa-v2/v3 through every method, on tiny randomly initialised configs.

Covered, for ModernBERT (fused ``Wqkv``, gated ``Wi``, global/local attention pattern, no attention norm in block 0)
and DeBERTa (content and position heads; ``share_att_key`` True and False):
  * structured pruning: the masked model while training == the cut model == ``load_structured`` ==
    ``from_pretrained(trust_remote_code=True)``; heads removed from every per-head projection consistently;
  * uneven heads per block and removed blocks (ModernBERT's block 0, so the new first block keeps its attention norm;
    the kept blocks keep their global/local types) reload identically in fresh processes with hfcompress and without
    it (hfcompress unimportable, through the saved modeling code);
  * hidden-state, attention-map and relation KD find the q/k/v (ModernBERT's split out of ``Wqkv``) and train them;
  * student initialisation from chosen layers keeps ModernBERT's layer pattern, and the student reloads as saved;
  * ONNX export + int8 and PyTorch dynamic int8 of pruned models match PyTorch outputs (the int8 one also reloads
    identically at its pruned shape); a second pruning of a ModernBERT that lost block 0 keeps the first block's norm;
  * bad input: a ModernBERT left with only sliding-window blocks, DeBERTa settings the layout does not handle, an
    unsupported family.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import NO_HFCOMPRESS
from transformers import (
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
)

from hfcompress.arch import QKVCapture, UnsupportedArchitectureError, get_adapter
from hfcompress.errors import UserInputError
from hfcompress.prune import PruningConfig, StructuredPruner, load_structured, save_structured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}


def modernbert(layers=4, seed=0, **kw):
    """Blocks 0 and 3 global, 1 and 2 sliding-window (window 8 < the 20-token inputs), biases on (sliced too)."""
    torch.manual_seed(seed)
    cfg = ModernBertConfig(**{**dict(
        vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=layers, num_attention_heads=4,
        local_attention=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, attention_bias=True, mlp_bias=True), **LABELS, **kw})
    return ModernBertForSequenceClassification(cfg).eval()


def deberta(layers=3, share=True, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = DebertaV2Config(**{**dict(
        vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=layers, num_attention_heads=4,
        relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"],
        share_att_key=share, max_position_embeddings=64, type_vocab_size=0, norm_rel_ebd="layer_norm"), **LABELS,
        **kw})
    return DebertaV2ForSequenceClassification(cfg).eval()


FAMILIES = {"modernbert": modernbert, "deberta-shared": lambda **kw: deberta(share=True, **kw),
            "deberta-separate": lambda **kw: deberta(share=False, **kw)}
IDS = torch.randint(5, 60, (2, 20), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(IDS)
MASK[1, 14:] = 0


def _structured(**kw) -> PruningConfig:
    return PruningConfig(granularity="structured", **{"target_sparsity": 0.5, "pruning_start": 0, "pruning_end": 1,
                                                      **kw})


def _train(model, pruner, steps=3):
    pruner.set_total_steps(steps)
    model.train()
    for step in range(1, steps + 1):
        model(input_ids=IDS, attention_mask=MASK).logits.float().pow(2).mean().backward()
        pruner.before_optimizer_step()
        model.zero_grad()
        pruner.step(step)
    return model.eval()


def _logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _head_rows(model) -> list[tuple[int, ...]]:
    """Per block, the row counts of every per-head projection divided by head size (fused ones: by 3 as well)."""
    out = []
    for block in get_adapter(model).layers(model):
        if hasattr(block, "attn"):  # ModernBERT
            out.append((block.attn.Wqkv.out_features // (3 * block.attn.head_dim), block.attn.Wo.in_features //
                        block.attn.head_dim, block.mlp.Wi.out_features // 2 - block.mlp.Wo.in_features))
        else:
            att = block.attention.self
            projs = [att.query_proj, att.key_proj, att.value_proj, *(getattr(att, n) for n in
                                                                     ("pos_key_proj", "pos_query_proj") if hasattr(att, n))]
            out.append((att.num_attention_heads, att.all_head_size // att.attention_head_size,
                        *(p.out_features // att.attention_head_size for p in projs)))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_masked_equals_cut_equals_reloads(family, tmp_path):
    model = FAMILIES[family]()
    params = sum(p.numel() for p in model.parameters())
    pruner = StructuredPruner(model, _structured(scope="global"))
    _train(model, pruner)
    masked = _logits(model)
    summary = pruner.fold()
    cut = _logits(model)
    assert torch.allclose(masked, cut, atol=1e-5), (masked - cut).abs().max()
    assert summary["heads_after"] == summary["heads_before"] // 2
    assert summary["neurons_after"] == summary["neurons_before"] // 2
    assert summary["parameters_after"] == sum(p.numel() for p in model.parameters()) < params
    # every per-head projection (fused q/k/v thirds, DeBERTa's position projections) holds the kept heads
    for kept, rows in zip(summary["heads_per_layer"], _head_rows(model)):
        if family == "modernbert":
            assert rows[:2] == (kept, kept) and rows[2] == 0  # and Wi's two halves both follow Wo's columns
        else:
            assert set(rows) == {kept}
    save_structured(model, str(tmp_path / "m"))
    ours = load_structured(str(tmp_path / "m"))
    remote = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m"), trust_remote_code=True).eval()
    assert torch.equal(_logits(ours), cut) and torch.equal(_logits(remote), cut)
    assert type(remote).__name__.startswith("HfcPruned")


def test_modernbert_gated_neuron_is_both_halves_of_wi():
    """Magnitude scores of a GeGLU neuron count its input row and its gate row: a neuron whose gate row alone is large
    is kept; one whose rows are both tiny goes."""
    model = modernbert(layers=1)
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.Wi.weight.mul_(1e-3)
        mlp.Wi.bias.zero_()
        mlp.Wo.weight.mul_(1e-3)
        mlp.Wi.weight[40 + 7].fill_(1.0)  # gate half, neuron 7
    pruner = StructuredPruner(model, _structured(method="magnitude", ffn_sparsity=0.9, head_sparsity=0.25))
    _train(model, pruner, steps=1)
    g = next(g for g in pruner.groups if g.kind == "neurons")
    assert g.mask[7] and int(g.mask.sum()) == 4
    pruner.fold()
    assert model.model.layers[0].mlp.Wi.out_features == 8 and model.model.layers[0].mlp.Wo.in_features == 4


def _weaken(model, block: int, heads=None):
    """Scale a block's projections down so magnitude pruning takes them first (`heads`: only those heads' rows)."""
    b = get_adapter(model).layers(model)[block]
    with torch.no_grad():
        if hasattr(b, "attn"):
            lins = [(b.attn.Wqkv, 0), (b.attn.Wo, 1), (b.mlp.Wi, 0), (b.mlp.Wo, 1)]
        else:
            lins = [(b.attention.self.query_proj, 0), (b.attention.self.key_proj, 0),
                    (b.attention.self.value_proj, 0), (b.attention.output.dense, 1), (b.intermediate.dense, 0),
                    (b.output.dense, 1)]
        for lin, dim in lins:
            if heads is None:
                lin.weight.mul_(1e-3)
                if lin.bias is not None and dim == 0:
                    lin.bias.mul_(1e-3)
            elif dim == 1 and lin.in_features == 32:
                lin.weight[:, :8 * heads].mul_(1e-2)


def _removed_block_model(family):
    """Block 0 emptied (ModernBERT: its first, global block), uneven heads elsewhere."""
    model = FAMILIES[family]()
    _weaken(model, 0)
    _weaken(model, 2, heads=2)
    pruner = StructuredPruner(model, _structured(method="magnitude", scope="global", allow_layer_removal=True))
    _train(model, pruner, steps=2)
    return model, pruner


WITHOUT_HFCOMPRESS = NO_HFCOMPRESS + r"""
import json
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids, mask = (torch.tensor(x) for x in json.loads(sys.argv[2]))
with torch.no_grad():
    print(json.dumps({"logits": model(input_ids=ids, attention_mask=mask).logits.tolist(), "cls": type(model).__name__}))
"""

WITH_HFCOMPRESS = r"""
import json, sys, torch
import hfcompress
model = hfcompress.load_structured(sys.argv[1])
ids, mask = (torch.tensor(x) for x in json.loads(sys.argv[2]))
with torch.no_grad():
    print(json.dumps({"logits": model(input_ids=ids, attention_mask=mask).logits.tolist(), "cls": hfcompress.__file__}))
"""


def _fresh(code, *args, hfcompress_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    if hfcompress_path:
        env["PYTHONPATH"] = ROOT  # this checkout's hfcompress, whatever else is installed
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                         cwd="/", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["modernbert", "deberta-separate"])
def test_removed_block_and_uneven_heads_reload_in_fresh_processes(family, tmp_path):
    model, pruner = _removed_block_model(family)
    assert pruner.removed == {(0, 0)}
    masked = _logits(model)
    summary = pruner.fold()
    heads = summary["heads_per_layer"]
    assert heads[0] == 0 and len(set(heads[1:])) > 1, heads  # block 0 gone, uneven heads in the others
    assert torch.allclose(_logits(model), masked, atol=1e-5)
    if family == "modernbert":
        # the kept blocks keep their types (1, 2 sliding, 3 global); the new first block keeps its attention norm
        assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
        assert [b.attention_type for b in model.model.layers] == model.config.layer_types
        assert isinstance(model.model.layers[0].attn_norm, torch.nn.LayerNorm)
    expected = _logits(model)
    save_structured(model, str(tmp_path / "m"))
    args = (str(tmp_path / "m"), json.dumps([IDS.tolist(), MASK.tolist()]))
    without = _fresh(WITHOUT_HFCOMPRESS, *args, hfcompress_path=False)
    with_ = _fresh(WITH_HFCOMPRESS, *args, hfcompress_path=True)
    assert without["cls"].startswith("HfcPruned") and with_["cls"].startswith(ROOT)
    assert torch.equal(torch.tensor(without["logits"]), expected)
    assert torch.equal(torch.tensor(with_["logits"]), expected)


def test_qkv_capture_splits_modernbert_fused_projection():
    model = modernbert()
    with QKVCapture(model, [2]) as cap:
        _logits(model)
    q, k, v = cap.outputs[2]
    with torch.no_grad():
        block = model.model.layers[1]
        full = block.attn.Wqkv(block.attn_norm(model(input_ids=IDS, attention_mask=MASK,
                                                     output_hidden_states=True).hidden_states[1]))
    assert torch.equal(torch.cat([q, k, v], -1), full) and q.shape[-1] == 32
    assert get_adapter(model).block_linear_paths() == ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")


@pytest.mark.parametrize("family", ["modernbert", "deberta-separate"])
def test_hidden_attention_and_relation_kd_train_the_projections(family):
    from hfcompress.distill import DistillationConfig, DistillationLoss, init_student_from_teacher

    teacher = FAMILIES[family](seed=1)
    student = init_student_from_teacher(FAMILIES[family](seed=2), layers=[0, 2])
    cfg = DistillationConfig(alpha=0.5, hidden_weight=1.0, attention_weight=1.0, relation_weight=1.0)
    kd = DistillationLoss(cfg, student.config, teacher).attach(student)
    student.train()
    out = student(input_ids=IDS, attention_mask=MASK, teacher_input_ids=IDS, teacher_attention_mask=MASK)
    loss, parts = kd(out, torch.tensor([0, 1]), return_parts=True)
    assert all(parts[k] > 0 for k in ("loss_hidden", "loss_attention", "loss_relation")), parts
    loss.backward()
    q = get_adapter(student).qkv_modules(student, 2)[0]
    assert q.weight.grad is not None and q.weight.grad.abs().max() > 0
    # a student identical to its teacher has the teacher's relations
    no_dropout = {} if family == "modernbert" else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    twin, twin_teacher = FAMILIES[family](seed=1, **no_dropout), FAMILIES[family](seed=1, **no_dropout)
    kd2 = DistillationLoss(DistillationConfig(relation_weight=1.0, alpha=1.0, logit_weight=0.0), twin.config,
                           twin_teacher).attach(twin)
    twin.train()
    assert kd2(twin(input_ids=IDS, attention_mask=MASK), None).item() == pytest.approx(0.0, abs=1e-6)


def test_modernbert_student_keeps_the_layer_pattern_and_reloads(tmp_path):
    from hfcompress.distill import init_student_from_teacher

    teacher = modernbert(layers=6)  # global, sliding, sliding, global, sliding, sliding
    student = init_student_from_teacher(teacher, layers=[1, 3, 5])
    assert student.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert [b.attention_type for b in student.model.layers] == student.config.layer_types
    assert [b.attn.sliding_window for b in student.model.layers] == [5, None, 5]
    # block 1 becomes first: it loses its attention norm, as ModernBERT builds a first block
    assert isinstance(student.model.layers[0].attn_norm, torch.nn.Identity)
    assert teacher.config.layer_types[1] == "sliding_attention" and len(teacher.model.layers) == 6
    student.save_pretrained(str(tmp_path / "s"))
    again = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "s")).eval()
    assert again.config.layer_types == student.config.layer_types
    assert torch.equal(_logits(again), _logits(student.eval()))

    d_student = init_student_from_teacher(deberta(layers=3), layers=[2])
    d_student.save_pretrained(str(tmp_path / "d"))
    again = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "d")).eval()
    assert torch.equal(_logits(again), _logits(d_student.eval()))


@pytest.mark.parametrize("family", ["modernbert", "deberta-separate"])
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_onnx_int8_and_dynamic_int8_of_pruned_models_match_pytorch(family, head, tmp_path):
    """Sequence classifiers and token classifiers (per-token logits, the sequence axis dynamic) of both families."""
    from transformers import AutoModelForTokenClassification

    from hfcompress.quantize import (
        OnnxModelForSequenceClassification,
        OnnxModelForTokenClassification,
        export_onnx,
        load_dynamic_int8,
        quantize_dynamic_int8,
        quantize_onnx,
        save_dynamic_int8,
    )

    model = FAMILIES[family]()
    if head == "token":
        model = AutoModelForTokenClassification.from_config(model.config).eval()
    onnx_class = OnnxModelForTokenClassification if head == "token" else OnnxModelForSequenceClassification
    pruner = StructuredPruner(model, _structured(scope="global"))
    _train(model, pruner, steps=2)
    pruner.fold()
    ids = torch.randint(5, 60, (3, 27), generator=torch.Generator().manual_seed(3))  # not the traced shape
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    ref = _logits(model, ids, mask)
    fp32 = export_onnx(model, str(tmp_path / "fp32"))
    int8 = quantize_onnx(fp32, str(tmp_path / "int8"))
    scale = ref.abs().max().item()
    for folder, tol in ((fp32, 1e-4), (int8, 0.1)):
        ort = onnx_class.from_pretrained(folder)
        got = ort(input_ids=ids, attention_mask=mask).logits
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= tol * max(1.0, scale), (folder, (got - ref).abs().max())
    dyn = quantize_dynamic_int8(model)
    assert (_logits(dyn, ids, mask) - ref).abs().max().item() <= 0.1 * max(1.0, scale)
    save_dynamic_int8(dyn, str(tmp_path / "dyn"))  # reloads at the pruned shape, with the same logits
    assert torch.equal(_logits(load_dynamic_int8(str(tmp_path / "dyn")), ids, mask), _logits(dyn, ids, mask))


def test_modernbert_removal_leaving_only_sliding_blocks_is_an_error():
    model = modernbert(layers=4)
    _weaken(model, 0)
    _weaken(model, 3)
    pruner = StructuredPruner(model, _structured(method="magnitude", scope="global", allow_layer_removal=True,
                                                 target_sparsity=0.6))
    with pytest.raises(UserInputError, match=r"local_attention=8.*keep at least one of \[0, 3\]"):
        _train(model, pruner, steps=2)
    from hfcompress.distill import init_student_from_teacher

    with pytest.raises(UserInputError, match="all sliding-window blocks"):
        init_student_from_teacher(modernbert(layers=4), layers=[1, 2])
    # a window that covers every position is fine
    assert init_student_from_teacher(modernbert(layers=4, local_attention=128), layers=[1, 2]).config.layer_types == [
        "sliding_attention", "sliding_attention"]


def test_deberta_settings_the_layout_does_not_handle_are_named():
    model = deberta(share=False, pos_att_type=["c2p", "p2p"])
    with pytest.raises(UserInputError, match=r"pos_att_type \['p2p'\] is not handled.*share_att_key=True"):
        StructuredPruner(model, _structured())
    model = deberta(share=True)
    model.deberta.encoder.layer[1].attention.self.pos_proj = torch.nn.Linear(32, 32)
    with pytest.raises(UserInputError, match=r"block 1 has projections \['pos_proj'\]"):
        StructuredPruner(model, _structured())


def test_unsupported_family_lists_the_supported_ones():
    from transformers import DebertaConfig, DebertaForSequenceClassification

    model = DebertaForSequenceClassification(DebertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                                           num_attention_heads=4, intermediate_size=40))
    with pytest.raises(UnsupportedArchitectureError, match=r"'deberta'.*deberta-v2.*modernbert"):
        StructuredPruner(model, _structured())


def test_modernbert_pruned_again_after_block_0_went_reloads(tmp_path):
    """A second pruning of a ModernBERT whose block 0 an earlier one removed: its first block still has an attention
    norm, which the new structure records too."""
    model, pruner = _removed_block_model("modernbert")
    pruner.fold()
    again = StructuredPruner(model, _structured(scope="local", target_sparsity=0.3))
    _train(model, again, steps=1)
    again.fold()
    assert model.config.hfcompress_structure["stacks"][0]["first_block"] == [["attn_norm", "mlp_norm"]]
    save_structured(model, str(tmp_path / "m"))
    assert torch.equal(_logits(load_structured(str(tmp_path / "m"))), _logits(model))


@pytest.mark.parametrize("family", ["modernbert", "deberta-separate"])
@pytest.mark.parametrize("task", ["token", "qa"])
def test_token_classification_and_qa_heads_prune_and_reload(family, task, tmp_path):
    """The heads the task adapters use (per-token tagger, extractive QA reader) sit on the same encoders: pruning cuts
    the encoder only, the cut model answers as the masked one, and both reloads (hfcompress, and the saved modeling
    code through the task's auto class) answer the same."""
    import transformers as tf

    auto = {"token": tf.AutoModelForTokenClassification, "qa": tf.AutoModelForQuestionAnswering}[task]
    source = FAMILIES[family]()
    model = auto.from_config(source.config).eval()
    pruner = StructuredPruner(model, _structured(scope="global"))
    pruner.set_total_steps(3)
    model.train()

    def outputs(m):
        out = m(input_ids=IDS, attention_mask=MASK)
        return out.logits if task == "token" else torch.stack([out.start_logits, out.end_logits])

    for step in range(1, 4):
        outputs(model).float().pow(2).mean().backward()
        pruner.before_optimizer_step()
        model.zero_grad()
        pruner.step(step)
    model.eval()
    with torch.no_grad():
        masked = outputs(model)
    summary = pruner.fold()
    with torch.no_grad():
        cut = outputs(model)
    assert torch.allclose(masked, cut, atol=1e-5), (masked - cut).abs().max()
    assert summary["heads_after"] == summary["heads_before"] // 2
    save_structured(model, str(tmp_path / "m"))
    ours = load_structured(str(tmp_path / "m"))
    remote = auto.from_pretrained(str(tmp_path / "m"), trust_remote_code=True).eval()
    assert type(ours).__name__.endswith(type(model).__name__.removeprefix("HfcPruned"))
    with torch.no_grad():
        assert torch.equal(outputs(ours), cut) and torch.equal(outputs(remote), cut)
