"""A Hub token given on the command line (or in a recipe) never reaches a file: every command that can push is run
with a recognisable fake token and --push_dry_run, then every byte under its output folder (model, checkpoints, run
record, card, dry-run upload and plan, recipe state), and what it printed, is searched for the token. A push to the
local Hub stand-in is searched likewise (it records every uploaded byte), and the model folders hold no pickle."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, save_tiny_assets, write_reviews_csv
from hub_stand_in import HubStandIn
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from hfcompress.errors import UserInputError
from hfcompress.hub import HubSettings, is_pickle, upload_plan, write_dry_run
from hfcompress.tokens import forget_tokens, held_token, redact_argv, take_tokens

TOKEN = "hf_FAKELEAKc0ffee1234567890"
FAST = ["--latency_rounds", "1", "--no_measure_memory"]
TRAIN = ["--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2", "--use_cpu",
         "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak-assets")
    teacher, _ = save_tiny_assets(root)
    return teacher, write_reviews_csv(root / "reviews.csv", n=60)


def _env(tmp_path, endpoint=None):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    if endpoint:
        env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost")
    return env


def _files_holding(folder, needle: bytes) -> list[str]:
    hits = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path) and needle in open(path, "rb").read():
                hits.append(os.path.relpath(path, folder))
    return hits


def _pickles(folder) -> list[str]:
    return [os.path.relpath(os.path.join(r, n), folder) for r, _, names in os.walk(folder) for n in names
            if is_pickle(os.path.join(r, n))]


def _script(name):
    return [sys.executable, os.path.join(ROOT, "scripts", f"{name}.py")]


def _commands(teacher, data, out, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "leak", "base_model": teacher, "seed": 0, "data": {"dataset": data},
        "stages": [{"method": "distill", "args": {"student_layers": "0,2", "max_steps": 4, "eval_strategy": "no",
                                                   "save_strategy": "steps", "save_steps": 2,
                                                   "per_device_train_batch_size": 8}},
                   {"method": "quantize", "args": {"quantization": "torch_int8"}}],
        "measure": {"latency_rounds": 1, "measure_memory": False},
        "hub": {"hub_token": TOKEN, "hub_model_id": "me/leak"},  # a token written into the recipe file, too
    }))
    common = ["--output_dir", str(out), "--push_dry_run", "--hub_model_id", "me/leak"]
    return {
        "distill": [*_script("distill"), "--teacher_model", teacher, "--dataset", data, "--student_layers", "1,3",
                    *TRAIN, *FAST, *common, "--hub_token", TOKEN],
        "prune": [*_script("prune"), "--teacher_model", teacher, "--dataset", data, "--granularity", "structured",
                  "--target_sparsity", "0.5", *TRAIN, *FAST, *common, f"--hub_token={TOKEN}"],
        "lowrank": [*_script("lowrank"), "--teacher_model", teacher, "--dataset", data, "--parameter_budget", "0.5",
                    *TRAIN, *FAST, *common, "--hub_token", TOKEN],
        "quantize": [*_script("quantize"), "--model", teacher, "--dataset", data, "--quantization", "torch_int8",
                     *FAST, *common, "--hub_token", TOKEN],
        "compress": [*_script("compress"), "--recipe", str(recipe), "--output_dir", str(out), "--push_dry_run"],
    }


@pytest.mark.parametrize("command", ["distill", "prune", "lowrank", "quantize", "compress"])
def test_no_command_writes_the_token_anywhere(tiny, tmp_path, command):
    teacher, data = tiny
    out = tmp_path / "out"
    cmd = _commands(teacher, data, out, tmp_path)[command]
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (out / "hub_upload" / "push_plan.json").exists()
    assert _files_holding(out, TOKEN.encode()) == []
    assert TOKEN not in res.stdout and TOKEN not in res.stderr
    assert _pickles(out / "model") == [] and _pickles(out / "hub_upload") == []
    if command != "quantize":  # the run folder keeps the training arguments readable, without the token
        args_json = out / "training_args.json" if command != "compress" else next(out.rglob("training_args.json"))
        assert '"hub_token": "<HUB_TOKEN>"' in args_json.read_text() or '"hub_token": null' in args_json.read_text()
    # and the command line recorded in the run record says a token was given, without it
    summary = next(out.glob("*_summary.json")).read_text()
    if command != "compress":
        assert "--hub_token" in summary and "<redacted>" in summary


def test_hfcompress_push_dry_run_and_the_stand_in_get_no_token(tiny, tmp_path, monkeypatch):
    teacher, data = tiny
    out = tmp_path / "q"
    res = subprocess.run([*_script("quantize"), "--model", teacher, "--dataset", data, "--quantization", "torch_int8",
                          "--output_dir", str(out), "--no_measure"], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    exe = [sys.executable, "-m", "hfcompress", "push", str(out / "model"), "--hub_model_id", "me/q",
           "--hub_token", TOKEN]
    dry = tmp_path / "dry"
    res = subprocess.run([*exe, "--push_dry_run", str(dry)], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _files_holding(dry, TOKEN.encode()) == [] and TOKEN not in res.stdout + res.stderr

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()
    server = HubStandIn().start()
    try:
        res = subprocess.run(exe, env=_env(tmp_path, server.endpoint), capture_output=True, text=True, timeout=300,
                             cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(server.commits) == 1
        uploaded = server.files("me/q")
        assert uploaded and not any(TOKEN.encode() in body for body in uploaded.values())
        assert not any(name.endswith(".bin") for name in uploaded)
    finally:
        server.stop()
        close_session()


def test_a_folder_with_a_pickle_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    torch.save({"hub_token": TOKEN}, folder / "training_args.bin")
    with pytest.raises(UserInputError, match=r"pickle files \(training_args.bin\).*nothing was uploaded"):
        upload_plan(str(folder))
    with pytest.raises(UserInputError, match="training_args.bin"):
        write_dry_run(str(folder), str(tmp_path / "dry"), HubSettings(repo_id="me/x", dry_run=True))
    assert not (tmp_path / "dry").exists()
    (folder / "training_args.bin").unlink()
    (folder / "notes.bin").write_bytes(b"\x80\x04K\x01.")  # a bare pickle under another name
    with pytest.raises(UserInputError, match="notes.bin"):
        upload_plan(str(folder))
    (folder / "notes.bin").unlink()
    assert upload_plan(str(folder)) == ["config.json", "model.safetensors"]


def test_tokens_leave_the_arguments_and_stay_in_memory():
    from transformers import TrainingArguments

    from hfcompress.hub import HubArguments, hub_settings

    forget_tokens()
    args, hub = TrainingArguments(output_dir="x", hub_token=TOKEN, report_to=[]), HubArguments(hub_token=TOKEN)
    take_tokens(args, hub)
    assert args.hub_token is None and hub.hub_token is None and held_token() == TOKEN
    hub.push_to_hub = True
    assert hub_settings(hub).token == TOKEN and TOKEN not in repr(hub_settings(hub))
    assert redact_argv(["x", "--hub_token", TOKEN, f"--hub_token={TOKEN}", "--pad_token", "p"]) == [
        "x", "--hub_token", "<redacted>", "--hub_token=<redacted>", "--pad_token", "p"]
    forget_tokens()


def test_the_recorded_command_is_redacted_and_runs_as_typed():
    import shlex

    from hfcompress.tokens import command_line, invoked_as

    argv = ["hfcompress", "quantize", "--onnx_float_modules", r"layer\.0\.output\.dense$", "--hub_token", "hf_secret",
            "--output_dir", "my runs/x"]
    with invoked_as(argv):
        line = command_line()
    assert "hf_secret" not in line and "--hub_token <redacted>" in line
    words = shlex.split(line)  # what a POSIX shell passes on when the line is copied
    assert words[3] == r"layer\.0\.output\.dense$" and words[-1] == "my runs/x"
