"""scripts/distill.py end to end on tiny local assets: one process, two processes, --help, config files, errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import command_fails, save_tiny_assets
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "distill.py")
COMMON = ["--student_num_layers", "2", "--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "steps",
          "--save_steps", "4", "--logging_steps", "1", "--seed", "11", "--use_cpu", "--hidden_weight", "1.0",
          "--dataloader_num_workers", "0"]


def _env(tmp_path):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return env


def accelerate_launcher() -> str:
    """The `accelerate` command of this interpreter's environment (else the one on PATH)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return launcher if os.path.exists(launcher) else shutil.which("accelerate")


# The scripts' own measurement (compare with the teacher, card, plot) runs in every test, with one latency round and
# no fresh-process memory probe (two interpreter starts per run; tests/test_quantize_script.py covers the probe).
FAST_REPORT = ["--latency_rounds", "1", "--no_measure_memory"]


def _run(cmd, tmp_path, timeout=300):
    if any(str(c).startswith(os.path.join(ROOT, "scripts")) for c in cmd) and "--help" not in cmd:
        cmd = [*cmd, *FAST_REPORT]
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


def test_help_documents_every_option():
    res = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0
    out = res.stdout
    for flag in ("--teacher_model", "--student_num_layers", "--dataset", "--cache_teacher", "--temperature", "--alpha",
                 "--hidden_weight", "--attention_weight", "--layer_map", "--config", "--output_dir"):
        assert flag in out, flag
    # Every one of the script's own options carries help text.
    from conftest import load_script

    mod = load_script("distill")
    from dataclasses import fields

    from hfcompress.distill.config import DistillationConfig
    from hfcompress.run import DataArguments, ModelArguments

    for cls in (ModelArguments, DataArguments, mod.DistillScriptArguments, DistillationConfig):
        for f in fields(cls):
            if f.init and f.name in cls.__dict__.get("__annotations__", {}):
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_one_and_two_processes_agree(tiny, tmp_path):
    teacher, data = tiny
    one = tmp_path / "one"
    _run([sys.executable, SCRIPT, "--output_dir", str(one), "--teacher_model", teacher, "--dataset", data,
          "--per_device_train_batch_size", "8", *COMMON], tmp_path)
    two = tmp_path / "two"
    launcher = accelerate_launcher()
    # `accelerate launch --num_processes 2 --cpu` starts one process in accelerate 1.15; --multi_gpu on a machine
    # without GPUs starts two CPU ranks over gloo.
    res = _run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", SCRIPT, "--output_dir", str(two), "--teacher_model", teacher, "--dataset", data,
                "--per_device_train_batch_size", "4", *COMMON], tmp_path)
    s1 = json.load(open(one / "distill_summary.json"))
    s2 = json.load(open(two / "distill_summary.json"))
    assert s1["training"]["num_processes"] == 1 and s2["training"]["num_processes"] == 2, res.stderr[-2000:]
    for out in (one, two):
        ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
        assert ckpts == ["checkpoint-4"]
        # The publishable model stands alone: no checkpoint, cache or run file beside it; its card and plot do, and
        # its record (what the card is rendered from, and the lineage the next command reads).
        assert sorted(p.name for p in (out / "model").iterdir()) == sorted(
            ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "README.md", "compression.png", "hfcompress_record.json"])
        assert (out / "training_args.json").exists()  # the run's arguments, readable, beside (not in) the model
    # Measured once, by the main process, against the teacher; the card shows those numbers.
    for s in (s1, s2):
        c = s["comparison"]
        assert c["base"]["path"] == os.path.abspath(teacher) and c["model"]["path"].endswith("model")
        assert c["accuracy_delta_points"] == pytest.approx(100 * (c["model"]["metrics"]["accuracy"]
                                                                  - c["base"]["metrics"]["accuracy"]))
    card = (two / "model" / "README.md").read_text()
    assert f"{s2['comparison']['size_ratio']:.2f}x smaller" in card and "knowledge distillation" in card
    # Same 8 examples per optimizer step in both runs: the loss and the trained weights agree.
    assert s2["training"]["loss_mean_of_logged_steps"] == pytest.approx(s1["training"]["loss_mean_of_logged_steps"], rel=1e-3)
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4, rtol=1e-3), k


