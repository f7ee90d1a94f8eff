"""Staged distillation in one run (TinyBERT): intermediate terms first, prediction terms after
`intermediate_fraction` of the optimizer steps, in DistillationTrainer, in a plain Trainer with DistillationCallback,
and across a resume."""

import os

import pytest
import torch
from conftest import make_dataset, make_tokenizer, tiny_bert, tiny_mpnet
from transformers import Trainer, TrainerCallback, TrainingArguments

from hfcompress import (
    DistillationArguments,
    DistillationCallback,
    DistillationConfig,
    DistillationDataCollator,
    DistillationLoss,
    DistillationTrainer,
)
from hfcompress.data import tokenize

INTERMEDIATE = {"loss_hidden", "loss_relation"}
PREDICTION = {"loss_kd", "loss_ce"}


@pytest.mark.parametrize("kwargs, message", [
    ({"intermediate_fraction": 0.5}, "intermediate_fraction=0.5 stages training, but no intermediate term is on: set "
                                     "hidden_weight, attention_weight or relation_weight"),
    ({"intermediate_fraction": 1.0, "hidden_weight": 1.0}, r"intermediate_fraction must be in \[0, 1\)"),
    ({"intermediate_fraction": -0.1, "hidden_weight": 1.0}, r"intermediate_fraction must be in \[0, 1\)"),
    ({"intermediate_fraction": 0.5, "hidden_weight": 1.0, "alpha": 1.0, "logit_weight": 0.0},
     "leaves a second stage with no term"),
])
def test_staged_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**kwargs)


def test_stage_follows_the_progress():
    cfg = DistillationConfig(hidden_weight=1.0, intermediate_fraction=0.3)
    kd = DistillationLoss(cfg, tiny_bert().config, tiny_mpnet())
    assert kd.intermediate_steps(10) == 3 and kd.intermediate_steps(1) == 1
    with pytest.raises(RuntimeError, match="DistillationCallback"):
        kd.stage  # no progress known: an error, not a silent single stage
    stages = []
    for step in range(10):
        kd.set_progress(step, 10)
        stages.append(kd.stage)
    assert stages == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    # What each stage asks of the student and the teacher
    kd.set_progress(0, 10)
    assert kd.student_forward_kwargs() == {"output_hidden_states": True}
    ids = torch.randint(5, 18, (2, 5))
    out = kd.teacher_outputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert out.hidden_states
    kd.set_progress(5, 10)
    assert kd.student_forward_kwargs() == {}
    t_out = kd.teacher_outputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert t_out.hidden_states == {} and t_out.logits is not None
    # not staged: stage 0, everything together, no progress needed
    assert DistillationLoss(DistillationConfig(hidden_weight=1.0), tiny_bert().config, tiny_mpnet()).stage == 0


def _data():
    tok = make_tokenizer()
    return tok, tokenize(make_dataset(n_train=64), tok)["train"].rename_column("label", "labels")


class PartsRecorder(TrainerCallback):
    """The loss parts and parameters seen at the end of every optimizer step."""

    def __init__(self, kd):
        self.kd, self.parts, self.classifier, self.projection = kd, {}, {}, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.parts[state.global_step] = set(self.kd.last_parts)
        self.classifier[state.global_step] = model.classifier.weight.detach().clone()
        p = next(iter(self.kd.parameters()), None)
        if p is not None:
            self.projection[state.global_step] = p.detach().clone()


def _args(cls, out, **kw):
    common = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=6, report_to="none", save_strategy="no",
                  logging_steps=1, seed=11, use_cpu=True)
    common.update(kw)
    return cls(**common)


STAGED = dict(alpha=0.5, hidden_weight=1.0, layer_map="1:2,2:4", relation_weight=1.0, intermediate_fraction=0.5)


def _check_switch(log_history, recorder, switch=3):
    logs = {h["step"]: h for h in log_history if "loss" in h}
    assert sorted(logs) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        stage = 1 if step <= switch else 2
        assert logs[step]["distill_stage"] == stage, (step, logs[step])
        assert recorder.parts[step] == (INTERMEDIATE if stage == 1 else PREDICTION), (step, recorder.parts[step])
    # Stage 1 does not touch the classifier; stage 2 does not touch the projections.
    assert torch.equal(recorder.classifier[1], recorder.classifier[switch])
    assert not torch.equal(recorder.classifier[switch], recorder.classifier[6])
    if recorder.projection:
        assert not torch.equal(recorder.projection[1], recorder.projection[switch])
        assert torch.equal(recorder.projection[switch + 1], recorder.projection[6])


def test_distillation_trainer_switches_stage(tmp_path):
    tok, train = _data()
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=_args(DistillationArguments, tmp_path, **STAGED),
                                  teacher_model=tiny_mpnet(seed=1), train_dataset=train,
                                  data_collator=DistillationDataCollator(tok))
    rec = PartsRecorder(trainer.distillation_loss)
    trainer.add_callback(rec)
    trainer.train()
    _check_switch(trainer.state.log_history, rec)
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert "loss_hidden" in logs[1] and "loss_relation" in logs[1] and "loss_kd" not in logs[1]
    assert "loss_kd" in logs[6] and "loss_ce" in logs[6] and "loss_hidden" not in logs[6]


def test_plain_trainer_with_callback_switches_stage(tmp_path):
    tok, train = _data()
    student = tiny_bert(seed=0)
    kd = DistillationLoss(DistillationConfig(**STAGED), student.config, tiny_mpnet(seed=1)).attach(student)
    rec = PartsRecorder(kd)
    trainer = Trainer(model=student, args=_args(TrainingArguments, tmp_path, remove_unused_columns=False),
                      train_dataset=train, data_collator=DistillationDataCollator(tok), compute_loss_func=kd,
                      callbacks=[DistillationCallback(kd), rec])
    trainer.train()
    _check_switch(trainer.state.log_history, rec)


def test_plain_trainer_without_callback_is_an_error(tmp_path):
    tok, train = _data()
    student = tiny_bert(seed=0)
    kd = DistillationLoss(DistillationConfig(**STAGED), student.config, tiny_mpnet(seed=1)).attach(student)
    trainer = Trainer(model=student, args=_args(TrainingArguments, tmp_path, remove_unused_columns=False),
                      train_dataset=train, data_collator=DistillationDataCollator(tok), compute_loss_func=kd)
    with pytest.raises(RuntimeError, match="needs the training progress.*DistillationCallback"):
        trainer.train()


def test_stage_is_right_after_resume(tmp_path):
    """Checkpoint at step 2 (inside stage 1); the resumed run finishes stage 1 at step 3, switches at step 4, and
    ends with the weights of the uninterrupted run."""
    tok, train = _data()

    def make(out):
        args = _args(DistillationArguments, out, save_strategy="steps", save_steps=2, **STAGED)
        return DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=tiny_mpnet(seed=1),
                                   train_dataset=train, data_collator=DistillationDataCollator(tok))

    full = make(tmp_path / "full")
    full.train()
    resumed = make(tmp_path / "resumed")
    rec = PartsRecorder(resumed.distillation_loss)
    resumed.add_callback(rec)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert sorted(rec.parts) == [3, 4, 5, 6]
    assert rec.parts[3] == INTERMEDIATE and rec.parts[4] == PREDICTION
    logs = {h["step"]: h["distill_stage"] for h in resumed.state.log_history if "loss" in h}
    assert logs == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}  # steps 1-2: history restored from the checkpoint
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert os.path.exists(tmp_path / "full" / "checkpoint-2" / "distillation_projections.safetensors")
