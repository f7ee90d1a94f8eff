"""MiniLMv2 self-attention relation distillation: the pure loss, the per-family q/k/v capture, the loss in training
(sdpa attention, different widths and head counts), gradient accumulation, and the teacher cache."""

import math

import pytest
import torch
from conftest import make_dataset, make_tokenizer, tiny_bert, tiny_mpnet
from test_grad_accum import GradCapture, assert_same_grads
from transformers import AutoModelForSequenceClassification, DistilBertConfig, ElectraConfig, RobertaConfig

from hfcompress import (
    DistillationArguments,
    DistillationConfig,
    DistillationDataCollator,
    DistillationLoss,
    DistillationTrainer,
)
from hfcompress.arch import QKVCapture, get_adapter
from hfcompress.data import tokenize
from hfcompress.distill.cache import decode_array, encode_array, load_or_compute_teacher_cache
from hfcompress.distill.loss import CACHED_QKV
from hfcompress.distill.losses import qkv_relation_kl_per_example, relation_kl_per_example


# ---- the pure loss ---------------------------------------------------------------------------------------------
def test_relation_kl_is_zero_for_identical_projections_and_positive_otherwise():
    torch.manual_seed(0)
    qkv = [torch.randn(3, 6, 32) for _ in range(3)]
    mask = torch.ones(3, 6)
    same = qkv_relation_kl_per_example(qkv, [x.clone() for x in qkv], mask, num_heads=4)
    assert same.shape == (3,)
    assert torch.allclose(same, torch.zeros(3), atol=1e-6)
    other = qkv_relation_kl_per_example(qkv, [torch.randn(3, 6, 32) for _ in range(3)], mask, num_heads=4)
    assert (other > 1e-3).all()
    # q-q, k-k and v-v relations are summed
    parts = sum(relation_kl_per_example(s, t, mask, 4) for s, t in zip(qkv, [x * 2 for x in qkv]))
    assert torch.allclose(qkv_relation_kl_per_example(qkv, [x * 2 for x in qkv], mask, 4), parts)


def test_relation_kl_matches_the_definition():
    torch.manual_seed(1)
    s, t = torch.randn(1, 5, 8), torch.randn(1, 5, 12)
    expected = 0.0
    for r in range(2):  # 2 relation heads: widths 4 (student) and 6 (teacher)
        xs, xt = s[0, :, 4 * r : 4 * r + 4], t[0, :, 6 * r : 6 * r + 6]
        ps = torch.softmax(xs @ xs.T / math.sqrt(4), -1)
        pt = torch.softmax(xt @ xt.T / math.sqrt(6), -1)
        expected += (pt * (pt.log() - ps.log())).sum(-1).mean() / 2
    got = relation_kl_per_example(s, t, torch.ones(1, 5), num_heads=2)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_relation_kl_works_across_widths_and_head_counts():
    """Student width 32 (2 relation heads of 16) vs teacher width 64 (2 of 32): a teacher whose heads hold the
    student's features (scaled so that x x^T / sqrt(d_r) is equal) and zeros has the same relations -> loss 0."""
    torch.manual_seed(2)
    s = torch.randn(2, 7, 32)
    c = 2 ** 0.25  # c^2 / sqrt(32) == 1 / sqrt(16)
    heads = [torch.cat([c * s[..., 16 * r : 16 * r + 16], torch.zeros(2, 7, 16)], -1) for r in range(2)]
    t = torch.cat(heads, -1)  # [2, 7, 64]
    mask = torch.ones(2, 7)
    assert torch.allclose(relation_kl_per_example(s, t, mask, 2), torch.zeros(2), atol=1e-5)
    assert (relation_kl_per_example(s, torch.randn(2, 7, 64), mask, 2) > 1e-3).all()
    with pytest.raises(ValueError, match="3 relation heads do not divide the width 32"):
        relation_kl_per_example(s, torch.randn(2, 7, 66), mask, 3)


