"""Checks on the real offline assets (MiniLM-L6, MPNet-base, Rotten Tomatoes). Install them with
`python -m hfcompress.assets install`; without them these tests are skipped."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress import assets

pytestmark = pytest.mark.slow


def need(*names):
    missing = [n for n in names if not assets.is_installed(n)]
    if missing:
        pytest.skip(f"offline assets not installed: {missing} (python -m hfcompress.assets install)")


@pytest.fixture(scope="module")
def rt():
    need("rotten-tomatoes")
    from hfcompress.data import load_rotten_tomatoes

    return load_rotten_tomatoes()


def test_rotten_tomatoes_split(rt):
    assert {k: len(v) for k, v in rt.items()} == {"train": 10202, "validation": 1275, "test": 1275}
    labels = np.concatenate([np.asarray(rt[s]["label"]) for s in rt])
    assert (labels == 1).sum() == 7368 and (labels == 0).sum() == 5384
    texts = [t for s in rt for t in rt[s]["text"]]
    assert len(set(texts)) == len(texts)
    assert rt["train"].features["label"].names == ["rotten", "fresh"]


def test_minilm_and_mpnet_tokenizations_align(rt):
    need("minilm-l6", "mpnet-base")
    from hfcompress.run.data import tokenizers_align

    mini = AutoTokenizer.from_pretrained(assets.resolve_model_path("minilm-l6"))
    mp = AutoTokenizer.from_pretrained(assets.resolve_model_path("mpnet-base"))
    assert not tokenizers_align(mini, mp)
    texts = rt["test"]["text"][:300]
    a = mini(texts, truncation=True, max_length=128)["input_ids"]
    b = mp(texts, truncation=True, max_length=128)["input_ids"]
    assert [len(x) for x in a] == [len(x) for x in b]
    assert all(mini.convert_ids_to_tokens(x)[1:-1] == mp.convert_ids_to_tokens(y)[1:-1] for x, y in zip(a, b))


def test_real_student_from_minilm_and_hidden_kd_step_from_mpnet(rt, tmp_path):
    need("minilm-l6", "mpnet-base")
    from contextlib import nullcontext

    from hfcompress import (
        DistillationArguments,
        DistillationDataCollator,
        DistillationTrainer,
        init_student_from_teacher,
    )
    from hfcompress.run.data import cache_teacher_on_train, tokenize_for_distillation

    mini_path, mp_path = assets.resolve_model_path("minilm-l6"), assets.resolve_model_path("mpnet-base")
    labels = {"id2label": {0: "rotten", 1: "fresh"}, "label2id": {"rotten": 0, "fresh": 1}}
    base = AutoModelForSequenceClassification.from_pretrained(mini_path, num_labels=2, **labels)
    student = init_student_from_teacher(base, layers=[1, 3, 5])
    assert student.config.num_hidden_layers == 3 and student.config.hidden_size == 384
    teacher = AutoModelForSequenceClassification.from_pretrained(mp_path, num_labels=2, **labels)
    small = rt.map(lambda x: x)  # copy
    for s in small:
        small[s] = small[s].select(range(16))
    mini_tok, mp_tok = AutoTokenizer.from_pretrained(mini_path), AutoTokenizer.from_pretrained(mp_path)
    tokenized, separate = tokenize_for_distillation(small, mini_tok, mp_tok, "text", "label", 64)
    collator = DistillationDataCollator(mini_tok, mp_tok)
    cached, meta = cache_teacher_on_train(tokenized, mp_path, lambda: teacher, collator, str(tmp_path / "cache"),
                                          [6, 12], separate, 8, lambda desc=None: nullcontext())
    args = DistillationArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8,
                                 report_to="none", save_strategy="no", use_cpu=True, hidden_weight=1.0,
                                 layer_map="2:6,3:12", logging_steps=1)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=cached["train"], data_collator=collator,
                                  teacher_config=teacher.config, cached_hidden_layers=meta["hidden_layers"])
    before = {k: v.clone() for k, v in trainer.distillation_loss.state_dict().items()}
    trainer.train()
    assert trainer.distillation_loss.projections["2_6"].weight.shape == (768, 384)
    assert any(not torch.equal(before[k], v) for k, v in trainer.distillation_loss.state_dict().items())
    logs = [h for h in trainer.state.log_history if "loss_hidden" in h]
    assert logs and all(np.isfinite(h["loss"]) for h in logs)
