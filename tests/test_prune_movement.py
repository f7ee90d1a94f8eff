"""Movement pruning as Sanh et al.'s reference trains it (issue 26): the scores take AdamW steps on the weights'
learning-rate schedule, from the clipped straight-through gradient; soft movement keeps sigmoid(S) > tau with tau
scheduled and the regulariser deciding how many weights go.

The known-answer case: a linear student of a linear teacher whose few informative weights start near zero, while
large weights sit in a null direction of the loss (the same value in both rows of a 2-class softmax layer, so they
do not change the prediction as long as both are kept). The loss is flat along those weights, so their gradients
are pure noise of size |g|, and the raw sum of -g * W random-walks with amplitude |W| * |g|: it keeps null-direction
weights, one of a pair, and the prediction drowns in the other's noise. Adam-normalised scores keep the weights whose
movement is consistent."""

import json

import pytest
import torch
import torch.nn as nn
from conftest import make_dataset, make_tokenizer, tiny_bert
from safetensors import safe_open
from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

from hfcompress import Pruner, PruningCallback, PruningConfig
from hfcompress.data import tokenize
from hfcompress.errors import UserInputError
from hfcompress.prune.masks import topk_mask
from hfcompress.prune.pruner import STATE_NAME, save_state

INFORMATIVE = torch.tensor([2.0, -2.0, 1.5, -1.5])


class RawSumPruner(Pruner):
    """The rule of hfcompress before issue 26: S -= dL/dW' * W every step, no optimizer."""

    def before_optimizer_step(self, lr_scale=1.0, grad_scale=None):
        for name, g in self.step_gradients().items():
            self._score(name).sub_(g)


class LinearStudent(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, 2, bias=False)

    def forward(self, x, labels=None):
        logits = self.lin(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def _teacher_task(seed, d=64, null_scale=8.0):
    """(student, sample(n) -> (x, y)): labels from the 4 informative features; the student's informative weights start
    at ~0.01, its 60 others in the softmax's null direction at |W| 4 to 12."""
    g = torch.Generator().manual_seed(seed)
    k = len(INFORMATIVE)

    def sample(n):
        x = torch.randn(n, d, generator=g)
        return x, (x[:, :k] @ INFORMATIVE > 0).long()

    student = LinearStudent(d)
    with torch.no_grad():
        common = (torch.rand(d, generator=g) + 0.5) * null_scale * torch.sign(torch.randn(d, generator=g))
        w = common[None, :].repeat(2, 1)
        w[:, :k] = 0.01 * torch.randn(2, k, generator=g)
        student.lin.weight.copy_(w)
    return student, sample


def _prune_linear_student(pruner_cls, seed, steps=300):
    student, sample = _teacher_task(seed)
    d, k = student.lin.in_features, len(INFORMATIVE)
    pruner = pruner_cls(student, PruningConfig(method="movement", target_sparsity=1 - k / d, target_modules="lin"))
    pruner.set_total_steps(steps)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.0)
    for t in range(1, steps + 1):
        x, y = sample(8)
        student(x, y)["loss"].backward()
        pruner.before_optimizer_step(lr_scale=1 - (t - 1) / steps)  # a linear decay, as the Trainer's default
        opt.step()
        opt.zero_grad()
        pruner.step(t)
    pruner.fold()
    x, y = sample(4000)
    with torch.no_grad():
        accuracy = (student(x, y)["logits"].argmax(-1) == y).float().mean().item()
    kept_informative = int((student.lin.weight[:, :k] != 0).sum())
    return accuracy, kept_informative


@pytest.mark.parametrize("seed", [0, 1])
def test_movement_keeps_the_informative_weights_raw_sums_lose(seed):
    """Keep 8 of 128 weights: exactly the teacher's 8 (4 features x 2 rows). The teacher is 100% accurate."""
    accuracy, kept = _prune_linear_student(Pruner, seed)
    assert kept == 8, "movement keeps every informative weight"
    assert accuracy > 0.95
    raw_accuracy, raw_kept = _prune_linear_student(RawSumPruner, seed)
    assert raw_kept < 8 and raw_accuracy < 0.7, "the raw-sum score keeps null-direction weights instead"


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_scores_take_the_adamw_steps_of_a_param_group_on_the_trainers_schedule(tmp_path):
    """Through a plain Trainer (linear lr decay, clipping active) the scores end where a reference loop ends that
    keeps them as a torch.optim.AdamW param group (lr 1e-2, no weight decay) on the same LambdaLR, with a
    straight-through top-k mask and the weights' clipping coefficient applied to their gradient."""
    steps, sparsity, max_norm, lr = 12, 0.5, 0.05, 1e-2
    student, sample = _teacher_task(3, d=16, null_scale=1.0)
    x, y = sample(32)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    config = PruningConfig(method="movement", target_sparsity=sparsity, target_modules="lin", pruning_start=0.25,
                           pruning_end=0.75)
    cb = PruningCallback(config)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=32, max_steps=steps,
                             learning_rate=lr, max_grad_norm=max_norm, weight_decay=0.0, lr_scheduler_type="linear",
                             report_to="none", use_cpu=True, save_strategy="no", logging_steps=100, seed=0)
    Trainer(model=student, args=args, train_dataset=_Rows(x, y), callbacks=[cb]).train()  # full batch each step

    ref = LinearStudent(x.shape[1])
    ref.load_state_dict(init)
    scores = nn.Parameter(torch.zeros_like(ref.lin.weight))
    opt = torch.optim.AdamW([{"params": list(ref.parameters()), "lr": lr, "weight_decay": 0.0},
                             {"params": [scores], "lr": 1e-2, "weight_decay": 0.0}], lr=lr)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    schedule = cb.pruner.schedule
    mask = torch.ones_like(scores, dtype=torch.bool)
    clipped = 0
    for t in range(1, steps + 1):
        # W' = W * M with M straight-through in S: dL/dS = dL/dW' * W, dL/dW = dL/dW' * M.
        m = mask.float() + scores - scores.detach()
        logits = x @ (ref.lin.weight * m).t()
        nn.functional.cross_entropy(logits, y).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        c = min(1.0, max_norm / (float(norm) + 1e-6))
        clipped += c < 1
        scores.grad.mul_(c)
        opt.step()
        sched.step()
        opt.zero_grad()
        mask = topk_mask(scores.detach(), schedule(t)) if schedule(t) > 0 else torch.ones_like(mask)
    assert clipped >= steps // 2, "the case must exercise clipping"
    ours = cb.pruner.scores["lin"]
    assert torch.allclose(ours, scores.detach(), rtol=1e-4, atol=1e-6), (ours - scores).abs().max()
    assert torch.equal(student.lin.weight != 0, mask)
    assert torch.allclose(student.lin.weight, ref.lin.weight.detach() * mask, rtol=1e-4, atol=1e-6)