def test_masked_padding_does_not_change_the_relation_loss():
    torch.manual_seed(3)
    s, t = [torch.randn(2, 6, 16) for _ in range(3)], [torch.randn(2, 6, 24) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    ref = qkv_relation_kl_per_example(s, t, mask, 4)
    s2, t2 = [x.clone() for x in s], [x.clone() for x in t]
    for x in s2 + t2:
        x[0, 4:] = 100.0 * torch.randn_like(x[0, 4:])  # garbage at the padded positions of example 0
    assert torch.allclose(qkv_relation_kl_per_example(s2, t2, mask, 4), ref, atol=1e-6)
    # ... and example 0 equals the same example without the padding
    alone = qkv_relation_kl_per_example([x[:1, :4] for x in s], [x[:1, :4] for x in t], torch.ones(1, 4), 4)
    assert ref[0].item() == pytest.approx(alone.item(), rel=1e-5)
    # gradients stay finite with padded (-inf) keys
    s3 = [x.clone().requires_grad_() for x in s]
    qkv_relation_kl_per_example(s3, t, mask, 4).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in s3)
    assert all(x.grad[0, 4:].abs().max() == 0 for x in s3), "padded tokens get no gradient"


# ---- per-family query/key/value ----------------------------------------------------------------------------------
def _tiny(config_cls, **kw):
    return AutoModelForSequenceClassification.from_config(config_cls(vocab_size=40, **kw))


