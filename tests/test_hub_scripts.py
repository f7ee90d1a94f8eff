"""--push_to_hub and --push_dry_run on the scripts, end to end: a training script run in its own process pushes its
model folder (weights, config, tokenizer, card, plot) to a local stand-in of the Hub in exactly one commit, the
Trainer never pushes checkpoints on its own, and a dry run writes exactly the folder that would be uploaded."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, save_tiny_assets, write_reviews_csv
from hub_stand_in import HubStandIn
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from hfcompress.hub import upload_content

FAST = ["--latency_rounds", "1", "--no_measure_memory"]
TRAIN = ["--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2", "--use_cpu",
         "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--student_num_layers", "1"]


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()
    server = HubStandIn().start()
    yield server
    server.stop()
    close_session()
    assert not server.unknown, server.unknown


def _env(tmp_path, endpoint=None):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if endpoint:
        env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_TOKEN="hf_stand_in_token")
    return env


def _uploaded(model_dir, name) -> bytes:
    """The bytes a push sends for `name`: the file's, or a JSON file's with local folders shortened."""
    content = upload_content(str(model_dir), name)
    return content if isinstance(content, bytes) else open(content, "rb").read()


def test_training_script_pushes_its_model_folder_in_one_commit(hub, tmp_path):
    teacher, _ = save_tiny_assets(tmp_path / "assets")
    data = write_reviews_csv(tmp_path / "reviews.csv", n=60)
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--teacher_model", teacher, "--dataset", data,
           "--output_dir", str(out), *TRAIN, *FAST, "--push_to_hub", "--hub_model_id", "user/tiny-distilled",
           "--hub_private_repo", "true"]
    res = subprocess.run(cmd, env=_env(tmp_path, hub.endpoint), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    assert len(hub.commits) == 1, hub.commits  # one commit: the Trainer pushed no checkpoint
    model = out / "model"
    files = hub.files("user/tiny-distilled")
    assert set(files) == set(os.listdir(model)) >= {"README.md", "compression.png", "config.json", "model.safetensors"}
    for name, data in files.items():  # as on disk; JSON naming the machine's folders with those shortened
        assert _uploaded(model, name) == data, name
    assert str(tmp_path) not in files["hfcompress_record.json"].decode()
    assert hub.repos["user/tiny-distilled"].private is True
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["artifacts"]["hub"]["repo_id"] == "user/tiny-distilled"
    assert sorted(summary["artifacts"]["hub"]["files"]) == sorted(files)


def test_quantize_push_dry_run_is_the_exact_upload(tmp_path):
    teacher, data = save_tiny_assets(tmp_path / "assets")
    out = tmp_path / "q"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "quantize.py"), "--model", teacher, "--dataset", data,
           "--output_dir", str(out), "--quantization", "torch_int8", *FAST, "--push_dry_run",
           "--hub_model_id", "me/tiny-int8"]
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    upload = out / "hub_upload"
    assert set(os.listdir(upload)) - {"push_plan.json"} == set(os.listdir(out / "model"))
    for name in os.listdir(out / "model"):
        assert (upload / name).read_bytes() == _uploaded(out / "model", name), name
    assert str(tmp_path) not in (upload / "hfcompress_record.json").read_text()
    plan = json.loads((upload / "push_plan.json").read_text())
    assert plan["repo_id"] == "me/tiny-int8" and "token" not in json.dumps(plan).lower().replace("tokenizer", "")


def test_push_with_the_hub_offline_is_refused_before_work(tmp_path):
    teacher, data = save_tiny_assets(tmp_path / "assets")
    out = tmp_path / "never"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--teacher_model", teacher, "--dataset", data,
           "--output_dir", str(out), *TRAIN, "--push_to_hub", "--hub_model_id", "user/x"]
    env = _env(tmp_path)
    env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "--push_dry_run" in res.stderr, res.stderr[-3000:]
    assert not (out / "checkpoints").exists()