def _soft_run(tmp_path, lam, name):
    tok = make_tokenizer()
    train = tokenize(make_dataset(n_train=64), tok)["train"].rename_column("label", "labels")
    from transformers import DataCollatorWithPadding

    cb = PruningCallback(method="soft_movement", target_sparsity=0.6, pruning_start=0.1, pruning_end=0.5,
                         score_learning_rate=0.5, regularization_weight=lam, fold_at_end=False)
    args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_steps=16,
                             logging_steps=4, report_to="none", use_cpu=True, save_strategy="no")
    trainer = Trainer(model=tiny_bert(seed=1), args=args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tok), callbacks=[cb])
    trainer.train()
    return cb.pruner, trainer.state.log_history


def test_soft_movement_keeps_sigmoid_above_the_scheduled_threshold_and_the_regulariser_sets_how_many(tmp_path):
    dense, _ = _soft_run(tmp_path, 0.0, "l0")
    sparse, logs = _soft_run(tmp_path, 1e4, "l1")
    assert sparse.thresholds["tau"] == pytest.approx(0.1), "tau ramps to soft_threshold with the schedule"
    taus = [h["pruning_threshold"] for h in logs if "pruning_threshold" in h]
    assert taus == sorted(taus) and 0 < taus[0] < 0.1
    for name, s in sparse.scores.items():
        kept = torch.sigmoid(s) > 0.1
        floor = int(0.005 * s.numel()) + 1
        if int(kept.sum()) >= floor:
            assert torch.equal(sparse.states[name].mask, kept), name
        else:  # the reference's floor: at least 0.5% (+1) of a matrix stays, its highest scores
            assert int(sparse.states[name].mask.sum()) == floor, name
    assert sparse.sparsity() > 0.5 > dense.sparsity(), (sparse.sparsity(), dense.sparsity())
    summary = sparse.fold()
    assert summary["reached_sparsity"] == pytest.approx(sparse.sparsity()), "no cut after the last training step"


def test_resuming_a_checkpoint_of_the_raw_sum_rule_is_refused(tmp_path):
    config = PruningConfig(method="movement", target_sparsity=0.5)
    old = Pruner(tiny_bert(num_layers=1), config)
    meta = {k: v for k, v in old.meta().items() if k != "score_rule"}
    save_state(str(tmp_path), config, old.state_dict(), meta)
    with pytest.raises(UserInputError, match="older hfcompress"):
        Pruner(tiny_bert(num_layers=1), config).load(str(tmp_path))
    old.save(str(tmp_path / "new"))
    assert Pruner(tiny_bert(num_layers=1), config).load(str(tmp_path / "new"))
    with safe_open(str(tmp_path / "new" / STATE_NAME), "pt") as fh:
        assert json.loads(fh.metadata()["meta"])["score_rule"] == "adamw-v1"
        assert any(k.startswith("exp_avg_sq.") for k in fh.keys()), "hard movement's Adam moments are checkpointed"


def test_soft_movement_too_short_to_prune_is_said_before_training(caplog):
    """A score must fall from 0 below logit(tau) (-2.2 for tau 0.1) and AdamW moves it ~score_learning_rate a step:
    128 steps at 1e-2 (the MiniLM benchmark's budget, which pruned nothing) are too few, and the run says so when
    its schedule is set; 500 steps, or a higher rate, are not; hard movement and magnitude never warn."""
    config = PruningConfig(method="soft_movement", target_sparsity=0.9)
    message = config.soft_movement_shortfall(128)
    assert message and "at least 440 steps" in message and "--score_learning_rate" in message
    assert config.soft_movement_shortfall(500) is None
    assert PruningConfig(method="soft_movement", target_sparsity=0.9, score_learning_rate=0.05).soft_movement_shortfall(
        128) is None
    for method in ("movement", "magnitude"):
        assert PruningConfig(method=method, target_sparsity=0.9).soft_movement_shortfall(10) is None
    pruner = Pruner(tiny_bert(), config)
    with caplog.at_level("WARNING", logger="hfcompress.prune.pruner"):
        pruner.set_total_steps(128)
    assert any("soft_movement cannot prune in this run" in r.getMessage() for r in caplog.records)
