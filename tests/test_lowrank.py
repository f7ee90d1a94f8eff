"""Low-rank factorization (hfcompress.lowrank): truncated-SVD factors, rank choice, checkpoints, training.

Covered:
  * at full rank the factorized model computes the same logits (BERT, and MPNet with its relative-position bias);
    the factors are the balanced truncated SVD (``up @ down`` is the best rank-r approximation, both halves at the
    same scale), also from bf16 weights; `merge_lowrank` undoes it;
  * a fixed rank changes the parameter count by exactly ``sum(r (in + out) - in out)``; energy mode picks, per layer,
    the smallest rank keeping the energy (checked against the singular values); the parameter budget is met, tightly,
    and the kept singular values are exactly those with the highest energy fraction per parameter;
  * `save_lowrank` -> `load_lowrank`, -> ``AutoModelForSequenceClassification`` / ``AutoModel`` with
    ``trust_remote_code`` (and in a fresh process where hfcompress cannot be imported), identical logits; a model
    first structurally pruned then factorized reloads too;
  * a few optimizer steps move both factors (gradients flow);
  * bad input: configuration values, a rank or min_rank larger than a matrix allows (layer and shape named), a
    pattern matching nothing (the existing Linear modules named), factorizing twice, energy on a meta-device model,
    saving an unfactorized model, loading a checkpoint that is not low-rank or whose weights do not fit its ranks.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import NO_HFCOMPRESS, make_tokenizer, tiny_bert, tiny_mpnet
from transformers import AutoModel, AutoModelForSequenceClassification, BertModel

from hfcompress.errors import UserInputError
from hfcompress.lowrank import (
    LOWRANK_KEY,
    LowRankConfig,
    LowRankLinear,
    factorize,
    is_lowrank_checkpoint,
    load_lowrank,
    merge_lowrank,
    plan_ranks,
    save_lowrank,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(0))


def _targets(model):
    from hfcompress.arch import get_adapter

    return get_adapter(model).prunable_linears(model)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make, full", [(tiny_bert, 32), (tiny_mpnet, 48)])
def test_full_rank_reproduces_the_model(make, full):
    model = make().eval()
    before = _logits(model)
    summary = factorize(model, LowRankConfig(rank=full, skip_if_not_smaller=False))
    assert summary["factorized_layers"] == len(summary["layers"]) == 6 * model.config.num_hidden_layers
    assert all(abs(layer["kept_energy"] - 1.0) < 1e-9 for layer in summary["layers"].values())
    assert torch.allclose(_logits(model), before, atol=1e-5), (_logits(model) - before).abs().max()
    assert not any(m.training for m in model.modules())  # the new layers follow the model's eval mode
    # with skip_if_not_smaller (the default) nothing would have been factorized at that rank
    again = make()
    assert factorize(again, LowRankConfig(rank=full))["factorized_layers"] == 0
    assert not any(isinstance(m, LowRankLinear) for m in again.modules())


def test_factors_are_the_balanced_truncated_svd_and_merge_back():
    model = tiny_bert().eval()
    dense = {n: m.weight.detach().clone() for n, m in _targets(model).items()}
    biases = {n: m.bias.detach().clone() for n, m in _targets(model).items()}
    factorize(model, LowRankConfig(rank=5))
    modules = dict(model.named_modules())
    for name, w in dense.items():
        layer = modules[name]
        assert isinstance(layer, LowRankLinear) and layer.rank == 5 and layer.up.bias is not None
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        best = u[:, :5] @ torch.diag(s[:5]) @ vh[:5]
        assert torch.allclose(layer.up.weight @ layer.down.weight, best, atol=1e-5)
        # balanced: column j of up and row j of down both have norm sqrt(s_j)
        assert torch.allclose(layer.up.weight.norm(dim=0), s[:5].sqrt(), atol=1e-5)
        assert torch.allclose(layer.down.weight.norm(dim=1), s[:5].sqrt(), atol=1e-5)
        assert torch.equal(layer.up.bias, biases[name])
    factorized = _logits(model)
    merge_lowrank(model)
    assert not hasattr(model.config, LOWRANK_KEY)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert type(modules["bert.encoder.layer.0.attention.self.query"]).__name__ == "LowRankLinear"
    assert type(dict(model.named_modules())["bert.encoder.layer.0.attention.self.query"]) is torch.nn.Linear
    assert torch.allclose(_logits(model), factorized, atol=1e-5)


def test_bf16_weights_are_factorized_in_float32_and_stay_bf16():
    model = tiny_bert().to(torch.bfloat16)
    w = model.bert.encoder.layer[0].intermediate.dense.weight.detach().float()
    factorize(model, LowRankConfig(rank=8))
    layer = model.bert.encoder.layer[0].intermediate.dense
    assert layer.up.weight.dtype == layer.down.weight.dtype == torch.bfloat16
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = u[:, :8] @ torch.diag(s[:8]) @ vh[:8]
    assert torch.allclose((layer.up.weight.float() @ layer.down.weight.float()), best, atol=3e-2)


def test_fixed_rank_reduces_parameters_exactly():
    model = tiny_mpnet()
    shapes = {n: (m.out_features, m.in_features) for n, m in _targets(model).items()}
    total = _n_params(model)
    summary = factorize(model, LowRankConfig(rank=6))
    saved = sum(o * i - 6 * (o + i) for o, i in shapes.values())
    assert _n_params(model) == total - saved == summary["model_parameters_after"]
    assert summary["model_parameters_before"] == total
    assert summary["targeted_parameters_before"] - summary["targeted_parameters_after"] == saved
    assert getattr(model.config, LOWRANK_KEY) == {n: 6 for n in shapes}
    assert json.loads(json.dumps(summary)) == summary  # JSON-serialisable as it is


def test_target_modules_suffix_and_regex():
    model = tiny_bert()
    plan = plan_ranks(model, LowRankConfig(rank=4, target_modules=["intermediate.dense", r".*\.(query|key)"]))
    assert sorted(plan) == sorted(f"bert.encoder.layer.{b}.{p}" for b in (0, 1)
                                  for p in ("intermediate.dense", "attention.self.query", "attention.self.key"))
    # one comma-separated word (as on a command line) is several patterns; a {m,n} quantifier's comma is not
    assert LowRankConfig(rank=4, target_modules="query, key").target_modules == ["query", "key"]
    patterns = r"intermediate.dense,.*layer\.[0-9]{1,2}\.output\.dense"
    plan = plan_ranks(model, LowRankConfig(rank=4, target_modules=patterns))
    assert sorted(plan) == sorted(f"bert.encoder.layer.{b}.{p}" for b in (0, 1)
                                  for p in ("intermediate.dense", "output.dense"))
    # the pooler is reachable when named
    plan = plan_ranks(model, LowRankConfig(rank=4, target_modules="pooler.dense"))
    assert list(plan) == ["bert.pooler.dense"]


@pytest.mark.parametrize("energy", [0.3, 0.7, 0.95])
def test_energy_mode_picks_the_smallest_rank_keeping_the_energy(energy):
    model = tiny_mpnet()
    weights = {n: m.weight.detach().clone() for n, m in _targets(model).items()}
    summary = factorize(model, LowRankConfig(energy=energy))
    for name, w in weights.items():
        layer = summary["layers"][name]
        s2 = torch.linalg.svdvals(w).double() ** 2
        kept = s2.cumsum(0) / s2.sum()
        r = layer["rank"]
        assert kept[r - 1] >= energy - 1e-9 and (r == 1 or kept[r - 2] < energy), (name, r, kept[r - 2:r])
        out, inp = layer["shape"]
        assert layer["factorize"] == (r * (inp + out) < inp * out)
        if layer["factorize"]:
            assert abs(layer["kept_energy"] - float(kept[r - 1])) < 1e-6
            assert dict(model.named_modules())[name].rank == r
    ranks = [layer["rank"] for layer in summary["layers"].values()]
    assert len(set(ranks)) > 1  # per layer, not one rank for all


def test_parameter_budget_is_met_by_the_highest_energy_per_parameter():
    model = tiny_mpnet()
    weights = {n: m.weight.detach().clone() for n, m in _targets(model).items()}
    summary = factorize(model, LowRankConfig(parameter_budget=0.5))
    before, after = summary["targeted_parameters_before"], summary["targeted_parameters_after"]
    assert after <= 0.5 * before
    assert after > 0.5 * before - max(sum(layer["shape"]) for layer in summary["layers"].values())  # tight
    assert sum(p.numel() for n, m in dict(model.named_modules()).items() if n in weights
               for p in m.parameters()) == after
    kept_scores, dropped_scores = [], []
    for name, w in weights.items():
        layer = summary["layers"][name]
        if not layer["factorize"]:
            continue
        s2 = torch.linalg.svdvals(w).double() ** 2
        score = s2 / s2.sum() / sum(layer["shape"])
        kept_scores += score[1:layer["rank"]].tolist()  # (the first is kept by min_rank 1 whatever its score)
        dropped_scores += score[layer["rank"]:].tolist()
    assert kept_scores and dropped_scores and min(kept_scores) >= max(dropped_scores)
    assert len({layer["rank"] for layer in summary["layers"].values()}) > 1
    # a budget that min_rank alone exceeds
    with pytest.raises(UserInputError, match="parameter_budget 0.1 cannot be met"):
        plan_ranks(tiny_mpnet(), LowRankConfig(parameter_budget=0.1, min_rank=20))


def test_save_and_reload_with_and_without_hfcompress_code(tmp_path):
    model = tiny_bert().eval()
    factorize(model, LowRankConfig(parameter_budget=0.6))
    expected = _logits(model)
    path = str(tmp_path / "lowrank-a")
    save_lowrank(model, path, tokenizer=make_tokenizer())
    assert is_lowrank_checkpoint(path) and not is_lowrank_checkpoint(str(tmp_path))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".hfc-save-")] == []
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg[LOWRANK_KEY] == getattr(model.config, LOWRANK_KEY)
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["auto_map"]["AutoModelForSequenceClassification"] == \
        "modeling_hfcompress_lowrank.HfcLowRankBertForSequenceClassification"
    assert cfg["auto_map"]["AutoModel"] == "modeling_hfcompress_lowrank.HfcLowRankBertModel"
    source = open(os.path.join(path, "modeling_hfcompress_lowrank.py")).read()
    assert "hfcompress" not in "".join(l for l in source.splitlines() if l.startswith(("import", "from")))

    ours = load_lowrank(path)
    remote = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    assert not ours.training and type(remote).__name__ == "HfcLowRankBertForSequenceClassification"
    assert torch.equal(_logits(ours), expected) and torch.equal(_logits(remote), expected)
    # the encoder alone, either way
    with torch.no_grad():
        hidden = model.bert(input_ids=IDS).last_hidden_state
        assert torch.equal(AutoModel.from_pretrained(path, trust_remote_code=True)(input_ids=IDS).last_hidden_state,
                           hidden)
        assert torch.equal(load_lowrank(path, model_class=BertModel)(input_ids=IDS).last_hidden_state, hidden)


# A fresh interpreter where hfcompress cannot be imported: only the saved folder, torch and transformers.
WITHOUT_HFCOMPRESS = NO_HFCOMPRESS + r"""
import json
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(json.loads(sys.argv[2]))).logits
ranks = {n: m.rank for n, m in model.named_modules() if type(m).__name__ == "LowRankLinear"}
print(json.dumps({"logits": logits.tolist(), "class": type(model).__name__, "ranks": ranks}))
"""


def test_checkpoint_loads_in_a_fresh_process_without_hfcompress(tmp_path):
    model = tiny_mpnet().eval()
    factorize(model, LowRankConfig(energy=0.6))
    expected = _logits(model)
    save_lowrank(model, str(tmp_path / "lowrank-b"), tokenizer=make_tokenizer("<s>", "</s>"))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", WITHOUT_HFCOMPRESS, str(tmp_path / "lowrank-b"),
                          json.dumps(IDS.tolist())], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["class"] == "HfcLowRankMPNetForSequenceClassification"
    assert out["ranks"] == getattr(model.config, LOWRANK_KEY)
    assert torch.allclose(torch.tensor(out["logits"]), expected, atol=1e-6)


def test_structurally_pruned_then_factorized_model_reloads(tmp_path):
    from hfcompress.prune import PruningConfig, StructuredPruner

    model = tiny_bert(num_layers=2).eval()
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", method="magnitude", target_sparsity=0.5,
                                                   pruning_start=0, pruning_end=1))
    pruner.set_total_steps(1)
    pruner.step(1)
    pruner.fold()
    factorize(model, LowRankConfig(rank=4))
    assert model.config.hfcompress_structure and getattr(model.config, LOWRANK_KEY)
    expected = _logits(model)
    path = str(tmp_path / "pruned-lowrank")
    save_lowrank(model, path)
    assert os.path.exists(os.path.join(path, "modeling_hfcompress_pruned.py"))
    ours = load_lowrank(path)
    remote = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    assert ours.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert ours.bert.encoder.layer[0].attention.self.query.out_features == 16
    assert torch.equal(_logits(ours), expected) and torch.equal(_logits(remote), expected)


def test_training_steps_move_both_factors():
    model = tiny_bert()
    factorize(model, LowRankConfig(rank=4))
    layer = model.bert.encoder.layer[0].intermediate.dense
    start = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = torch.tensor([0, 1, 1])
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=IDS, labels=labels).loss
        loss.backward()
        assert layer.down.weight.grad.abs().sum() > 0 and layer.up.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    for key, value in layer.state_dict().items():
        assert not torch.equal(value, start[key]), key
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of rank, energy, parameter_budget (got none)"),
        ({"rank": 4, "energy": 0.9}, "give exactly one of rank, energy, parameter_budget (got rank, energy)"),
        ({"rank": 0}, "rank must be a whole number >= 1, got 0"),
        ({"rank": 2.5}, "rank must be a whole number >= 1, got 2.5"),
        ({"energy": 0.0}, "energy must be in (0, 1], got 0"),
        ({"energy": 1.5}, "energy must be in (0, 1], got 1.5"),
        ({"parameter_budget": 0}, "parameter_budget must be in (0, 1], got 0"),
        ({"parameter_budget": "half"}, "parameter_budget: 'half' is not a number"),
        ({"energy": 0.9, "min_rank": 0}, "min_rank must be a whole number >= 1, got 0"),
        ({"rank": 4, "min_rank": 8}, "min_rank (8) is above rank (4)"),
        ({"rank": 4, "target_modules": ["query("]}, "target_modules: 'query(' is not a regular expression"),
        ({"rank": 4, "target_modules": []}, "target_modules is an empty list"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(UserInputError) as err:
        LowRankConfig(**kwargs)
    assert message in str(err.value), str(err.value)


def test_config_saves_and_loads(tmp_path):
    cfg = LowRankConfig(parameter_budget=0.4, min_rank=2, target_modules="intermediate.dense")
    cfg.save_pretrained(str(tmp_path))
    again = LowRankConfig.from_pretrained(str(tmp_path))
    assert again == cfg and again.target_modules == ["intermediate.dense"] and again.mode == "parameter_budget"
    with pytest.raises(UserInputError, match="does not exist"):
        LowRankConfig.from_pretrained(str(tmp_path / "nowhere"))


def test_rank_larger_than_a_matrix_names_the_layer_and_shape():
    with pytest.raises(UserInputError) as err:
        plan_ranks(tiny_bert(), LowRankConfig(rank=40))  # hidden 32: every matrix has min(in, out) = 32
    msg = str(err.value)
    assert "rank 40 is larger than min(in, out) of 12 targeted layers" in msg
    assert "bert.encoder.layer.0.attention.self.query (weight 32 x 32, at most 32)" in msg
    with pytest.raises(UserInputError, match=r"min_rank 40 is larger .*intermediate.dense \(weight 64 x 32"):
        plan_ranks(tiny_bert(), LowRankConfig(energy=0.5, min_rank=40, target_modules="intermediate.dense"))


def test_pattern_matching_nothing_names_the_linear_modules():
    with pytest.raises(UserInputError) as err:
        plan_ranks(tiny_bert(), LowRankConfig(rank=2, target_modules=["intermediate.dense", "qkv_proj", "fc.*"]))
    msg = str(err.value)
    assert "'qkv_proj', 'fc.*' match no nn.Linear of BertForSequenceClassification" in msg
    assert "its 14 nn.Linear modules are e.g. bert.encoder.layer.0.attention.self.query" in msg
    assert "classifier" in msg and "query (2)" in msg


def test_already_factorized_model_is_refused():
    model = tiny_bert()
    factorize(model, LowRankConfig(rank=4))
    with pytest.raises(UserInputError, match="already factorized .*merge_lowrank"):
        factorize(model, LowRankConfig(rank=2))


def test_meta_device_model_can_be_planned_by_rank_only():
    with torch.device("meta"):
        model = tiny_bert()
    plan = plan_ranks(model, LowRankConfig(rank=8))
    assert {p.rank for p in plan.values()} == {8} and all(p.factorize for p in plan.values())
    assert sum(p.parameters_after for p in plan.values()) == sum(
        8 * (p.in_features + p.out_features) + p.out_features for p in plan.values())
    with pytest.raises(UserInputError, match="energy needs the weights' singular values, but .* is on the meta device"):
        plan_ranks(model, LowRankConfig(energy=0.9))


def test_saving_and_loading_the_wrong_things_is_refused(tmp_path):
    model = tiny_bert()
    with pytest.raises(UserInputError, match="has no hfcompress_lowrank in its config: it was not factorized"):
        save_lowrank(model, str(tmp_path / "dense"))
    model.save_pretrained(str(tmp_path / "dense"))
    with pytest.raises(UserInputError, match="not a low-rank checkpoint"):
        load_lowrank(str(tmp_path / "dense"))

    factorize(model, LowRankConfig(rank=4))
    path = str(tmp_path / "lowrank-c")
    save_lowrank(model, path)
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    cfg[LOWRANK_KEY]["bert.encoder.layer.1.output.dense"] = 3  # saved at rank 4
    cfg[LOWRANK_KEY]["bert.pooler.dense"] = 4  # saved dense
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(UserInputError) as err:
        load_lowrank(path)
    msg = str(err.value)
    assert "low-rank factors the config names are not saved (bert.pooler.dense.down.weight" in msg
    assert "bert.encoder.layer.1.output.dense.down.weight: saved (4, 64), config (3, 64)" in msg
