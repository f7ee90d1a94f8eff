"""scripts/prune.py end to end on tiny local assets (movement/magnitude pruning inside the distillation pipeline).

Covered:
  * `--help` works (help strings are %-formatted by argparse) and every option of the script's own dataclasses
    (models, data, pruning + script defaults, `PruningConfig`) carries help text;
  * a run on a user's CSV folder with string labels: `prune_summary.json` (reached sparsity, per-layer range), the
    compact `model/` (sparse file only, smaller than the dense one) beside the plain `model_dense/`, the pruning
    state and config in every checkpoint, `sparsity_target`/`sparsity` in the Trainer's log history; then, in a fresh
    process, `hfcompress.load_sparse(model/)` and `from_pretrained(model_dense/)` give bit-identical logits and the
    encoder's Linear weights are 80% zeros (pooler and head untouched);
  * a run killed after a checkpoint taken mid-ramp and resumed with `--resume_from_checkpoint latest` ends with the
    same weights, zero patterns, movement scores and test metrics as the uninterrupted run;
  * resuming with another pruning configuration is refused (exit 2, one line naming the setting) before training;
  * bad settings (sparsity out of range, inverted or too long schedule, a pattern matching nothing) end with exit 2
    and one line before anything is trained; an architecture without an adapter (GPT-2) is a `UserInputError`
    naming it and the supported ones, with or without a user pattern;
  * two processes with half the batch each end with the masks and weights of one process with the whole batch.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import check_publishable_card, command_fails, save_tiny_assets, write_reviews_csv
from safetensors.torch import load_file
from test_script import ROOT, _run, accelerate_launcher

SCRIPT = os.path.join(ROOT, "scripts", "prune.py")
# The Linear weights pruned by default: q/k/v, attention output and both feed-forward projections of every block.
PRUNED_SUFFIXES = ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                   "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight")


def _pruned_keys(state: dict) -> list[str]:
    keys = [k for k in state if ".encoder.layer." in k and k.endswith(PRUNED_SUFFIXES)]
    assert len(keys) == 4 * 6, keys  # tiny teacher: 4 blocks, all kept (the model pruned is a full copy)
    return keys


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


def test_help_documents_every_option():
    res = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for flag in ("--method", "--target_sparsity", "--scope", "--target_modules", "--pruning_start", "--pruning_end",
                 "--prune_head", "--mask_update_every", "--teacher_model", "--student_num_layers", "--dataset",
                 "--alpha", "--config", "--output_dir"):
        assert flag in out, flag
    assert out.index("--target_sparsity") < out.index("--learning_rate"), "the method's options come before Trainer's"
    # Every one of the script's own options carries help text.
    from conftest import load_script

    mod = load_script("prune")
    from dataclasses import fields

    from hfcompress.prune import PruningConfig
    from hfcompress.run import DataArguments, ModelArguments

    checked = set()
    for cls in (ModelArguments, mod.PruneModelArguments, DataArguments, mod.PruneScriptArguments, PruningConfig):
        for f in fields(cls):
            if f.init and f.name in cls.__dict__.get("__annotations__", {}):
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
                assert "%" not in f.metadata["help"].replace("%%", ""), f"{cls.__name__}.{f.name}: '%' breaks --help"
                checked.add(f.name)
    assert {"target_sparsity", "pruning_end", "student_num_layers", "logging_steps", "dataset"} <= checked


def _write_csv_folder(folder):
    """train/validation/test CSV files with class names as labels, as a user writes them."""
    os.makedirs(folder, exist_ok=True)
    for split, (n, seed) in {"train": (96, 5), "validation": (16, 6), "test": (16, 7)}.items():
        write_reviews_csv(os.path.join(folder, f"{split}.csv"), n, seed)
    return str(folder)


# Loads both saved models in a fresh process (nothing of the training process is reused) and compares them.
LOAD_BOTH = r"""
import json, sys, torch
import hfcompress
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out = sys.argv[1]
sparse = hfcompress.load_sparse(out + "/model")
dense = AutoModelForSequenceClassification.from_pretrained(out + "/model_dense").eval()
tok = AutoTokenizer.from_pretrained(out + "/model")
batch = tok(["good movie", "the plot is very bad", "not great not awful at all", "dull"], padding=True,
            return_tensors="pt")
with torch.no_grad():
    a, b = sparse(**batch).logits, dense(**batch).logits
sd, dd = sparse.state_dict(), dense.state_dict()
zeros = {n: float((m.weight == 0).float().mean()) for n, m in sparse.named_modules()
         if isinstance(m, torch.nn.Linear)}
