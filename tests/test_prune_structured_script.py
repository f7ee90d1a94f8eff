"""scripts/prune.py --granularity structured end to end on tiny local assets.

Covered:
  * a run on a user's CSV folder with string labels: the summary (heads and neurons per block, parameters before and
    after), `model/` with its modeling file, reloaded both through hfcompress and with trust_remote_code to the same
    logits, labels kept; the pruning state in the checkpoint; heads/neurons in the log history;
  * (a killed and resumed structured run: test_kill_resume.py, which kills it from outside);
  * bad targets (every head of a block without --allow_layer_removal, an unreachable parameter budget) end with exit
    2 and one line before the teacher cache or any training.
"""

import json
import sys

import pytest
import torch
from conftest import command_fails, save_tiny_assets
from test_prune_script import SCRIPT, _write_csv_folder
from test_script import _run

STRUCTURED = ["--granularity", "structured", "--target_sparsity", "0.5", "--scope", "global", "--use_cpu",
              "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--seed", "5", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


def test_structured_run_on_csv_reloads_both_ways(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfcompress import load_structured

    teacher, _ = tiny
    data = _write_csv_folder(tmp_path / "reviews")
    out = tmp_path / "out"
    _run([sys.executable, SCRIPT, "--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
          *STRUCTURED, "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "6"], tmp_path)
    s = json.load(open(out / "prune_summary.json"))
    p = s["methods"]["pruning"]
    assert p["granularity"] == "structured" and p["method"] == "taylor"
    assert p["heads_before"] == 16 and p["heads_after"] == 8 and sum(p["heads_per_layer"]) == 8
    assert p["neurons_after"] == p["neurons_before"] // 2 == sum(p["ffn_per_layer"])
    assert min(p["heads_per_layer"]) >= 1 and min(p["ffn_per_layer"]) >= 1  # no block emptied without permission
    assert p["parameters_after"] < p["parameters_before"] and p["saved_mb"]["model_mb"] > 0
    assert s["models"]["student"]["parameters"] == p["parameters_after"]
    assert (out / "checkpoints" / "checkpoint-6" / "pruning_state.safetensors").exists()
    history = json.load(open(out / "checkpoints" / "checkpoint-6" / "trainer_state.json"))["log_history"]
    assert [h["heads_kept"] for h in history if "heads_kept" in h][-1] < 16, "structure logged with the loss"
    model_dir = out / "model"
    assert (model_dir / "modeling_hfcompress_pruned.py").exists() and not (out / "model_dense").exists()
    ours = load_structured(str(model_dir))
    remote = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    batch = tok(["good movie", "the plot is very bad", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, remote(**batch).logits)
    assert ours.config.id2label == {0: "neg", 1: "pos"}
    assert [b.attention.self.num_attention_heads for b in ours.bert.encoder.layer] == p["heads_per_layer"]
    assert [b.intermediate.dense.out_features for b in ours.bert.encoder.layer] == p["ffn_per_layer"]


# A structured run killed from outside and resumed: test_kill_resume.py (prune_structured_kd, killed inside a
# checkpoint's save; same weights and test metrics as the uninterrupted run).


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--head_sparsity", "0.9", "--scope", "local"], "prunes all of them in block 0"),
        (["--target_parameters", "1000", "--target_sparsity", "0"], "target_parameters 1,000 cannot be met"),
    ],
)
def test_bad_structured_targets_fail_before_training(tiny, tmp_path, flags, message):
    teacher, data = tiny
    out = tmp_path / "bad"
    line = command_fails("prune", ["--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
                                   "--use_cpu", "--granularity", "structured", *flags], tmp_path)  # in this process
    assert message in line, line
    assert not (out / "checkpoints").exists() and not (out / "teacher_cache").exists()
