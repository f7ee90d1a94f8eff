"""Unstructured pruning mechanism: schedule, masks, movement scores (straight-through), gradient accumulation,
the callback in plain and distillation trainers (logs, fold), compact checkpoints, and configuration errors."""

import os

import pytest
import torch
from conftest import make_dataset, make_tokenizer, tiny_bert, tiny_mpnet
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from hfcompress import (
    DistillationArguments,
    DistillationDataCollator,
    DistillationTrainer,
    Pruner,
    PruningCallback,
    PruningConfig,
    load_sparse,
    save_sparse,
)
from hfcompress.data import tokenize
from hfcompress.errors import UserInputError
from hfcompress.prune import CubicSchedule
from hfcompress.prune.masks import MaskedLinear, global_topk_masks, topk_mask
from hfcompress.prune.sparse import SPARSE_WEIGHTS_NAME


def _train_data(n=64):
    tok = make_tokenizer()
    return tok, tokenize(make_dataset(n_train=n), tok)["train"].rename_column("label", "labels")


def test_cubic_schedule_warmup_ramp_cooldown():
    s = CubicSchedule(final=0.9, start=10, end=50)
    assert s(0) == s(9) == 0.0
    assert s(10) == 0.0 and s(50) == s(80) == 0.9
    assert s(30) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    values = [s(t) for t in range(10, 51)]
    assert all(b >= a for a, b in zip(values, values[1:])), "sparsity never decreases"
    assert values[1] - values[0] > values[-1] - values[-2], "cubic: fast at first, slow near the end"
    assert [s.phase(t) for t in (5, 20, 60)] == ["warmup", "ramp", "cooldown"]


def test_config_schedule_in_steps_and_errors():
    assert PruningConfig(pruning_start=0.1, pruning_end=0.7).steps(100) == (10, 70)
    assert PruningConfig(pruning_start=5, pruning_end=40).steps(100) == (5, 40)
    for bad in ({"target_sparsity": 1.0}, {"target_sparsity": -0.1}, {"method": "random"}, {"scope": "layer"},
                {"pruning_start": 0.8, "pruning_end": 0.5}, {"target_modules": "("}, {"mask_update_every": 0}):
        with pytest.raises(UserInputError, match=next(iter(bad))):
            PruningConfig(**bad)
    with pytest.raises(UserInputError, match="beyond the end of training"):
        PruningConfig(pruning_end=500).steps(100)


def test_topk_masks_local_and_global():
    torch.manual_seed(0)
    a, b = torch.randn(10, 20), torch.randn(30, 20) * 3
    m = topk_mask(a, 0.75)
    assert int(m.sum()) == 50 and a[m].min() >= a[~m].max()
    g = global_topk_masks({"a": a, "b": b}, 0.75)
    kept = int(g["a"].sum() + g["b"].sum())
    assert kept == 200
    assert min(a[g["a"]].min(), b[g["b"]].min()) >= max(a[~g["a"]].max(), b[~g["b"]].max())
    assert g["b"].float().mean() > g["a"].float().mean(), "global: the larger-scored matrix keeps more"


def test_default_targets_are_encoder_projections_only():
    model = tiny_bert(num_layers=2)
    p = Pruner(model, PruningConfig(method="magnitude"))
    assert len(p.targets) == 12 and all(type(m) is MaskedLinear for m in p.targets.values())
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in p.targets)
    p2 = Pruner(tiny_mpnet(num_layers=1), PruningConfig(target_modules=r".*attn\.(q|k)$"))
    assert [n.rsplit(".", 1)[1] for n in p2.targets] == ["q", "k"]