print(json.dumps({"class": type(sparse).__name__, "training": sparse.training, "logits_equal": torch.equal(a, b),
                  "logits_finite": bool(torch.isfinite(a).all()), "weights_equal": sd.keys() == dd.keys()
                  and all(torch.equal(sd[k], dd[k]) for k in sd), "zeros": zeros,
                  "id2label": sparse.config.id2label}))
"""


def test_prune_csv_with_string_labels_and_reload(tiny, tmp_path):
    teacher, _ = tiny
    data = _write_csv_folder(tmp_path / "reviews")
    out = tmp_path / "out"
    _run([sys.executable, SCRIPT, "--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
          "--target_sparsity", "0.8", "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "6",
          "--eval_strategy", "no", "--use_cpu", "--per_device_train_batch_size", "8", "--logging_steps", "3"], tmp_path)
    s = json.load(open(out / "prune_summary.json"))
    p = s["methods"]["pruning"]
    assert p["method"] == "magnitude" and p["target_sparsity"] == 0.8 and p["pruned_layers"] == 24
    assert abs(p["reached_sparsity"] - 0.8) < 0.01, p
    # Local scope: every matrix at the target (round(0.2 * n) weights kept of each).
    assert 0.79 <= p["layer_sparsity_min"] <= p["layer_sparsity_max"] <= 0.81, p
    assert s["data"]["label_names"] == {"0": "neg", "1": "pos"} and s["data"]["splits"] == {
        "train": 96, "validation": 16, "test": 16}
    assert 0 <= s["metrics"]["student"]["test"]["test_accuracy"] <= 1

    # model/: the compact checkpoint alone; model_dense/: a plain transformers checkpoint.
    assert (out / "model" / "sparse_model.safetensors").exists()
    assert not (out / "model" / "model.safetensors").exists(), "a dense file beside the sparse one would be loaded"
    assert (out / "model_dense" / "model.safetensors").exists()
    sparse_size = os.path.getsize(out / "model" / "sparse_model.safetensors")
    dense_size = os.path.getsize(out / "model_dense" / "model.safetensors")
    assert sparse_size < 0.6 * dense_size, (sparse_size, dense_size)
    assert json.load(open(out / "pruning" / "pruning_config.json"))["target_sparsity"] == 0.8

    # Every checkpoint holds the pruning state (masks, scores) and the configuration it was written with.
    ckpts = sorted(c.name for c in (out / "checkpoints").iterdir() if c.name.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-12", "checkpoint-6"]
    for c in ckpts:
        assert (out / "checkpoints" / c / "pruning_state.safetensors").exists(), c
        assert json.load(open(out / "checkpoints" / c / "pruning_config.json"))["target_sparsity"] == 0.8

    # The sparsity joins the Trainer's logs like the loss, and follows the schedule to the target.
    history = json.load(open(out / "checkpoints" / "checkpoint-12" / "trainer_state.json"))["log_history"]
    logged = [h for h in history if "loss" in h]
    assert [h["step"] for h in logged] == [3, 6, 9, 12]
    for h in logged:
        assert "sparsity_target" in h and "sparsity" in h, h
        assert abs(h["sparsity"] - h["sparsity_target"]) < 0.005, h
    targets = [h["sparsity_target"] for h in logged]
    assert targets == sorted(targets) and 0 < targets[0] < 0.8 and targets[-1] == 0.8, targets
    # The masks saved at step 6 are the ones logged at step 6.
    masks6 = {k: v for k, v in load_file(out / "checkpoints" / "checkpoint-6" / "pruning_state.safetensors").items()
              if k.startswith("mask.")}
    zeros6 = sum(int((m == 0).sum()) for m in masks6.values()) / sum(m.numel() for m in masks6.values())
    assert abs(zeros6 - logged[1]["sparsity"]) < 1e-3, (zeros6, logged[1])

    # The schedule as it ran (every mask update, not only the logging steps) is in the record and drawn on the card.
    schedule = p["schedule"]
    assert [e["step"] for e in schedule] == sorted(e["step"] for e in schedule) and len(schedule) > len(logged)
    assert schedule[-1]["sparsity_target"] == 0.8
    # The card of the sparse format: publishable as it is (its loading code run in a fresh process).
    check_publishable_card(out / "model", run_dir=tmp_path)

    # A fresh process loads both: the same model, bit for bit.
    res = _run([sys.executable, "-c", LOAD_BOTH, str(out)], tmp_path)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["class"] == "BertForSequenceClassification" and r["training"] is False
    assert r["logits_equal"] and r["logits_finite"] and r["weights_equal"]
    assert r["id2label"] == {"0": "neg", "1": "pos"}
    pruned = {n: z for n, z in r["zeros"].items() if ".encoder.layer." in n}
    assert len(pruned) == 24
    for name, z in pruned.items():
        assert abs(z - 0.8) < 0.01, (name, z)
    others = {n: z for n, z in r["zeros"].items() if n not in pruned}
    assert set(others) == {"bert.pooler.dense", "classifier"} and all(z < 0.05 for z in others.values()), others


RESUME_ARGS = ["--method", "movement", "--target_sparsity", "0.8", "--pruning_start", "0.1", "--pruning_end", "0.9",
               "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "no",
               "--per_device_train_batch_size", "8", "--seed", "5", "--use_cpu", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """An uninterrupted 8-step movement-pruning run checkpointed at step 4, mid-ramp (ramp from step 1 to 7)."""
    teacher, data = tiny
    tmp = tmp_path_factory.mktemp("resume")
    full = tmp / "full"
    _run([sys.executable, SCRIPT, "--output_dir", str(full), "--teacher_model", teacher, "--dataset", data,
          *RESUME_ARGS], tmp)
    return full


def test_killed_run_resumes_to_the_same_masks(tiny, full_run, tmp_path):
    teacher, data = tiny
    full = full_run
    # The state a run killed between step 4 and step 8 leaves behind: its first checkpoint and its teacher cache.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoints" / "checkpoint-4", killed / "checkpoints" / "checkpoint-4")
    shutil.copytree(full / "teacher_cache", killed / "teacher_cache")
    _run([sys.executable, SCRIPT, "--output_dir", str(killed), "--teacher_model", teacher, "--dataset", data,
          *RESUME_ARGS, "--resume_from_checkpoint", "latest"], tmp_path)

    a, b = json.load(open(full / "prune_summary.json")), json.load(open(killed / "prune_summary.json"))
    assert b["training"]["resumed_from"].endswith("checkpoint-4")
    assert b["training"]["steps"] == 8 and b["training"]["steps_this_invocation"] == 4
    pa, pb = a["methods"]["pruning"], b["methods"]["pruning"]
    assert pa["reached_sparsity"] == pb["reached_sparsity"] and abs(pa["reached_sparsity"] - 0.8) < 0.01
    for key in ("test_loss", "test_accuracy", "test_f1"):
        ta, tb = a["metrics"]["student"]["test"], b["metrics"]["student"]["test"]
        assert abs(ta[key] - tb[key]) < 1e-6, key

    wa = load_file(full / "model_dense" / "model.safetensors")
    wb = load_file(killed / "model_dense" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), (k, (wa[k] - wb[k]).abs().max().item())
    for k in _pruned_keys(wa):
        assert torch.equal(wa[k] == 0, wb[k] == 0), k

    # The pruning state of the last checkpoint: same masks, same movement scores, same schedule position.
    sa = load_file(full / "checkpoints" / "checkpoint-8" / "pruning_state.safetensors")
    sb = load_file(killed / "checkpoints" / "checkpoint-8" / "pruning_state.safetensors")
    s4 = load_file(full / "checkpoints" / "checkpoint-4" / "pruning_state.safetensors")
    assert sa.keys() == sb.keys() and sum(k.startswith("score.") for k in sa) == 24
    for k in sa:
        if k.startswith("mask."):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert torch.allclose(sa[k], sb[k], atol=1e-6), (k, (sa[k] - sb[k]).abs().max().item())
    # Resuming mattered: masks and scores kept changing after step 4 (ramp 0.5 -> 0.8 sparsity).
    assert any(not torch.equal(sa[k], s4[k]) for k in sa if k.startswith("mask."))
    assert any(not torch.equal(sa[k], s4[k]) for k in sa if k.startswith("score."))
    from safetensors import safe_open

    metas = []
    for d in (full, killed):
        with safe_open(str(d / "checkpoints" / "checkpoint-8" / "pruning_state.safetensors"), "pt") as fh:
            metas.append(json.loads(fh.metadata()["meta"]))
    assert metas[0] == metas[1] and metas[0]["last_step"] == 8 and metas[0]["current_target"] == 0.8


def test_resume_with_another_pruning_config_is_refused_before_training(tiny, full_run, tmp_path):
    teacher, data = tiny
    out = tmp_path / "other"
    shutil.copytree(full_run / "checkpoints" / "checkpoint-4", out / "checkpoints" / "checkpoint-4")
    args = [a if a != "0.8" else "0.5" for a in RESUME_ARGS]
    assert "0.5" in args
    line = command_fails("prune", ["--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
                                   *args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert "different pruning configuration" in line and "target_sparsity: checkpoint 0.8, now 0.5" in line, line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4"], "no training may start"
    assert not (out / "model").exists() and not (out / "prune_summary.json").exists()
    assert not (out / "teacher_cache").exists(), "refused before the teacher cache is computed"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target_sparsity", "1.0"], "target_sparsity must be in [0, 1)"),
        (["--target_sparsity", "-0.1"], "target_sparsity must be in [0, 1)"),
        (["--pruning_start", "0.8", "--pruning_end", "0.5"], "pruning_end (0.5) is before pruning_start (0.8)"),
        (["--pruning_end", "500", "--max_steps", "10"],
         "pruning_end (step 500) is beyond the end of training (10 optimizer steps)"),
        (["--target_modules", "nomatch_xyz"], "target_modules 'nomatch_xyz' matches no nn.Linear layer"),
    ],
)
def test_bad_input_fails_before_training(tiny, tmp_path, flags, message):
    teacher, data = tiny
    out = tmp_path / "bad"
    line = command_fails("prune", ["--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
                                   "--use_cpu", *flags], tmp_path,
                         fresh_process=flags == ["--target_sparsity", "1.0"])  # one case as a real command line
    assert message in line, line
    if "--target_modules" in flags:  # the user is shown which names exist
        assert "bert.encoder.layer.0.attention.self.query" in line and "intermediate.dense" in line, line
    assert not (out / "checkpoints").exists(), "no training may start"
    assert not (out / "teacher_cache").exists()


def _tiny_gpt2():
    from transformers import AutoModelForSequenceClassification, GPT2Config

    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0,
                     pad_token_id=0)
    return AutoModelForSequenceClassification.from_config(cfg)


def test_unsupported_architecture_is_a_user_error():
    from hfcompress.errors import UserInputError
    from hfcompress.prune import Pruner, PruningConfig
    from hfcompress.prune.targets import find_targets

    model = _tiny_gpt2()
    with pytest.raises(UserInputError) as err:
        find_targets(model, PruningConfig())
    assert "'gpt2'" in str(err.value) and "bert" in str(err.value), str(err.value)
    with pytest.raises(UserInputError):  # the Pruner (and so the callback) says the same, before any masking
        Pruner(model, PruningConfig())
    # GPT-2's projections are Conv1D, not nn.Linear: a pattern naming them matches nothing prunable, and the
    # message lists the Linear layers there are (only the head, excluded unless prune_head).
    with pytest.raises(UserInputError) as err:
        find_targets(model, PruningConfig(target_modules=r".*attn\.c_attn$"))
    msg = str(err.value)
    assert "matches no nn.Linear layer of GPT2ForSequenceClassification" in msg and "score" in msg, msg
    assert not any(type(m).__name__.startswith("Masked") for m in model.modules()), "nothing may be masked"


def test_two_processes_prune_like_one(tiny, tmp_path):
    teacher, data = tiny
    common = ["--method", "movement", "--max_steps", "6", "--target_sparsity", "0.7", "--pruning_start", "0",
              "--pruning_end", "0.5", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
              "--seed", "11", "--use_cpu", "--dataloader_num_workers", "0"]
    one = tmp_path / "one"
    _run([sys.executable, SCRIPT, "--output_dir", str(one), "--teacher_model", teacher, "--dataset", data,
          "--per_device_train_batch_size", "8", *common], tmp_path)
    two = tmp_path / "two"
    launcher = accelerate_launcher()
    # --multi_gpu on a machine without GPUs starts two CPU ranks over gloo (see test_script.py).
    res = _run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", SCRIPT, "--output_dir", str(two), "--teacher_model", teacher, "--dataset", data,
                "--per_device_train_batch_size", "4", *common], tmp_path)
    s1, s2 = json.load(open(one / "prune_summary.json")), json.load(open(two / "prune_summary.json"))
    assert s1["training"]["num_processes"] == 1 and s2["training"]["num_processes"] == 2, res.stderr[-2000:]
    for s in (s1, s2):
        assert abs(s["methods"]["pruning"]["reached_sparsity"] - 0.7) < 0.01
    assert s2["training"]["loss_mean_of_logged_steps"] == pytest.approx(s1["training"]["loss_mean_of_logged_steps"], rel=1e-3)
    w1 = load_file(one / "model_dense" / "model.safetensors")
    w2 = load_file(two / "model_dense" / "model.safetensors")
    # The movement scores' gradients (dL/dW' * W) of the two ranks are all-reduced every step, so both runs rank the same
    # weights; only the order of float additions differs. A mask could then differ only where two scores at the cut
    # are within rounding of each other: measured here, 0 of the 32,768 pruned entries differ and the weights agree to
    # 4e-9, so the patterns must be identical. (Without the all-reduce, rank 0 would rank the weights by the scores of
    # its own 4 examples only.)
    for k in _pruned_keys(w1):
        z1, z2 = w1[k] == 0, w2[k] == 0
        assert torch.equal(z1, z2), f"{k}: {int((z1 != z2).sum())} of {z1.numel()} entries pruned in one run only"
        assert abs(float(z1.float().mean()) - 0.7) < 0.01, k
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), (k, (w1[k] - w2[k]).abs().max().item())
