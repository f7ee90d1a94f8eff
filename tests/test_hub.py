"""hfcompress.hub end to end: the real huggingface_hub client against a local stand-in of the Hub (tests/hub_stand_in.py).

conftest.py (and CI) set HF_HUB_OFFLINE=1; the `hub` fixture switches huggingface_hub's offline flag off for the
test only, so the client really talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil

import pytest
from conftest import make_tokenizer, tiny_bert
from hub_stand_in import HubStandIn
from huggingface_hub import constants
from huggingface_hub.utils import close_session

from hfcompress.errors import UserInputError
from hfcompress.hub import (
    HubArguments,
    HubPushError,
    HubSettings,
    PushArguments,
    _is_transient,
    add_push_arguments,
    check_hub_settings,
    hub_settings,
    push,
    push_folder,
    run_push,
    upload_plan,
    write_dry_run,
)

README = "---\nlicense: apache-2.0\ntags:\n- hfcompress\n---\n\n# tiny\n\nA tiny random BERT.\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A finished output folder: tiny BERT weights + config, tokenizer, card, plots, plus files a push leaves out."""
    root = tmp_path_factory.mktemp("run") / "tiny-bert-pruned"
    tiny_bert(num_layers=1, hidden=16, heads=2).save_pretrained(root)
    make_tokenizer().save_pretrained(root)
    (root / "README.md").write_text(README)
    (root / "plot.png").write_bytes(PNG)
    (root / "plots").mkdir()
    (root / "plots" / "loss.png").write_bytes(PNG[::-1])
    (root / ".cache").mkdir()
    (root / ".cache" / "state").write_text("hidden")
    (root / ".lock").write_text("")
    (root / "results.json.tmp").write_text("{}")
    return str(root)


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # what the client's request hook reads
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    close_session()  # a fresh httpx client that sees the environment above
    server = HubStandIn().start()
    yield server
    server.stop()
    close_session()
    assert not server.unknown, f"the client called routes the stand-in lacks: {server.unknown}"


