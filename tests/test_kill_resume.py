"""A run killed from outside (SIGKILL, as a scheduler preempts a job) and resumed with `--resume_from_checkpoint
latest` in the same output folder ends with the same model as the uninterrupted run of the same seed: weights and
test metrics identical (tolerance 1e-6, float32 sums in the same order). The kill lands at a chosen step, or inside
the save of a checkpoint (a test hook pauses the run there: `HFCOMPRESS_TEST_PAUSE`), and the resumed run finds
what the killed run really left: its own later checkpoint cut in half, its own teacher cache, its logs.

The teacher has dropout, the runs evaluate at every epoch end and the kills land on an epoch boundary and inside an
epoch: evaluation after a checkpoint used to move torch's generator, so a run resumed at an epoch boundary drew other
dropout masks than the uninterrupted one (what the issue saw: same heads kept, other weights).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, command_fails, make_tokenizer, save_tiny_assets, tiny_bert
from safetensors.torch import load_file

# 78 training rows / batch 8 = 10 steps an epoch; checkpoints every 5 steps; 20 steps = 2 epochs
TRAIN = ["--use_cpu", "--per_device_train_batch_size", "8", "--eval_strategy", "epoch", "--seed", "5",
         "--logging_steps", "1", "--max_steps", "20", "--save_strategy", "steps", "--save_steps", "5",
         "--dataloader_num_workers", "0", "--no_measure"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill-assets")
    teacher, data = save_tiny_assets(root)
    config = json.load(open(os.path.join(teacher, "config.json")))
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # randomness that a resume must replay
    json.dump(config, open(os.path.join(teacher, "config.json"), "w"))
    narrow = root / "narrow"  # a student narrower than the teacher: hidden-state KD learns projections
    student = tiny_bert(num_layers=2, hidden=24, heads=4, seed=11)
    student.config.hidden_dropout_prob = 0.1
    student.save_pretrained(narrow)
    make_tokenizer().save_pretrained(narrow)
    return {"teacher": teacher, "data": data, "narrow": str(narrow)}


def _script(name):
    return [sys.executable, os.path.join(ROOT, "scripts", f"{name}.py")]


RUNS = {
    "distill_projections": lambda a: [*_script("distill"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                                      "--student_model", a["narrow"], "--hidden_weight", "1", "--relation_weight", "1"],
    # magnitude pruning's kill and resume: test_prune_script.py::test_killed_run_resumes_to_the_same_masks
    "qat_ternary_kd": lambda a: [*_script("qat"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                                 "--qat_weight_bits", "2", "--hidden_weight", "1"],  # learned activation ranges too
    "share_k4_kd": lambda a: [*_script("share"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                              "--weight_sharing_k", "4", "--alpha", "0.5"],
    "prune_movement_kd": lambda a: [*_script("prune"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                                    "--method", "movement", "--target_sparsity", "0.5", "--alpha", "0.5",
                                    "--pruning_start", "0", "--pruning_end", "0.9"],  # Adam-trained scores resume too
    "prune_structured_kd": lambda a: [*_script("prune"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                                      "--granularity", "structured", "--target_sparsity", "0.5", "--alpha", "0.5",
                                      "--pruning_start", "0", "--pruning_end", "0.9", "--mask_update_every", "1"],
    "lora": lambda a: [*_script("distill"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                       "--student_model", a["teacher"], "--lora_r", "2", "--learning_rate", "1e-3"],
    "lowrank": lambda a: [*_script("lowrank"), "--teacher_model", a["teacher"], "--dataset", a["data"],
                          "--parameter_budget", "0.6", "--learning_rate", "1e-3"],
}


def _env(tmp_path, pause=None):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    env.pop("HFCOMPRESS_TEST_PAUSE", None)
    if pause:
        env["HFCOMPRESS_TEST_PAUSE"] = pause
    return env


def _run(cmd, tmp_path):
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return res


def _markers(out, name: str) -> list:
    """The pause markers under `out`; [] when the run renamed or removed a folder while it was being walked (a
    temporary teacher-cache folder moved into place), so the next poll looks again."""
    try:
        return list(out.rglob(name))
    except FileNotFoundError:
        return []


def _run_and_kill(cmd, tmp_path, out, pause: str, beside=None) -> None:
    """Start `cmd`, wait until it pauses at `pause` ("step:N" / "save:N"; the marker may be in any folder under
    `out`), then SIGKILL it. `beside`: another command run meanwhile (the uninterrupted run: 2 cores, half the wait)."""
    kind, step = pause.split(":")
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=_env(tmp_path, pause), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    other = None if beside is None else subprocess.Popen(beside, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 600
        while not (markers := _markers(out, f".paused-{kind}-{step}")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.time() < deadline, "the run never reached " + pause
            time.sleep(0.2)
        markers[0].unlink()
        if other is not None:
            _, err = other.communicate(timeout=600)
            assert other.returncode == 0, err[-4000:]
    finally:  # a paused run waits for ever: never leave one behind
        for p in (proc, other):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def _weights(model_dir):
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    out = {}
    for f in files:
        out.update({f"{f}:{k}": v for k, v in load_file(os.path.join(model_dir, f)).items()})
    return out


def _assert_same_result(full, resumed):
    wa, wb = _weights(full / "model"), _weights(resumed / "model")
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run's by up to {worst}"
    sa, sb = (json.load(open(next(p.glob("*_summary.json")))) for p in (full, resumed))
    ma, mb = sa["metrics"]["student"]["test"], sb["metrics"]["student"]["test"]
    for key in ("test_loss", "test_accuracy"):
        assert mb[key] == pytest.approx(ma[key], abs=1e-6), key
    return sb


@pytest.mark.parametrize("name, pause, resumed_from", [
    ("distill_projections", "save:10", "checkpoint-5"),    # killed while checkpoint-10 was written: it is skipped
    ("qat_ternary_kd", "step:12", "checkpoint-10"),         # resumed on an epoch boundary (evaluation came after)
    ("share_k4_kd", "save:10", "checkpoint-5"),
    ("prune_structured_kd", "save:10", "checkpoint-5"),
    ("prune_movement_kd", "step:8", "checkpoint-5"),
    ("lora", "step:8", "checkpoint-5"),                     # resumed inside an epoch
    ("lowrank", "step:12", "checkpoint-10"),
])
def test_killed_run_resumes_to_the_same_result(assets, tmp_path, name, pause, resumed_from):
    cmd = RUNS[name](assets)
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run_and_kill([*cmd, *TRAIN, "--output_dir", str(killed)], tmp_path, killed, pause,
                  beside=[*cmd, *TRAIN, "--output_dir", str(full)])
    cut = killed / "checkpoints" / f"checkpoint-{pause.split(':')[1]}"
    if pause.startswith("save") and name.startswith("prune"):
        # as the issue saw it: the kill landed while the Trainer wrote the checkpoint, which held only config.json
        for f in cut.iterdir():
            if f.name != "config.json":
                f.unlink() if f.is_file() else shutil.rmtree(f)
    res = _run([*cmd, *TRAIN, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"], tmp_path)
    if pause.startswith("save"):  # named, skipped, left in place (the resumed run writes it anew at its step)
        assert f"Checkpoint {cut} is incomplete (no hfcompress_checkpoint.json" in res.stderr
        assert "no pruning_config.json" not in res.stderr
    summary = _assert_same_result(full, killed)
    assert summary["training"]["resumed_from"].endswith(resumed_from)
    assert summary["training"]["steps"] == 20


def test_a_recipe_killed_mid_stage_resumes_to_the_same_result(assets, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "kill", "base_model": assets["teacher"], "seed": 5, "data": {"dataset": assets["data"]},
        "stages": [
            {"name": "distil", "method": "distill",
             "args": {"student_layers": "0,2", "max_steps": 10, "per_device_train_batch_size": 8,
                      "eval_strategy": "epoch", "save_strategy": "steps", "save_steps": 5}},
            {"name": "prune", "method": "prune",
             "args": {"granularity": "structured", "target_sparsity": 0.5, "max_steps": 20,
                      "per_device_train_batch_size": 8, "eval_strategy": "epoch", "save_strategy": "steps",
                      "save_steps": 5, "pruning_start": 0, "pruning_end": 0.9}},
        ],
        "measure": {"latency_rounds": 1, "measure_memory": False},
    }))
    full, killed = tmp_path / "full", tmp_path / "killed"
    # the distil stage ends at step 10: the pause at step 12 is inside the prune stage
    _run_and_kill([*_script("compress"), "--recipe", str(recipe), "--output_dir", str(killed)], tmp_path, killed,
                  "step:12", beside=[*_script("compress"), "--recipe", str(recipe), "--output_dir", str(full)])
    res = _run([*_script("compress"), "--recipe", str(recipe), "--output_dir", str(killed)], tmp_path)
    assert "Stage distil: done before, kept" in res.stderr and "resuming from" in res.stderr
    wa, wb = _weights(full / "model"), _weights(killed / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k
    sa, sb = (json.load(open(p / "recipe_summary.json")) for p in (full, killed))
    assert sb["comparison"]["model"]["metrics"]["accuracy"] == sa["comparison"]["model"]["metrics"]["accuracy"]


def test_an_incomplete_checkpoint_named_by_hand_is_one_clear_error(assets, tmp_path):
    cmd = RUNS["prune_structured_kd"](assets)
    out = tmp_path / "out"
    _run_and_kill([*cmd, *TRAIN, "--output_dir", str(out)], tmp_path, out, "save:10")
    cut = out / "checkpoints" / "checkpoint-10"
    res = subprocess.run([*cmd, *TRAIN, "--output_dir", str(out), "--resume_from_checkpoint", str(cut)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-2]
    assert "is incomplete (no hfcompress_checkpoint.json" in line and "checkpoint-5 (the latest complete one)" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-10", "checkpoint-5"]  # nothing deleted


def test_a_second_run_into_a_used_output_dir_is_refused_unless_told(assets, tmp_path):
    cmd = [*_script("distill"), "--teacher_model", assets["teacher"], "--dataset", assets["data"], "--student_layers",
           "0,2", "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--no_measure",
           "--output_dir", str(tmp_path / "out")]
    _run(cmd, tmp_path)
    first = (tmp_path / "out" / "model" / "model.safetensors").read_bytes()
    line = command_fails("distill", cmd[2:], tmp_path)  # the refusal, in this process (no interpreter start)
    assert "already holds a run (model, distill_summary.json)" in line and "--overwrite_output_dir" in line, line
    assert (tmp_path / "out" / "model" / "model.safetensors").read_bytes() == first  # nothing touched
    _run([*cmd, "--overwrite_output_dir"], tmp_path)


FINETUNE = """
import sys
from hfcompress.data import load_text_classification
from hfcompress.run.finetune import FinetuneConfig, prepare_teacher
cfg = FinetuneConfig(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3, seed=5)
print(prepare_teacher(sys.argv[1], load_text_classification(sys.argv[2]), sys.argv[3], cfg))
"""


@pytest.mark.parametrize("pause, resumed_from", [("step:15", "checkpoint-10"),   # inside the second epoch
                                                 ("save:20", "checkpoint-10")])  # checkpoint-20 cut in half
def test_killed_teacher_fine_tune_resumes_to_the_same_teacher(assets, tmp_path, pause, resumed_from):
    """A headless teacher's fine-tune (an hour for MPNet-base on a CPU) killed from outside resumes from its last
    epoch's checkpoint when started again, and caches the teacher the uninterrupted fine-tune caches."""
    headless = tmp_path / "headless"
    model = tiny_bert(num_layers=2, seed=3)
    model.config.hidden_dropout_prob = 0.1  # randomness the resume must replay
    model.base_model.save_pretrained(headless)
    make_tokenizer().save_pretrained(headless)
    cmd = [sys.executable, "-c", FINETUNE, str(headless), assets["data"]]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run_and_kill([*cmd, str(killed)], tmp_path, killed, pause, beside=[*cmd, str(full)])
    assert not (killed / "finetune_summary.json").exists() and (killed / "trainer" / "checkpoint-10").is_dir()
    _run([*cmd, str(killed)], tmp_path)
    wa, wb = _weights(full), _weights(killed)
    assert wa.keys() == wb.keys() and wa
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= 1e-6, f"the resumed teacher differs from the uninterrupted one by up to {worst}"
    summary = json.load(open(killed / "finetune_summary.json"))
    assert summary["resumed_from"] == resumed_from and json.load(open(full / "finetune_summary.json"))[
        "resumed_from"] is None
    assert not list((killed / "trainer").glob("checkpoint-*"))  # removed once the teacher is saved
    # a fine-tune of another key in the same folder starts afresh (never resumes a stale checkpoint)
    (killed / "trainer" / "checkpoint-10").mkdir()
    (killed / "trainer" / "checkpoint-10" / "trainer_state.json").write_text("{}")
    from hfcompress.run.finetune import _resumable_checkpoint

    assert _resumable_checkpoint(str(killed / "trainer"), "another-key") is None
    assert not (killed / "trainer" / "checkpoint-10").exists()
