"""Gradient accumulation must not change the loss scale: 4 accumulated micro-batches of 8 give the gradients of one
batch of 32. Tolerance: max |g_a - g_b| <= 1e-5 * max |g_b| + 1e-7 (float32; padding differs between the two
batchings, which changes summation order only)."""

import pytest
import torch
from conftest import GradCapture, make_dataset, make_tokenizer, tiny_bert, tiny_mpnet
from transformers import Trainer, TrainingArguments

from hfcompress import (
    DistillationArguments,
    DistillationCallback,
    DistillationConfig,
    DistillationDataCollator,
    DistillationLoss,
    DistillationTrainer,
)
from hfcompress.data import tokenize


def assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        scale = b[name].abs().max().item()
        diff = (a[name] - b[name]).abs().max().item()
        assert diff <= 1e-5 * scale + 1e-7, f"{name}: max diff {diff:.3g} vs scale {scale:.3g}"


def _data():
    tok = make_tokenizer()
    return tok, tokenize(make_dataset(n_train=64), tok)["train"].rename_column("label", "labels")


def _distill_grads(bs, ga, tmp_path, hidden=True):
    tok, train = _data()
    student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)  # widths 32 vs 48: a learned projection
    args = DistillationArguments(
        output_dir=str(tmp_path / f"run-{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=1, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=7,
        temperature=2.0, alpha=0.7, hidden_weight=1.0 if hidden else 0.0, layer_map="1:2,2:4", use_cpu=True,
    )
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=train,
                                  data_collator=DistillationDataCollator(tok))
    cap = GradCapture(trainer.distillation_loss)
    trainer.add_callback(cap)
    trainer.train()
    return cap


def test_accumulated_microbatches_match_one_batch(tmp_path):
    one = _distill_grads(32, 1, tmp_path)
    acc = _distill_grads(8, 4, tmp_path)
    assert any(n.startswith("kd.projections") for n in one.grads), "projection gradients must be captured"
    assert_same_grads(acc.grads, one.grads)
    # The logged loss is the loss of the whole 32-example batch in both cases.
    assert acc.losses[0] == pytest.approx(one.losses[0], rel=1e-4)


def test_plain_trainer_compute_loss_func_matches_under_accumulation(tmp_path):
    """The same loss as a `compute_loss_func` on an unmodified Trainer, with the same guarantee."""
    def run(bs, ga):
        tok, train = _data()
        student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)
        kd = DistillationLoss(DistillationConfig(alpha=0.7, hidden_weight=1.0, layer_map="1:2,2:4"), student.config, teacher)
        kd.attach(student)
        args = TrainingArguments(output_dir=str(tmp_path / f"p-{bs}-{ga}"), per_device_train_batch_size=bs,
                                 gradient_accumulation_steps=ga, max_steps=1, max_grad_norm=0.0, report_to="none",
                                 save_strategy="no", seed=7, use_cpu=True, remove_unused_columns=False)
        cap = GradCapture(kd)
        trainer = Trainer(model=student, args=args, train_dataset=train, data_collator=DistillationDataCollator(tok),
                          compute_loss_func=kd, callbacks=[DistillationCallback(kd), cap])
        trainer.train()
        return cap.grads

    one, acc = run(32, 1), run(8, 4)
    assert any(n.startswith("kd.projections") for n in one)
    assert_same_grads(acc, one)


def test_trainer_and_compute_loss_func_agree(tmp_path):
    """DistillationTrainer and the plain-Trainer path compute the same gradients (one mechanism)."""
    via_trainer = _distill_grads(16, 2, tmp_path).grads

    tok, train = _data()
    student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)
    kd = DistillationLoss(DistillationConfig(alpha=0.7, hidden_weight=1.0, layer_map="1:2,2:4"), student.config, teacher)
    # Same projection initialisation as inside DistillationTrainer (built after the Trainer seeds).
    torch.manual_seed(7)
    args = TrainingArguments(output_dir=str(tmp_path / "p"), per_device_train_batch_size=16, gradient_accumulation_steps=2,
                             max_steps=1, max_grad_norm=0.0, report_to="none", save_strategy="no", seed=7,
                             use_cpu=True, remove_unused_columns=False)
    cap = GradCapture(kd)
    trainer = Trainer(model=student, args=args, train_dataset=train, data_collator=DistillationDataCollator(tok),
                      compute_loss_func=kd.attach(student), callbacks=[DistillationCallback(kd), cap])
    kd.load_state_dict(_distill_projection_init(tmp_path))
    trainer.train()
    student_only = {n: g for n, g in cap.grads.items() if not n.startswith("kd.")}
    assert_same_grads(student_only, {n: g for n, g in via_trainer.items() if not n.startswith("kd.")})


def _distill_projection_init(tmp_path):
    tok, train = _data()
    args = DistillationArguments(output_dir=str(tmp_path / "init"), max_steps=1, report_to="none", seed=7,
                                 hidden_weight=1.0, layer_map="1:2,2:4", use_cpu=True, alpha=0.7)
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=tiny_mpnet(seed=1),
                                  train_dataset=train, data_collator=DistillationDataCollator(tok))
    return {k: v.clone() for k, v in trainer.distillation_loss.state_dict().items()}