def snapshot(folder) -> dict[str, str]:
    """sha256 of every file under `folder`, hidden ones included."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def local_bytes(model_dir, plan):
    out = {}
    for rel in plan:
        with open(os.path.join(model_dir, rel), "rb") as fh:
            out[rel] = fh.read()
    return out


def settings(repo_id="user/tiny", **kw):
    return HubSettings(repo_id=repo_id, token=kw.pop("token", "hf_stand_in"), **kw)


def test_upload_plan(model_dir):
    plan = upload_plan(model_dir)
    assert plan == sorted(plan)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "plot.png",
            "plots/loss.png"} <= set(plan)
    assert not any(p.startswith(".") or "/." in p or p.endswith(".tmp") for p in plan)


def test_push_one_commit_byte_identical(hub, model_dir):  # (a)
    before = snapshot(model_dir)
    s = check_hub_settings(settings(private=True), model_dir)
    url = push_folder(model_dir, s, backoff=0.01, endpoint=hub.endpoint)
    plan = upload_plan(model_dir)
    commits = hub.commits_of("user/tiny")
    assert len(commits) == 1 and commits[0]["revision"] == "main"
    assert url == f"{hub.endpoint}/user/tiny/commit/{commits[0]['oid']}"
    assert hub.files("user/tiny") == local_bytes(model_dir, plan)  # exactly those files, same bytes
    assert hub.repos["user/tiny"].private is True
    assert hub.count("create") == 1 and hub.count("commit") == 1 and hub.count("branch") == 0
    assert set(hub.auth) == {"Bearer hf_stand_in"}
    assert snapshot(model_dir) == before


def test_push_bare_name_and_default_name(hub, model_dir, tmp_path):
    # a bare name goes under the token owner's namespace (resolved by create_repo), the default is the folder name
    result = push(model_dir, HubSettings(repo_id=None, private=False), output_dir=model_dir, endpoint=hub.endpoint)
    assert result["repo_id"] == "tiny-bert-pruned" and result["revision"] == "main"
    assert result["files"] == upload_plan(model_dir)
    assert len(hub.commits_of("user/tiny-bert-pruned")) == 1
    assert result["commit"].endswith(hub.commits_of("user/tiny-bert-pruned")[0]["oid"])
    assert hub.repos["user/tiny-bert-pruned"].private is False


def test_push_to_branch(hub, model_dir):  # (b)
    push_folder(model_dir, settings(revision="compressed"), backoff=0.01, endpoint=hub.endpoint)
    assert hub.count("branch") == 1
    assert [c["revision"] for c in hub.commits_of("user/tiny")] == ["compressed"]
    assert hub.files("user/tiny", "compressed") == local_bytes(model_dir, upload_plan(model_dir))
    assert hub.files("user/tiny", "main") == {}
    # pushing the same folder again: the branch exists (409, fine) and the client skips the empty commit
    push_folder(model_dir, settings(revision="compressed"), backoff=0.01, endpoint=hub.endpoint)
    assert hub.count("branch") == 2 and len(hub.commits_of("user/tiny")) == 1


def test_transient_commit_failure_is_retried(hub, model_dir, caplog):  # (c)
    hub.fail("commit", 500, times=1)
    with caplog.at_level(logging.WARNING, logger="hfcompress.hub"):
        push_folder(model_dir, settings(), retries=4, backoff=0.01, endpoint=hub.endpoint)
    assert hub.count("commit") == 2
    commits = hub.commits_of("user/tiny")
    assert len(commits) == 1
    assert commits[0]["files"] == local_bytes(model_dir, upload_plan(model_dir))
    assert "attempt 1 of 5" in caplog.text


def test_lost_commit_response_makes_no_second_commit(hub, model_dir):
    # the commit lands but its answer is a 502: the retry finds every file unchanged and commits nothing new
    hub.fail("commit", 502, times=1, after_apply=True)
    url = push_folder(model_dir, settings(), retries=2, backoff=0.01, endpoint=hub.endpoint)
    commits = hub.commits_of("user/tiny")
    assert len(commits) == 1 and url.endswith(commits[0]["oid"])
    assert hub.count("commit") == 1 and hub.count("info") == 1  # the retry asked for the head instead


def test_persistent_failure_leaves_no_commit_and_local_folder_intact(hub, model_dir):  # (d)
    before = snapshot(model_dir)
    hub.fail("commit", 500, times=None)
    with pytest.raises(HubPushError) as info:
        push_folder(model_dir, settings(), retries=3, backoff=0.01, endpoint=hub.endpoint)
    message = str(info.value)
    assert os.path.abspath(model_dir) in message and "intact" in message and "after 4 attempts" in message
    assert hub.count("commit") == 4
    assert hub.commits_of("user/tiny") == []
    assert hub.files("user/tiny") == {}
    assert snapshot(model_dir) == before


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_fails_at_once(hub, model_dir, status):  # (e)
    hub.fail("create", status, times=None)
    with pytest.raises(HubPushError) as info:
        push_folder(model_dir, settings(), retries=4, backoff=10.0, endpoint=hub.endpoint)  # a retry would hang
    assert "token" in str(info.value) and os.path.abspath(model_dir) in str(info.value)
    assert hub.count("create") == 1
    assert hub.count("commit") == 0 and hub.commits == []


def test_client_error_on_commit_fails_at_once(hub, model_dir):
    hub.fail("commit", 400, times=None)
    with pytest.raises(HubPushError):
        push_folder(model_dir, settings(), retries=4, backoff=10.0, endpoint=hub.endpoint)
    assert hub.count("commit") == 1 and hub.commits == []


def test_unreachable_hub_is_retried_then_fails(model_dir, monkeypatch):
    import socket

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    close_session()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HubPushError, match="after 2 attempts"):
        push_folder(model_dir, settings(), retries=1, backoff=0.01, endpoint=f"http://127.0.0.1:{port}")
    close_session()


def test_retry_classification():
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    def http_error(status):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        return HfHubHTTPError("x", response=httpx2.Response(status, request=request))

    assert all(_is_transient(http_error(s)) for s in (408, 429, 500, 502, 503, 504))
    assert not any(_is_transient(http_error(s)) for s in (400, 401, 403, 404, 409, 422))
    assert _is_transient(httpx2.ConnectError("refused")) and _is_transient(httpx2.ReadTimeout("slow"))
    assert _is_transient(TimeoutError()) and _is_transient(ConnectionResetError())
    assert not _is_transient(OfflineModeIsEnabled("offline"))
    assert not _is_transient(ValueError("bug"))


def test_dry_run_writes_exact_files_and_no_request(hub, model_dir, tmp_path, monkeypatch):  # (f)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a dry run needs no network
    before = snapshot(model_dir)
    s = HubSettings(repo_id="user/tiny", private=True, token="hf_secret", revision="v1", dry_run=True)
    result = push(model_dir, s, output_dir=str(tmp_path), commit_message="first")
    out = str(tmp_path / "hub_upload")
    plan = upload_plan(model_dir)
    assert result == {"dry_run": out, "files": plan}
    assert upload_plan(out) == plan
    assert local_bytes(out, plan) == local_bytes(model_dir, plan)
    with open(os.path.join(out, "push_plan.json")) as fh:
        pushed = json.load(fh)
    assert pushed["repo_id"] == "user/tiny" and pushed["revision"] == "v1" and pushed["private"] is True
    assert pushed["commit_message"] == "first"
    assert [f["path"] for f in pushed["files"]] == plan  # push_plan.json itself is not listed
    for f in pushed["files"]:
        data = local_bytes(model_dir, [f["path"]])[f["path"]]
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert "hf_secret" not in open(os.path.join(out, "push_plan.json")).read()
    # a second dry run replaces the first, leaving no temporary folder behind
    push(model_dir, s, output_dir=str(tmp_path), commit_message="second")
    assert json.load(open(os.path.join(out, "push_plan.json")))["commit_message"] == "second"
    assert sorted(os.listdir(tmp_path)) == ["hub_upload"]
    assert hub.requests == []
    assert snapshot(model_dir) == before


def test_dry_run_inside_the_model_folder_is_never_uploaded(model_dir, tmp_path):
    folder = str(tmp_path / "out")
    shutil.copytree(model_dir, folder)
    plan = upload_plan(folder)
    s = HubSettings(repo_id="user/tiny", dry_run=True)
    push(folder, s, output_dir=folder)
    push(folder, s, output_dir=folder)  # again: the first dry run is not copied into the second
    assert upload_plan(folder) == plan
    assert upload_plan(os.path.join(folder, "hub_upload")) == plan
    assert not [n for n in os.listdir(folder) if n.startswith(".hub_upload")]


def test_dry_run_refuses_to_replace_other_folders(model_dir, tmp_path):
    s = HubSettings(repo_id="user/tiny", dry_run=True)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="--push_dry_run"):
        write_dry_run(model_dir, str(keep), s)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(UserInputError, match="--push_dry_run"):
        write_dry_run(model_dir, model_dir, s)


def test_bad_input(model_dir, tmp_path, monkeypatch):  # (g)
    for bad in ("bad..name", "a/b/c", "-x", "x" * 100):
        with pytest.raises(UserInputError, match="--hub_model_id"):
            check_hub_settings(HubSettings(repo_id=bad, dry_run=True), model_dir)
    with pytest.raises(UserInputError, match="--hub_model_id"):  # the default from a folder name that is no id
        check_hub_settings(HubSettings(repo_id=None, dry_run=True), str(tmp_path / "my run"))
    with pytest.raises(UserInputError, match="--hub_revision"):
        check_hub_settings(HubSettings(repo_id="user/x", revision="my branch", dry_run=True), model_dir)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError) as info:
        check_hub_settings(HubSettings(repo_id="user/x"), model_dir)
    assert "HF_HUB_OFFLINE" in str(info.value) and "--push_dry_run" in str(info.value)
    assert check_hub_settings(HubSettings(repo_id=None, dry_run=True), model_dir).repo_id == "tiny-bert-pruned"

    with pytest.raises(UserInputError, match="does not exist"):
        upload_plan(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserInputError, match="config.json"):
        upload_plan(str(tmp_path / "empty"))
    with pytest.raises(UserInputError, match="config.json"):
        push_folder(str(tmp_path / "empty"), HubSettings(repo_id="user/x"))


def test_hub_settings_from_arguments(tmp_path):
    from transformers import HfArgumentParser, TrainingArguments

    assert hub_settings(HubArguments()) is None
    assert hub_settings(TrainingArguments(output_dir=str(tmp_path), report_to="none")) is None
    hub_args, push_args = HfArgumentParser((HubArguments, PushArguments)).parse_args_into_dataclasses(
        ["--push_to_hub", "--hub_model_id", "org/m", "--hub_private_repo", "true", "--hub_revision", "v2"])
    both = argparse.Namespace(**vars(hub_args), **vars(push_args))
    assert hub_settings(both) == HubSettings("org/m", private=True, token=None, revision="v2", dry_run=False)
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none", push_to_hub=True, hub_model_id="o/m",
                                 hub_token="hf_t", hub_revision="b")
    training.push_dry_run = True  # a training script's PushArguments, merged
    assert hub_settings(training) == HubSettings("o/m", private=None, token="hf_t", revision="b", dry_run=True)
    assert hub_settings(argparse.Namespace(push_dry_run=True)).dry_run


def test_push_command(hub, model_dir, monkeypatch, tmp_path):  # (h)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # as HF_ENDPOINT would
    parser = argparse.ArgumentParser()
    add_push_arguments(parser)
    args = parser.parse_args([model_dir, "--hub_model_id", "user/cli", "--hub_private_repo", "--hub_token", "hf_cli",
                              "--hub_revision", "v1", "--commit_message", "compressed with hfcompress"])
    assert run_push(args) == 0
    commits = hub.commits_of("user/cli")
    assert len(commits) == 1 and commits[0]["revision"] == "v1"
    assert commits[0]["summary"] == "compressed with hfcompress"
    assert hub.files("user/cli", "v1") == local_bytes(model_dir, upload_plan(model_dir))
    assert hub.repos["user/cli"].private is True and set(hub.auth) == {"Bearer hf_cli"}

    # dry runs through the command: no request; default folder beside the model folder, or the given one
    n = len(hub.requests)
    assert run_push(parser.parse_args([model_dir, "--hub_model_id", "user/cli", "--push_dry_run"])) == 0
    default_out = os.path.join(os.path.dirname(model_dir), "hub_upload")
    assert upload_plan(default_out) == upload_plan(model_dir)
    shutil.rmtree(default_out)
    out = str(tmp_path / "plan")
    assert run_push(parser.parse_args([model_dir, "--hub_model_id", "user/cli", "--push_dry_run", out])) == 0
    assert json.load(open(os.path.join(out, "push_plan.json")))["repo_id"] == "user/cli"
    assert len(hub.requests) == n

    with pytest.raises(UserInputError, match="--hub_model_id"):
        run_push(parser.parse_args([model_dir, "--hub_model_id", "bad..id"]))
    with pytest.raises(SystemExit):  # --hub_model_id is required
        parser.parse_args([model_dir])


def test_json_files_go_up_without_the_machines_folders(hub, model_dir, tmp_path):
    """A record or export metadata naming local folders is uploaded (and dry-run) with each folder shortened to its
    last two names; the local files keep the full paths, files without local paths go up byte for byte."""
    home = "/home/alice/projects/run7"
    record = {"settings": {"data": {"dataset": f"{home}/data/reviews.csv"}},
              "command": f"hfcompress prune --teacher_model {home}/teacher --output_dir={home}/out",
              "artifacts": {"model": f"{home}/out/model"}, "note": "a/relative/path stays", "url": "https://x/y/z"}
    with open(os.path.join(model_dir, "hfcompress_record.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    before = snapshot(model_dir)
    plan = upload_plan(model_dir)
    push_folder(model_dir, check_hub_settings(settings(), model_dir), backoff=0.01, endpoint=hub.endpoint)
    push(model_dir, HubSettings(repo_id="user/tiny", dry_run=True), output_dir=str(tmp_path))
    for uploaded in (hub.files("user/tiny"), local_bytes(str(tmp_path / "hub_upload"), plan)):
        text = uploaded["hfcompress_record.json"].decode()
        assert "alice" not in text and "/home/" not in text
        public = json.loads(text)
        assert public["settings"]["data"]["dataset"] == ".../data/reviews.csv"
        assert public["command"] == "hfcompress prune --teacher_model .../run7/teacher --output_dir=.../run7/out"
        assert public["artifacts"]["model"] == ".../out/model" and public["note"] == record["note"]
        assert public["url"] == record["url"]
        others = {rel: body for rel, body in uploaded.items() if rel != "hfcompress_record.json"}
        assert others == {rel: b for rel, b in local_bytes(model_dir, plan).items() if rel != "hfcompress_record.json"}
    plan_entry = next(f for f in json.load(open(tmp_path / "hub_upload" / "push_plan.json"))["files"]
                      if f["path"] == "hfcompress_record.json")  # the plan describes what goes up
    assert plan_entry["sha256"] == hashlib.sha256((tmp_path / "hub_upload" / "hfcompress_record.json").read_bytes()
                                                  ).hexdigest()
    assert snapshot(model_dir) == before and json.load(open(os.path.join(model_dir, "hfcompress_record.json"))) == record