def test_config_file_and_flags(tiny, tmp_path):
    teacher, data = tiny
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"teacher_model: {teacher}\ndataset: {data}\ntemperature: 3.0\nalpha: 0.9\nmax_steps: 2\n"
                   "eval_strategy: 'no'\nsave_strategy: 'no'\nstudent_num_layers: 1\nuse_cpu: true\n")
    out = tmp_path / "cfg"
    _run([sys.executable, SCRIPT, "--config", str(cfg), "--output_dir", str(out), "--alpha", "0.8"], tmp_path)
    s = json.load(open(out / "distill_summary.json"))
    assert s["methods"]["distillation"]["temperature"] == 3.0  # from the file
    assert s["methods"]["distillation"]["alpha"] == 0.8  # the flag wins
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(out / "model")  # reloads in a fresh process' way
    assert student.config.num_hidden_layers == 1
    assert os.path.exists(out / "model" / "tokenizer.json")
    assert s["metrics"]["student"]["test"]["test_accuracy"] >= 0 and s["metrics"]["teacher"]["test"]["accuracy"] >= 0
    assert s["settings"]["data"]["dataset"] == data and s["models"]["student"]["parameters"] > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "0"], "temperature must be > 0"),
        (["--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--hidden_weight", "1", "--layer_map", "1:9"], "teacher index 9 out of range"),
        (["--hidden_weight", "1", "--layer_map", "5:1"], "student index 5 out of range"),
        (["--text_column", "review"], "text column 'review' not found"),
        (["--label_column", "stars"], "label column 'stars' not found"),
    ],
)
def test_bad_input_fails_before_training(tiny, tmp_path, flags, message):
    teacher, data = tiny
    out = tmp_path / "bad"
    line = command_fails("distill", ["--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
                                     "--student_num_layers", "2", "--use_cpu", *flags], tmp_path,
                         fresh_process=flags[0] == "--temperature")  # one case as a real command line
    assert message in line, line
    assert not (out / "checkpoints").exists(), "no training may start"


def test_teacher_with_other_labels_fails_before_training(tmp_path):
    from conftest import make_tokenizer, tiny_bert

    _, data = save_tiny_assets(tmp_path / "assets")
    teacher = tmp_path / "three"
    tiny_bert(num_layers=2, labels=["a", "b", "c"]).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    out = tmp_path / "out"
    line = command_fails("distill", ["--output_dir", str(out), "--teacher_model", str(teacher), "--dataset", data,
                                     "--use_cpu"], tmp_path)
    assert "teacher predicts 3 labels ['a', 'b', 'c'] but the dataset has 2" in line, line
    assert not (out / "checkpoints").exists()


def test_bad_layer_map_fails_before_a_headless_teacher_is_finetuned(tmp_path):
    from conftest import make_tokenizer, tiny_bert

    _, data = save_tiny_assets(tmp_path / "assets")
    headless = tmp_path / "headless"
    tiny_bert(num_layers=4).base_model.save_pretrained(headless)
    make_tokenizer().save_pretrained(headless)
    line = command_fails("distill", ["--output_dir", str(tmp_path / "out"), "--teacher_model", str(headless),
                                     "--dataset", data, "--teacher_dir", str(tmp_path / "teacher-ft"),
                                     "--student_num_layers", "2", "--hidden_weight", "1", "--layer_map", "3:4",
                                     "--use_cpu"], tmp_path)
    assert "student index 3 out of range: the student has layers 0..2" in line, line
    assert not (tmp_path / "teacher-ft").exists(), "the teacher must not be fine-tuned before the error"


def test_full_recipe_from_cache_with_another_teacher(tmp_path):
    """Hidden states through projections + relations + staged schedule, MPNet-style teacher of another width and
    tokenizer, all teacher outputs from the cache (no teacher forward during training): the benchmark's recipe."""
    from conftest import make_tokenizer, tiny_bert

    teacher, data = save_tiny_assets(tmp_path / "assets", teacher_kind="mpnet", teacher_offset=4)  # width 48
    student_dir = str(tmp_path / "student")
    tiny_bert(num_layers=4, hidden=32, seed=9).save_pretrained(student_dir)
    make_tokenizer().save_pretrained(student_dir)
    out = tmp_path / "full"
    _run([sys.executable, SCRIPT, "--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
          "--student_model", student_dir, "--student_layers", "1,3", "--hidden_weight", "1", "--layer_map", "1:2,2:4",
          "--relation_weight", "1", "--intermediate_fraction", "0.5", "--max_steps", "6", "--logging_steps", "1",
          "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "--per_device_train_batch_size", "8"], tmp_path)
    s = json.load(open(out / "distill_summary.json"))
    kd = s["methods"]["distillation"]
    assert kd["teacher_cache"]["hidden_layers"] == [2, 4] and kd["teacher_cache"]["relation_layers"]
    assert kd["relation_weight"] == 1.0 and kd["intermediate_fraction"] == 0.5
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert student.config.num_hidden_layers == 2
