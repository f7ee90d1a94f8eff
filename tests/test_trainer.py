import os

import torch
from conftest import make_dataset, make_tokenizer, tiny_bert, tiny_mpnet
from safetensors.torch import load_file

from hfcompress import DistillationArguments, DistillationDataCollator, DistillationTrainer
from hfcompress.data import tokenize
from hfcompress.metrics import compute_classification_metrics


def test_teacher_is_frozen_in_eval_mode_not_optimised_not_saved(tmp_path):
    tok = make_tokenizer()
    data = tokenize(make_dataset(), tok)
    teacher = tiny_mpnet(seed=1)
    teacher.train()  # whatever mode it arrives in
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = DistillationArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, report_to="none",
                                 save_strategy="steps", save_steps=3, use_cpu=True, hidden_weight=1.0, attention_weight=0.5,
                                 layer_map="1:2,2:4", eval_strategy="steps", eval_steps=3, logging_steps=1)
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=teacher, train_dataset=data["train"],
                                  eval_dataset=data["validation"], data_collator=DistillationDataCollator(tok),
                                  compute_metrics=compute_classification_metrics)
    trainer.train()
    t = trainer.teacher_model
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert next(t.parameters()).device == trainer.args.device
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in t.parameters())
    assert all(id(p) in in_optimizer for p in trainer.distillation_loss.parameters())
    assert all(torch.equal(teacher_before[k], v) for k, v in t.state_dict().items())
    saved = load_file(os.path.join(tmp_path, "checkpoint-3", "model.safetensors"))
    assert set(saved) == set(trainer.model.state_dict()), "only the student is saved"
    assert os.path.exists(os.path.join(tmp_path, "checkpoint-3", "distillation_projections.safetensors"))
    logged = [h for h in trainer.state.log_history if "loss_attention" in h]
    assert logged, "attention-map distillation must have run (eager attention)"
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    assert evals and 0.0 <= evals[0]["eval_accuracy"] <= 1.0
