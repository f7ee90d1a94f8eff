
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert, tiny_mpnet

from hfcompress import DistillationConfig, DistillationLoss
from hfcompress.distill.config import parse_layer_map, uniform_layer_map
from hfcompress.distill.loss import TeacherOutputs
from hfcompress.distill.losses import attention_kl_per_example, hidden_state_loss_per_example, logit_kd_loss_sum


def test_logit_kd_matches_hinton_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    T = 3.0
    expected = 0.0
    for i in range(5):
        p = F.softmax(t[i] / T, -1)
        q = F.softmax(s[i] / T, -1)
        expected += T**2 * float((p * (p.log() - q.log())).sum())
    got = logit_kd_loss_sum(s, t, torch.ones(5, dtype=torch.bool), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert logit_kd_loss_sum(t, t, torch.ones(5, dtype=torch.bool), T).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_losses_ignore_padding():
    a, b = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mse = hidden_state_loss_per_example(a, b, mask, "mse")
    assert mse[0].item() == pytest.approx(((a[0, :2] - b[0, :2]) ** 2).mean().item(), rel=1e-5)
    b2 = b.clone()
    b2[0, 2:] += 100.0  # changes on padded positions only
    assert torch.allclose(hidden_state_loss_per_example(a, b2, mask, "mse"), mse)
    cos = hidden_state_loss_per_example(a, a * 3.0, mask, "cosine")
    assert torch.allclose(cos, torch.zeros(2), atol=1e-6)


def test_attention_kl_zero_for_equal_maps_and_positive_otherwise():
    logits = torch.randn(2, 4, 5, 5)
    mask = torch.ones(2, 5)
    p = logits.softmax(-1)
    assert torch.allclose(attention_kl_per_example(p, p, mask), torch.zeros(2), atol=1e-6)
    assert (attention_kl_per_example(torch.randn(2, 4, 5, 5).softmax(-1), p, mask) > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"alpha": -0.1}, "alpha must be in [0, 1]"),
    ({"alpha": 1.01}, "alpha must be in [0, 1]"),
    ({"hidden_loss": "l1"}, "hidden_loss must be"),
    ({"layer_map": "1-2"}, "is not 'student:teacher'"),
    ({"hidden_weight": -1.0}, "hidden_weight must be >= 0"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DistillationConfig(**kwargs)


def test_layer_maps():
    assert parse_layer_map("1:2, 2:4") == [(1, 2), (2, 4)]
    assert parse_layer_map({1: 3}) == [(1, 3)]
    assert uniform_layer_map(3, 12) == [(1, 4), (2, 8), (3, 12)]
    assert uniform_layer_map(6, 12) == [(i, 2 * i) for i in range(1, 7)]
    assert DistillationConfig(layer_map=[[1, 2]]).layer_map == "1:2"


def test_loss_mixes_terms_with_alpha_and_normalises_by_items():
    student, teacher = tiny_bert(), tiny_mpnet()
    ids = torch.randint(5, 60, (4, 6))
    labels = torch.tensor([0, 1, 1, 0])
    s_out = student(input_ids=ids)
    t_logits = torch.randn(4, 2)
    for alpha in (0.0, 0.3, 1.0):
        kd = DistillationLoss(DistillationConfig(alpha=alpha, temperature=2.0), student.config, teacher)
        loss = kd(s_out, labels, None, teacher_outputs=TeacherOutputs(logits=t_logits))
        ce = F.cross_entropy(s_out.logits, labels)
        kl = 4.0 * F.kl_div(F.log_softmax(s_out.logits / 2, -1), F.log_softmax(t_logits / 2, -1), reduction="batchmean", log_target=True)
        assert loss.item() == pytest.approx(((1 - alpha) * ce + alpha * kl).item(), rel=1e-5)
        # With num_items_in_batch = 8 (this micro-batch is half of an accumulated batch) the loss halves.
        half = kd(s_out, labels, torch.tensor(8), teacher_outputs=TeacherOutputs(logits=t_logits))
        assert half.item() == pytest.approx(loss.item() / 2, rel=1e-5)


def test_labels_must_agree():
    a = tiny_bert(labels=["neg", "pos"])
    with pytest.raises(ValueError, match="teacher has 3 labels but student has 2"):
        DistillationLoss(DistillationConfig(), a.config, tiny_mpnet(labels=["a", "b", "c"]))
    with pytest.raises(ValueError, match="label names"):
        DistillationLoss(DistillationConfig(), a.config, tiny_mpnet(labels=["pos", "neg"]))


def test_attention_needs_equal_heads():
    with pytest.raises(ValueError, match="equal head counts"):
        DistillationLoss(DistillationConfig(attention_weight=1.0), tiny_bert(heads=4).config, tiny_mpnet(heads=6, hidden=48))


def test_projection_only_when_widths_differ_and_teacher_is_frozen():
    teacher = tiny_mpnet(hidden=48)
    kd = DistillationLoss(DistillationConfig(hidden_weight=1.0, layer_map="1:2,2:4"), tiny_bert(hidden=32).config, teacher)
    assert set(kd.state_dict()) == {"projections.1_2.weight", "projections.1_2.bias", "projections.2_4.weight", "projections.2_4.bias"}
    assert kd.projections["1_2"].weight.shape == (48, 32)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not any(k.startswith("teacher") for k in kd.state_dict())
    same = DistillationLoss(DistillationConfig(hidden_weight=1.0), tiny_bert(hidden=32).config, tiny_bert(num_layers=4, hidden=32))
    assert len(same.state_dict()) == 0