@pytest.mark.parametrize("model, names", [
    (lambda: tiny_bert(num_layers=2), ("attention.self.query", "attention.self.key", "attention.self.value")),
    (lambda: _tiny(RobertaConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
     ("attention.self.query", "attention.self.key", "attention.self.value")),
    (lambda: _tiny(ElectraConfig, hidden_size=32, embedding_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64), ("attention.self.query", "attention.self.key", "attention.self.value")),
    (lambda: tiny_mpnet(num_layers=2), ("attention.attn.q", "attention.attn.k", "attention.attn.v")),
    (lambda: _tiny(DistilBertConfig, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
     ("attention.q_lin", "attention.k_lin", "attention.v_lin")),
])
def test_qkv_capture_records_the_projections_of_each_family(model, names):
    m = model().eval()
    adapter = get_adapter(m)
    named = {id(mod): n for n, mod in m.named_modules()}
    q, k, v = adapter.qkv_modules(m, 2)
    for mod, suffix in zip((q, k, v), names):
        assert isinstance(mod, torch.nn.Linear) and named[id(mod)].endswith(f"layer.1.{suffix}")
    ids = torch.randint(5, 40, (2, 6))
    with QKVCapture(m, [2]) as cap:
        m(input_ids=ids, attention_mask=torch.ones_like(ids))
    rec = cap.pop()
    width = m.config.hidden_size if hasattr(m.config, "hidden_size") else m.config.dim
    assert set(rec) == {2} and all(x.shape == (2, 6, width) for x in rec[2])
    expected_q = {}
    h = q.register_forward_hook(lambda mod, a, out: expected_q.setdefault("q", out))
    m(input_ids=ids, attention_mask=torch.ones_like(ids))
    h.remove()
    assert torch.equal(rec[2][0], expected_q["q"])
    # the context removed its hooks
    assert not any(mod._forward_hooks for mod in (q, k, v))
    with pytest.raises(ValueError, match="out of range"):
        adapter.qkv_modules(m, 3)


# ---- the loss in DistillationLoss --------------------------------------------------------------------------------
def test_relation_config_defaults_and_errors():
    student, teacher = tiny_bert(hidden=32, heads=4), tiny_mpnet(num_layers=4, hidden=48)
    kd = DistillationLoss(DistillationConfig(relation_weight=1.0), student.config, teacher)
    assert kd.relation_map == [(2, 4)] and kd.relation_heads == 4  # last <- last, student's head count
    assert kd.cache_request() == {"relation_layers": [4]} and not kd.needs_online_teacher()
    kd = DistillationLoss(DistillationConfig(relation_weight=1.0, relation_layer_map="1:2,2:4", relation_heads=8),
                          student.config, teacher)
    assert kd.relation_map == [(1, 2), (2, 4)] and kd.relation_heads == 8 and kd.teacher_relation_layers == [2, 4]
    assert student.config._attn_implementation == "sdpa"  # relations need no eager attention
    with pytest.raises(ValueError, match="student's 5 attention heads does not divide the teacher's width 48"):
        DistillationLoss(DistillationConfig(relation_weight=1.0), tiny_bert(hidden=40, heads=5).config, teacher)
    with pytest.raises(ValueError, match="relation_heads=5 must divide both the student's width 32 and the teacher's width 48"):
        DistillationLoss(DistillationConfig(relation_weight=1.0, relation_heads=5), student.config, teacher)
    with pytest.raises(ValueError, match="relation_layer_map teacher block 5 out of range"):
        DistillationLoss(DistillationConfig(relation_weight=1.0, relation_layer_map="2:5"), student.config, teacher)
    with pytest.raises(ValueError, match="relation_layer_map student block 3 out of range"):
        DistillationLoss(DistillationConfig(relation_weight=1.0, relation_layer_map="3:4"), student.config, teacher)


@pytest.mark.parametrize("kwargs, message", [
    ({"relation_weight": -1.0}, "relation_weight must be >= 0"),
    ({"relation_layer_map": "0:4"}, "relation_layer_map pair 0:4"),
    ({"relation_layer_map": "2-4"}, "relation_layer_map entry '2-4'"),
    ({"relation_heads": 0}, "relation_heads must be a positive integer"),
])
def test_relation_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**kwargs)


def test_relation_loss_on_models_and_its_gradient():
    """Student width 32 / 4 heads vs teacher width 48 / 4 heads, sdpa attention kept; identical models give 0."""
    student, teacher = tiny_bert(hidden=32, heads=4, seed=0), tiny_mpnet(num_layers=4, hidden=48, seed=1)
    kd = DistillationLoss(DistillationConfig(relation_weight=1.0, alpha=0.5), student.config, teacher).attach(student)
    assert student.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 18, (4, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    student.train()
    out = student(input_ids=ids, attention_mask=mask, teacher_input_ids=ids, teacher_attention_mask=mask)
    loss, parts = kd(out, torch.tensor([0, 1, 0, 1]), return_parts=True)
    assert parts.keys() == kd.last_parts.keys()
    assert parts["loss_relation"] > 0 and "loss_kd" in parts and "loss_ce" in parts
    loss.backward()
    g = student.bert.encoder.layer[1].attention.self.query.weight.grad
    assert g is not None and g.abs().max() > 0

    # A student identical to its teacher has the teacher's relations: the term is 0.
    twin_student, twin_teacher = tiny_bert(hidden=32, heads=4, seed=0), tiny_bert(hidden=32, heads=4, seed=0)
    kd2 = DistillationLoss(DistillationConfig(relation_weight=1.0, alpha=1.0, logit_weight=0.0), twin_student.config,
                           twin_teacher).attach(twin_student)
    twin_student.train()
    res = twin_student(input_ids=ids, attention_mask=mask)
    assert kd2(res, None).item() == pytest.approx(0.0, abs=1e-6)
    assert set(kd2.last_parts) == {"loss_relation"}


def test_relation_loss_needs_the_students_projections():
    student, teacher = tiny_bert(), tiny_mpnet()
    kd = DistillationLoss(DistillationConfig(relation_weight=1.0), student.config, teacher)
    ids = torch.randint(5, 18, (2, 5))
    out = student(input_ids=ids)
    t_out = kd.teacher_outputs({"input_ids": ids})
    with pytest.raises(RuntimeError, match="no query/key/value of student block 2 were recorded"):
        kd(out, torch.tensor([0, 1]), teacher_outputs=t_out)
    # computed by hand and passed in: fine
    with QKVCapture(student, [2]) as cap:
        out = student(input_ids=ids)
    assert kd(out, torch.tensor([0, 1]), teacher_outputs=t_out, student_qkv=cap.pop()) > 0


def _data():
    tok = make_tokenizer()
    return tok, tokenize(make_dataset(n_train=64), tok)["train"].rename_column("label", "labels")


def _relation_grads(bs, ga, tmp_path):
    tok, train = _data()
    student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)  # widths 32 vs 48, 4 heads each
    args = DistillationArguments(
        output_dir=str(tmp_path / f"rel-{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=1, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=7, use_cpu=True,
        alpha=0.7, relation_weight=1.0, relation_layer_map="1:2,2:4", relation_heads=2,
    )
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=train,
                                  data_collator=DistillationDataCollator(tok))
    cap = GradCapture(trainer.distillation_loss)
    trainer.add_callback(cap)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss_relation" in h]
    assert logged and logged[0]["loss_relation"] > 0
    return cap


def test_relation_term_is_exact_under_gradient_accumulation(tmp_path):
    one, acc = _relation_grads(32, 1, tmp_path), _relation_grads(8, 4, tmp_path)
    assert_same_grads(acc.grads, one.grads)
    assert acc.losses[0] == pytest.approx(one.losses[0], rel=1e-4)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert one.grads[q].abs().max() > 0, "the relation term of block 1 must reach its query projection"


# ---- teacher cache --------------------------------------------------------------------------------------------------
def _cache(tmp_path, tokenized, teacher, relation_layers, calls=None):
    tok = make_tokenizer()

    def loader():
        if calls is not None:
            calls.append(1)
        return teacher

    return load_or_compute_teacher_cache(str(tmp_path / "cache"), "tiny-teacher", tokenized, loader,
                                         lambda f: tok.pad(f, return_tensors="pt"), relation_layers=relation_layers,
                                         batch_size=16)


def test_cached_relation_qkv_are_the_teachers(tmp_path):
    tok, train = _data()
    teacher = tiny_mpnet(seed=1)
    cached, meta = _cache(tmp_path, train, teacher, [2, 4])
    assert meta["relation_layers"] == [2, 4] and CACHED_QKV in cached.column_names
    rows = [cached[i] for i in (3, 0, 7)]
    stored = decode_array(rows[1][CACHED_QKV])
    assert stored.shape == (6, len(rows[1]["input_ids"]), 48)
    batch = DistillationDataCollator(tok)(rows)
    assert batch[CACHED_QKV].dtype == torch.float16 and batch[CACHED_QKV].shape[:2] == (3, 6)
    with QKVCapture(teacher, [2, 4]) as cap, torch.no_grad():
        teacher.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = cap.pop()
    m = batch["attention_mask"].bool()
    for i, block in enumerate([2, 4]):
        for j in range(3):
            got = batch[CACHED_QKV][:, 3 * i + j].float()
            assert torch.allclose(got[m], ref[block][j][m], atol=2e-3, rtol=1e-3)
            assert (got[~m] == 0).all()


def test_encoded_arrays_round_trip():
    a = torch.randn(3, 5, 7).half().numpy()
    assert (decode_array(encode_array(a)) == a).all()
    assert (decode_array(a.tolist()) == a).all()  # nested lists (older caches) still read


def test_cache_key_follows_the_relation_layers(tmp_path):
    tok, train = _data()
    teacher, calls = tiny_mpnet(seed=1), []
    _cache(tmp_path, train, teacher, [4], calls)
    _, meta = _cache(tmp_path, train, teacher, [4], calls)
    assert meta["reused"] and len(calls) == 1
    _cache(tmp_path, train, teacher, [2, 4], calls)
    assert len(calls) == 2


def _train_relation(tmp_path, name, train, teacher=None, teacher_config=None, relation_layers=None):
    tok = make_tokenizer()
    args = DistillationArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_steps=6, report_to="none",
        save_strategy="no", seed=3, use_cpu=True, alpha=0.8, relation_weight=1.0, relation_layer_map="1:2,2:4",
        logging_steps=1,
    )
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=teacher, teacher_config=teacher_config,
                                  cached_relation_layers=relation_layers, train_dataset=train,
                                  data_collator=DistillationDataCollator(tok))
    trainer.train()
    assert any(h.get("loss_relation", 0) > 0 for h in trainer.state.log_history)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_cached_and_online_relation_distillation_agree(tmp_path):
    tok, train = _data()
    teacher = tiny_mpnet(seed=1)
    cached, meta = _cache(tmp_path, train, teacher, [2, 4])
    online = _train_relation(tmp_path, "online", train, teacher=teacher)
    from_cache = _train_relation(tmp_path, "cached", cached, teacher_config=teacher.config,
                                 relation_layers=meta["relation_layers"])
    for k in online:  # q/k/v cached in float16: close, not exact
        assert torch.allclose(online[k], from_cache[k], atol=2e-4), (k, (online[k] - from_cache[k]).abs().max())
    start = tiny_bert(seed=0).state_dict()
    assert max((online[k] - start[k]).abs().max().item() for k in online) > 1e-4, "training must move the student"


@pytest.mark.parametrize("reentrant", [False, True])
def test_relation_under_gradient_checkpointing(reentrant):
    """Non-reentrant checkpointing keeps the recorded q/k/v in the graph (same gradients as without); reentrant
    checkpointing would drop them silently, so it is refused."""
    ids = torch.randint(5, 18, (3, 6))
    labels = torch.tensor([0, 1, 0])

    def grads(checkpointing):
        student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)
        kd = DistillationLoss(DistillationConfig(relation_weight=1.0, alpha=0.5), student.config, teacher).attach(student)
        if checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        student.train()
        kd(student(input_ids=ids, attention_mask=torch.ones_like(ids)), labels).backward()
        return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    if reentrant:
        with pytest.raises(RuntimeError, match="carry no gradient"):
            grads(True)
        return
    ref, ckpt = grads(False), grads(True)
    assert ref.keys() == ckpt.keys()
    for n in ref:
        assert torch.allclose(ref[n], ckpt[n], atol=1e-6), n
