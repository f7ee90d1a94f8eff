"""A run killed after a checkpoint and resumed with --resume_from_checkpoint ends where an uninterrupted run ends;
the learned projections and the teacher cache survive the resume."""

import json
import os
import shutil
import sys

import torch
from conftest import command_fails, save_tiny_assets
from safetensors.torch import load_file
from test_script import SCRIPT, _run

ARGS = ["--student_model", None, "--max_steps", "8", "--save_steps", "4", "--save_strategy", "steps", "--eval_strategy", "no",
        "--per_device_train_batch_size", "8", "--seed", "5", "--use_cpu", "--hidden_weight", "1.0", "--layer_map", "1:2,2:4",
        "--logging_steps", "1"]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    from conftest import make_tokenizer, tiny_bert

    teacher, data = save_tiny_assets(tmp_path / "assets", teacher_kind="mpnet", teacher_offset=4)  # width 48
    student_dir = str(tmp_path / "student")
    tiny_bert(num_layers=2, hidden=32, seed=9).save_pretrained(student_dir)  # width 32: learned projections
    make_tokenizer().save_pretrained(student_dir)
    args = [a if a is not None else student_dir for a in ARGS]
    full = tmp_path / "full"
    _run([sys.executable, SCRIPT, "--output_dir", str(full), "--teacher_model", teacher, "--dataset", data, *args], tmp_path)
    assert os.path.exists(full / "checkpoints" / "checkpoint-4" / "distillation_projections.safetensors")

    # The state a run killed between step 4 and step 8 leaves behind: its first checkpoint and its teacher cache.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoints" / "checkpoint-4", killed / "checkpoints" / "checkpoint-4")
    shutil.copytree(full / "teacher_cache", killed / "teacher_cache")
    cache_mtime = os.path.getmtime(killed / "teacher_cache" / "teacher_cache.json")
    _run([sys.executable, SCRIPT, "--output_dir", str(killed), "--teacher_model", teacher, "--dataset", data, *args,
          "--resume_from_checkpoint", "latest"], tmp_path)

    a, b = json.load(open(full / "distill_summary.json")), json.load(open(killed / "distill_summary.json"))
    assert b["training"]["resumed_from"].endswith("checkpoint-4")
    assert b["training"]["steps"] == 8 and b["training"]["steps_this_invocation"] == 4
    # The loss of the resumed run is averaged over every logged step of the whole run, as in the full run.
    assert b["training"]["loss_mean_of_logged_steps"] == a["training"]["loss_mean_of_logged_steps"]
    ca, cb = a["methods"]["distillation"]["teacher_cache"], b["methods"]["distillation"]["teacher_cache"]
    assert cb["reused"] is True and ca["reused"] is False
    assert os.path.getmtime(killed / "teacher_cache" / "teacher_cache.json") == cache_mtime
    for key in ("test_loss", "test_accuracy", "test_f1"):
        ta, tb = a["metrics"]["student"]["test"], b["metrics"]["student"]["test"]
        assert abs(ta[key] - tb[key]) < 1e-6, key
    wa, wb = load_file(full / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    # Projections: trained, saved apart from the student, and identical after the resume.
    pa = load_file(full / "distillation" / "distillation_projections.safetensors")
    pb = load_file(killed / "distillation" / "distillation_projections.safetensors")
    p4 = load_file(full / "checkpoints" / "checkpoint-4" / "distillation_projections.safetensors")
    assert set(pa) == {"projections.1_2.weight", "projections.1_2.bias", "projections.2_4.weight", "projections.2_4.bias"}
    assert not any("projection" in k for k in wa), "projections must not be saved inside the student"
    assert any(not torch.equal(pa[k], p4[k]) for k in pa), "projections must keep training after step 4"
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=1e-6), (k, (pa[k] - pb[k]).abs().max().item())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    teacher, data = save_tiny_assets(tmp_path / "assets")
    line = command_fails("distill", ["--output_dir", str(tmp_path / "none"), "--teacher_model", teacher, "--dataset",
                                     data, "--resume_from_checkpoint", "latest", "--use_cpu"], tmp_path)
    assert "no checkpoint in" in line, line
