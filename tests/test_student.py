import pytest
import torch
from conftest import tiny_bert
from transformers import AutoModelForSequenceClassification, DistilBertConfig, MPNetConfig, RobertaConfig

from hfcompress import init_student_from_teacher
from hfcompress.arch import get_adapter


def _model(kind):
    torch.manual_seed(0)
    common = dict(vocab_size=64, num_labels=2, max_position_embeddings=70)
    if kind == "bert":
        return tiny_bert(num_layers=6)
    if kind == "roberta":
        cfg = RobertaConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, pad_token_id=1, **common)
    elif kind == "mpnet":
        cfg = MPNetConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, **common)
    else:
        cfg = DistilBertConfig(dim=32, n_layers=6, n_heads=4, hidden_dim=64, **common)
    return AutoModelForSequenceClassification.from_config(cfg)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet", "distilbert"])
def test_student_copies_chosen_blocks(kind, tmp_path):
    teacher = _model(kind).eval()
    student = init_student_from_teacher(teacher, layers=[0, 2, 5]).eval()
    adapter = get_adapter(student)
    assert adapter.num_layers(student.config) == 3 and len(adapter.layers(student)) == 3
    t_layers, s_layers = adapter.layers(teacher), adapter.layers(student)
    for s_i, t_i in enumerate([0, 2, 5]):
        for (n1, p1), (n2, p2) in zip(s_layers[s_i].state_dict().items(), t_layers[t_i].state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2)
    # Embeddings and head are copied, the teacher is untouched, and the student is independent of it.
    assert adapter.num_layers(teacher.config) == 6 and len(adapter.layers(teacher)) == 6
    s_params = {id(p) for p in student.parameters()}
    assert not any(id(p) in s_params for p in teacher.parameters())
    ids = torch.randint(5, 60, (2, 7))
    out = student(input_ids=ids).logits
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, out, atol=1e-6)


def test_student_layers_by_count():
    student = init_student_from_teacher(_model("bert"), num_layers=3)
    assert student.config.hfcompress_student_layers == [1, 3, 5]


@pytest.mark.parametrize("layers, message", [([0, 6], "out of range"), ([1, 1], "repeat"), ([], "at least one")])
def test_student_rejects_bad_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        init_student_from_teacher(_model("bert"), layers=layers)


def test_unknown_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    m = GPT2ForSequenceClassification(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64))
    with pytest.raises(NotImplementedError, match="no architecture adapter for model_type 'gpt2'"):
        init_student_from_teacher(m, num_layers=1)