def test_movement_score_is_minus_grad_times_weight_straight_through():
    """One backward: the score's gradient is dL/dW' * W for every entry, pruned ones included (so they can come
    back), and the score takes AdamW's first step on it: -lr * g / (|g| + eps)."""
    torch.manual_seed(0)
    model = tiny_bert(num_layers=1)
    pruner = Pruner(model, PruningConfig(method="movement", target_sparsity=0.5))
    name, layer = next(iter(pruner.targets.items()))
    pruner.states[name].mask = topk_mask(torch.randn_like(layer.weight), 0.5)  # half pruned
    mask = pruner.states[name].mask.clone()
    tok = make_tokenizer()
    batch = tok(["good movie", "bad plot very dull"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    grad = pruner.states[name].grad_times_weight.clone()
    pruner.before_optimizer_step()
    score = pruner.scores[name]
    # Reference without hooks: the same model with the masked weight as a plain parameter; its gradient is dL/dW'.
    model2 = tiny_bert(num_layers=1)
    model2.load_state_dict(model.state_dict())
    lin2 = dict(model2.named_modules())[name]
    lin2.weight = torch.nn.Parameter(lin2.weight.detach() * mask)
    model2(**batch, labels=torch.tensor([1, 0])).loss.backward()
    expected = lin2.weight.grad * layer.weight.detach()
    assert torch.allclose(grad, expected, atol=1e-12, rtol=1e-5)
    assert grad[~mask].abs().sum() > 0, "pruned weights still get a score gradient (straight-through)"
    lr = pruner.config.score_learning_rate
    assert torch.allclose(score, -lr * grad / (grad.abs() + 1e-8), rtol=1e-5, atol=1e-9)
    assert torch.all(layer.weight.grad[~mask] == 0), "pruned weights get no weight gradient"


class MaskCapture(TrainerCallback):
    def __init__(self, pruner_cb):
        self.cb, self.scores = pruner_cb, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.scores is None:
            self.scores = {n: s.clone() for n, s in self.cb.pruner.scores.items()}
            self.masks = {n: st.mask.clone() for n, st in self.cb.pruner.states.items()}


def _distill_prune(bs, ga, tmp_path):
    tok, train = _train_data()
    cb = PruningCallback(PruningConfig(method="movement", target_sparsity=0.5, pruning_start=0, pruning_end=1))
    cap = MaskCapture(cb)
    args = DistillationArguments(
        output_dir=str(tmp_path / f"r{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=2, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=7, use_cpu=True,
        alpha=0.7, hidden_weight=1.0, layer_map="1:2,2:4",
    )
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=tiny_mpnet(seed=1),
                                  train_dataset=train, data_collator=DistillationDataCollator(tok), callbacks=[cb, cap])
    trainer.train()
    return cap


def test_accumulated_microbatches_give_the_scores_and_masks_of_one_batch(tmp_path):
    """Movement pruning inside DistillationTrainer (one run, both methods): 4 x 8 accumulated == 1 x 32.
    (Scores to 1e-4 of their scale: Adam divides each step by |g|, so where |g| is near its epsilon the float
    rounding of the two summation orders shows more than in the gradients themselves.)"""
    one, acc = _distill_prune(32, 1, tmp_path), _distill_prune(8, 4, tmp_path)
    assert all(s.abs().max() > 0 for s in one.scores.values()), "movement scores must have moved"
    for n in one.scores:
        scale = one.scores[n].abs().max().item()
        assert (acc.scores[n] - one.scores[n]).abs().max().item() <= 1e-4 * scale + 1e-9, n
        assert torch.equal(acc.masks[n], one.masks[n]), n


class LogOrder(TrainerCallback):
    """Stands for a reporting integration (TensorBoard, W&B): records what its on_log sees."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.seen.append(dict(logs))


def test_plain_trainer_three_lines_logs_folds_and_saves_compact(tmp_path):
    tok, train = _train_data()
    reporter = LogOrder()
    args = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=8, num_train_epochs=3,
                             logging_steps=4, report_to="none", use_cpu=True, save_strategy="no")
    model = tiny_bert(seed=3)
    cb = PruningCallback(method="magnitude", target_sparsity=0.75, pruning_start=0.0, pruning_end=0.5)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[reporter, cb])  # the reporter is listed first, like report_to integrations
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("sparsity_target" in h and "sparsity" in h for h in logged)
    assert logged[-1]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert all("sparsity" in s for s in reporter.seen), "reporting callbacks must see the sparsity values"
    # Folded: plain Linear layers whose weights hold the zeros.
    q = model.bert.encoder.layer[0].attention.self.query
    assert type(q) is torch.nn.Linear and float((q.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    assert cb.summary["reached_sparsity"] == pytest.approx(0.75, abs=0.01)
    save_sparse(model, str(tmp_path / "compact"), tok)
    trainer.save_model(str(tmp_path / "dense"))
    compact = os.path.getsize(tmp_path / "compact" / SPARSE_WEIGHTS_NAME)
    dense = os.path.getsize(tmp_path / "dense" / "model.safetensors")
    assert compact < 0.75 * dense
    back = load_sparse(str(tmp_path / "compact"))
    x = tok(["good movie", "the plot"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, model(**x).logits)


def test_schedule_beyond_training_is_an_error_before_the_first_step(tmp_path):
    tok, train = _train_data()
    cb = PruningCallback(target_sparsity=0.5, pruning_end=100)
    args = TrainingArguments(output_dir=str(tmp_path / "x"), per_device_train_batch_size=8, max_steps=10,
                             report_to="none", use_cpu=True, save_strategy="no")
    model = tiny_bert(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok), callbacks=[cb])
    with pytest.raises(UserInputError, match="beyond the end of training"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plain_trainer_example_runs_on_a_csv(tmp_path):
    """examples/prune_with_plain_trainer.py, as written, on a user's CSV with string labels."""
    import json
    import subprocess
    import sys

    from conftest import write_reviews_csv

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model_dir = tmp_path / "model"
    tiny_bert(num_layers=2, seed=0).base_model.save_pretrained(model_dir)  # an encoder: the example adds the head
    make_tokenizer().save_pretrained(model_dir)
    write_reviews_csv(tmp_path / "reviews.csv", 64, 7)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "examples/prune_with_plain_trainer.py", "--model", str(model_dir),
                        "--dataset", str(tmp_path / "reviews.csv"), "--per_device_train_batch_size", "8",
                        "--max_steps", "10", "--target_sparsity", "0.7", "--logging_steps", "2",
                        "--output_dir", str(out), "--use_cpu", "--save_strategy", "steps", "--save_steps", "10"],
                       cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=root, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval_accuracy" in r.stdout + r.stderr
    assert "gemm_4bit" not in r.stderr  # hfcompress is imported before Trainer (seen only on AVX512-BF16 CPUs)
    assert (out / "model" / SPARSE_WEIGHTS_NAME).exists() and not (out / "model" / "model.safetensors").exists()
    model = load_sparse(str(out / "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    q = model.bert.encoder.layer[0].attention.self.query.weight
    assert float((q == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    state = json.load(open(out / "checkpoint-10" / "trainer_state.json"))
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged[-1]["sparsity"] == pytest.approx(0.7, abs=0.01) and "sparsity_target" in logged[0]
    assert (out / "checkpoint-10" / "pruning_state.safetensors").exists()
