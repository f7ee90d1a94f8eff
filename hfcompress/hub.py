"""Push a finished output folder (weights, config, tokenizer, model card, plots) to the Hugging Face Hub.

Scripts call this once, after the model card is written:

    settings = hub_settings(args)                  # None: nothing to push
    if settings is not None:
        settings = check_hub_settings(settings, output_dir)   # before any work: bad ids and offline mode fail here
    ...  # train, save, write the card
    if settings is not None:
        push(model_dir, settings, output_dir)

The upload is one commit (`HfApi.create_commit` with one `CommitOperationAdd` per file), so the Hub either gets
the whole folder or no new revision. Transient failures (HTTP 408, 429 and 5xx, connection errors, timeouts) are
retried with exponential backoff; client errors (bad token, no write access) fail at once. Whatever happens, the
local folder is only read, never changed.

`--push_dry_run` writes the exact folder that would be uploaded to `<output_dir>/hub_upload/`, plus
`push_plan.json` beside the files (repository, branch, commit message, and each file's size and sha256; the plan
itself is not part of the upload), and sends nothing.

The `hfcompress push MODEL_DIR --hub_model_id NAME` command uses `add_push_arguments` and `run_push`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .errors import UserInputError
from .files import public_json_text
from .tokens import held_token

logger = logging.getLogger(__name__)

PLAN_NAME = "push_plan.json"
DRY_RUN_FOLDER = "hub_upload"
DEFAULT_REVISION = "main"


class HubPushError(RuntimeError):
    """The Hub refused the upload, or stayed unreachable through every retry. The local output is untouched."""


@dataclass
class HubArguments:
    """The Hub fields of `TrainingArguments`, same names and meanings, for scripts that do not parse those."""

    _argument_group_name = "Hub"

    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload the finished output folder (weights, config, tokenizer, model card, plots) to "
                  "the Hugging Face Hub in one commit at the end of the run."},
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "Repository to push to, 'namespace/name' or just 'name' (then under your own namespace). "
                  "Default: the name of the output folder under your namespace."},
    )
    hub_private_repo: bool | None = field(
        default=None,
        metadata={"help": "Create the repository as private (true or false). Default: the Hub default (public, unless the "
                  "organization's default is private). Ignored when the repository already exists."},
    )
    hub_token: str | None = field(
        default=None,
        metadata={"help": "Token with write access. Default: the HF_TOKEN environment variable or the token saved by "
                  "'hf auth login'."},
    )
    hub_revision: str | None = field(
        default=None,
        metadata={"help": "Branch to push to, created (from main) if missing. Default: main."},
    )


@dataclass
class PushArguments:
    """`--push_dry_run`, for every script that pushes (training scripts get the other fields from TrainingArguments)."""

    push_dry_run: bool = field(
        default=False,
        metadata={"help": "Upload nothing: write the exact folder that would be uploaded to "
                  "<output_dir>/hub_upload/ plus push_plan.json (repository, branch, commit message, each file's "
                  "size and sha256). Needs no network or token."},
    )


@dataclass(frozen=True)
class HubSettings:
    """Where and how to push. `repo_id` is None until `check_hub_settings` resolves the default."""

    repo_id: str | None
    private: bool | None = None
    token: str | None = field(default=None, repr=False)
    revision: str | None = None
    dry_run: bool = False


def hub_settings(args) -> HubSettings | None:
    """The Hub settings of parsed arguments (`TrainingArguments`, or `HubArguments` and `PushArguments`, or any object
    with those attribute names); None when neither `push_to_hub` nor `push_dry_run` is set."""
    push_to_hub = bool(getattr(args, "push_to_hub", False))
    dry_run = bool(getattr(args, "push_dry_run", False))
    if not (push_to_hub or dry_run):
        return None
    return HubSettings(
        repo_id=getattr(args, "hub_model_id", None),
        private=getattr(args, "hub_private_repo", None),
        token=getattr(args, "hub_token", None) or held_token("hub_token"),
        revision=getattr(args, "hub_revision", None),
        dry_run=dry_run,
    )


def check_hub_settings(settings: HubSettings, output_dir: str) -> HubSettings:
    """Validate before any work, and return the settings with `repo_id` resolved (default: the output folder's name,
    which the Hub puts under the token owner's namespace).

    Raises `UserInputError` for an invalid repository id or branch name, and for a real push while HF_HUB_OFFLINE is on.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = settings.repo_id
    if repo_id is None:
        repo_id = os.path.basename(os.path.abspath(output_dir))
        source = f"(default: the name of the output folder {output_dir!r}; pass --hub_model_id to choose one)"
    else:
        repo_id = str(repo_id).strip()
        source = ""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserInputError(
            f"--hub_model_id: {repo_id!r} is not a valid Hub repository id {source}; expected 'name' or "
            f"'namespace/name' made of letters, digits, '-', '_' and '.', at most 96 characters ({exc})"
        ) from None
    revision = settings.revision
    if revision is not None and (not str(revision).strip() or any(c.isspace() for c in str(revision))):
        raise UserInputError(f"--hub_revision: {revision!r} is not a branch name; expected a name such as 'v2' "
                             "(no spaces), or leave it out to push to main")
    if not settings.dry_run and constants.is_offline_mode():
        raise UserInputError(
            "--push_to_hub: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so nothing can be "
            "uploaded; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to push, or use --push_dry_run to write the "
            "folder that would be uploaded"
        )
    return dataclasses.replace(settings, repo_id=repo_id)


# ----------------------------------------------------------------------------------------------------------- plan


def upload_plan(model_dir: str) -> list[str]:
    """Sorted relative paths (with '/') of the files a push uploads: every regular file under `model_dir`,
    recursively, except hidden files and folders (names starting with '.'), `*.tmp` files, earlier dry-run
    folders (any sub-folder holding a push_plan.json) and a top-level push_plan.json (so that pushing a reviewed
    dry-run folder uploads exactly what its plan lists).

    Raises `UserInputError` when the folder is missing, has no config.json, or holds a pickle (`is_pickle`: a
    Trainer's training_args.bin, a torch.save file), which is refused rather than left out silently.
    """
    if not os.path.isdir(model_dir):
        raise UserInputError(f"model folder {model_dir!r} does not exist (or is not a folder); expected the output "
                             "folder of a run, holding config.json and the weights")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserInputError(f"model folder {model_dir!r} has no config.json; expected a folder written by "
                             "save_pretrained (config.json, weights, tokenizer files)")
    files = []
    for root, dirs, names in os.walk(model_dir):
        # prune hidden folders and earlier dry runs (they would otherwise be uploaded inside the model)
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not os.path.isfile(os.path.join(root, d, PLAN_NAME))]
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".") or name.endswith(".tmp") or os.path.islink(path) or not os.path.isfile(path):
                continue
            if name == PLAN_NAME and root == model_dir:
                continue
            files.append(os.path.relpath(path, model_dir).replace(os.sep, "/"))
    pickles = [rel for rel in files if is_pickle(os.path.join(model_dir, *rel.split("/")))]
    if pickles:
        raise UserInputError(
            f"model folder {model_dir!r} holds pickle files ({', '.join(pickles)}); nothing was uploaded. A pickle runs "
            "code when loaded and the Hub flags it, and a Trainer's training_args.bin holds every training argument "
            "(a --hub_token included): remove them, or save the model with save_pretrained (safetensors) and push "
            "that folder")
    return sorted(files)


_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")


def is_pickle(path: str) -> bool:
    """A Python pickle, or a `torch.save` file (a zip archive holding one): by content, whatever the name, and by the
    usual pickle suffixes. CTranslate2's `model.bin`, ONNX files and safetensors are not pickles."""
    if path.lower().endswith(_PICKLE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return True
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _default_message(model_dir: str) -> str:
    return f"Upload {os.path.basename(os.path.abspath(model_dir))} with hfcompress"


def upload_content(model_dir: str, rel: str):
    """What a push uploads for the file `rel` of `model_dir`: its path, or for a JSON file that names local paths
    (the run record, an export's metadata) its bytes with those paths shortened to their last two names
    (``.../prune/model``): a published model does not show the machine's folders or user name. The local file is
    left as it is."""
    path = os.path.join(model_dir, *rel.split("/"))
    if not rel.endswith(".json") or os.path.getsize(path) > 64 * 2**20:
        return path
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    public = public_json_text(text)
    return path if public == text else public.encode("utf-8", errors="surrogateescape")


def write_dry_run(model_dir: str, out_dir: str, settings: HubSettings, commit_message: str | None = None) -> str:
    """Copy exactly the files `upload_plan(model_dir)` lists into `out_dir`, and write `out_dir/push_plan.json`
    (repo_id, revision, private, commit_message, and the files with their sizes and sha256). push_plan.json sits
    beside the files but is not part of the upload, nor listed in its own `files`.

    The folder is built next to `out_dir` and renamed into place, so an interrupted run never leaves half a dry run;
    an older dry run at `out_dir` is replaced. Returns `out_dir`. Nothing is sent to the Hub.
    """
    files = upload_plan(model_dir)
    model_abs, out_abs = os.path.realpath(model_dir), os.path.realpath(out_dir)
    if out_abs == model_abs or model_abs.startswith(out_abs + os.sep):
        raise UserInputError(f"--push_dry_run: the dry-run folder {out_dir!r} would replace the model folder "
                             f"{model_dir!r}; expected a separate folder (default: hub_upload/ beside the output)")
    if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, PLAN_NAME)) and (
            not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UserInputError(f"--push_dry_run: {out_dir!r} exists and is not an earlier dry run (no {PLAN_NAME}); "
                             "expected a new folder or an old dry-run folder to replace")
    parent = os.path.dirname(out_abs)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_abs)}-", dir=parent)  # hidden: never in an upload plan
    try:
        entries = []
        for rel in files:
            src, dst = os.path.join(model_dir, *rel.split("/")), os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            content = upload_content(model_dir, rel)
            if isinstance(content, bytes):
                with open(dst, "wb") as fh:
                    fh.write(content)
            else:
                shutil.copyfile(src, dst)
            entries.append({"path": rel, "size": os.path.getsize(dst), "sha256": _sha256(dst)})
        plan = {
            "repo_id": settings.repo_id,
            "revision": settings.revision or DEFAULT_REVISION,
            "private": settings.private,
            "commit_message": commit_message or _default_message(model_dir),
            "source": os.path.abspath(model_dir),
            "files": entries,
            "note": f"{PLAN_NAME} is not uploaded; every other file of this folder is, in one commit.",
        }
        with open(os.path.join(tmp, PLAN_NAME), "w") as fh:
            json.dump(plan, fh, indent=2)
        old = None
        if os.path.exists(out_abs):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_abs)}-old-", dir=parent)
            os.rename(out_abs, os.path.join(old, "x"))
        os.rename(tmp, out_abs)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Dry run: %d files that would be pushed to %s (branch %s) written to %s, plan in %s",
                len(files), settings.repo_id, settings.revision or DEFAULT_REVISION, out_dir, PLAN_NAME)
    return out_dir


# ----------------------------------------------------------------------------------------------------------- push

_TRANSIENT_STATUS = (408, 429)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: HTTP 408, 429, 5xx; connection errors and timeouts. Not: other 4xx, offline mode, bugs."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):  # a ConnectionError subclass, but retrying cannot help
        return False
    if isinstance(exc, HfHubHTTPError):  # also an OSError: test it before the generic network errors below
        status = _status(exc)
        return status is None or status in _TRANSIENT_STATUS or status >= 500
    # huggingface_hub 2.x talks through httpx2 (1.x: httpx, older: requests); look only at what is loaded
    transient: list[type] = [TimeoutError, ConnectionError]
    for name, attrs in (("httpx2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
                        ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
                        ("requests", ("ConnectionError", "Timeout"))):
        module = sys.modules.get(name)
        if module is not None:
            transient += [getattr(module, a) for a in attrs if hasattr(module, a)]
        if name == "requests" and module is not None:
            http_error = getattr(module, "HTTPError", None)
            if http_error is not None and isinstance(exc, http_error):
                status = _status(exc)
                return status is not None and (status in _TRANSIENT_STATUS or status >= 500)
    if isinstance(exc, tuple(transient)):
        return True
    # the client reads some answers as JSON before checking the status: a proxy's HTML error page lands here
    return isinstance(exc, json.JSONDecodeError)


def _describe(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:3]) if lines else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _with_retries(what: str, fn, *, retries: int, backoff: float, model_dir: str, repo_id: str):
    attempts = max(0, int(retries)) + 1
    intact = (f"The local output at {os.path.abspath(model_dir)} is intact; push it again with "
              f"'hfcompress push {model_dir} --hub_model_id {repo_id}'.")
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc):
                hint = ""
                if _status(exc) in (401, 403):
                    hint = " Check the token (--hub_token, HF_TOKEN or 'hf auth login') and its write access."
                raise HubPushError(f"Pushing to the Hub failed: could not {what} ({_describe(exc)}).{hint} "
                                   f"{intact}") from exc
            if attempt + 1 == attempts:
                raise HubPushError(f"Pushing to the Hub failed: could not {what} after {attempts} attempts (last "
                                   f"error {_describe(exc)}). {intact}") from exc
            delay = backoff * 2 ** attempt
            logger.warning("Could not %s (attempt %d of %d: %s); retrying in %.2fs", what, attempt + 1, attempts,
                           _describe(exc), delay)
            time.sleep(delay)


def push_folder(model_dir: str, settings: HubSettings, commit_message: str | None = None, retries: int = 4,
                backoff: float = 1.0, endpoint: str | None = None) -> str:
    """Upload every file of `upload_plan(model_dir)` to `settings.repo_id` in one commit; returns the commit URL.

    Creates the repository if needed (`private` applies only then) and the branch `settings.revision` if set and
    missing. Each step is tried `1 + retries` times on transient errors, waiting `backoff * 2**attempt` seconds
    (attempt = 0, 1, ...); other errors fail at once. Raises `HubPushError` when a step fails for good; since all files
    go in one commit, a failure leaves no partial revision. `model_dir` is only read.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not settings.repo_id:
        raise UserInputError("--hub_model_id: no repository to push to; expected 'name' or 'namespace/name'")
    files = upload_plan(model_dir)
    message = commit_message or _default_message(model_dir)
    api = HfApi(endpoint=endpoint, token=settings.token)
    kw = {"retries": retries, "backoff": backoff, "model_dir": model_dir, "repo_id": settings.repo_id}

    repo_url = _with_retries(
        f"create the repository {settings.repo_id}",
        lambda: api.create_repo(settings.repo_id, private=settings.private, exist_ok=True), **kw)
    repo_id = getattr(repo_url, "repo_id", None) or settings.repo_id  # a bare name gets the owner's namespace
    revision = settings.revision or DEFAULT_REVISION
    if settings.revision and settings.revision != DEFAULT_REVISION:
        _with_retries(f"create the branch {revision} of {repo_id}",
                      lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), **kw)

    def commit():
        # fresh operations on each attempt: the client marks them as it goes (upload mode, committed)
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=upload_content(model_dir, rel))
                      for rel in files]
        return api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision)

    info = _with_retries(f"commit {len(files)} files to {repo_id} (branch {revision})", commit, **kw)
    url = getattr(info, "commit_url", None) or getattr(info, "oid", None) or str(info)
    logger.info("Pushed %d files from %s to %s (branch %s): %s", len(files), model_dir, repo_id, revision, url)
    return str(url)


def push(model_dir: str, settings: HubSettings, output_dir: str, commit_message: str | None = None,
         endpoint: str | None = None) -> dict:
    """The one call a script makes once the card is written: a dry run into `<output_dir>/hub_upload` when
    `settings.dry_run`, else `push_folder`. Returns {"dry_run": folder, "files": [...]} or
    {"repo_id", "revision", "commit", "files"}."""
    settings = check_hub_settings(settings, output_dir)
    if settings.dry_run:
        out = write_dry_run(model_dir, os.path.join(output_dir, DRY_RUN_FOLDER), settings, commit_message)
        return {"dry_run": out, "files": upload_plan(model_dir)}
    commit = push_folder(model_dir, settings, commit_message=commit_message, endpoint=endpoint)
    return {"repo_id": settings.repo_id, "revision": settings.revision or DEFAULT_REVISION, "commit": commit,
            "files": upload_plan(model_dir)}


# ----------------------------------------------------------------------------------------- `hfcompress push`

_DRY_RUN_DEFAULT = ""  # `--push_dry_run` given without a folder


def _to_bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `hfcompress push MODEL_DIR --hub_model_id NAME [...]`."""
    parser.add_argument("model_dir", help="Folder to upload (config.json, weights, tokenizer, README.md, plots); "
                        "hidden files and *.tmp files are left out. It is only read.")
    parser.add_argument("--hub_model_id", required=True,
                        help="Repository to push to, 'namespace/name' or 'name' (under your own namespace).")
    parser.add_argument("--hub_private_repo", type=_to_bool, nargs="?", const=True, default=None,
                        help="Create the repository as private (true/false). Default: the Hub default. Ignored "
                        "when the repository already exists.")
    parser.add_argument("--hub_token", default=None,
                        help="Token with write access. Default: HF_TOKEN or the token saved by 'hf auth login'.")
    parser.add_argument("--hub_revision", default=None,
                        help="Branch to push to, created (from main) if missing. Default: main.")
    parser.add_argument("--commit_message", default=None,
                        help="Commit message. Default: 'Upload <folder name> with hfcompress'.")
    parser.add_argument("--push_dry_run", nargs="?", const=_DRY_RUN_DEFAULT, default=None, metavar="FOLDER",
                        help="Upload nothing: write the exact files that would be uploaded, plus push_plan.json, "
                        "to FOLDER (default: hub_upload/ beside MODEL_DIR).")


def run_push(args: argparse.Namespace, before_upload=None) -> int:
    """Run `hfcompress push`: check the settings, then push (or write the dry run), saying where to on stdout.
    `before_upload(model_dir, repo_id)` runs once the settings are checked (the card names the Hub id). Returns 0."""
    dry = args.push_dry_run
    settings = HubSettings(repo_id=args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                           revision=args.hub_revision, dry_run=dry is not None)
    settings = check_hub_settings(settings, args.model_dir)
    upload_plan(args.model_dir)  # a missing folder or config.json fails before any request
    if before_upload is not None:
        before_upload(args.model_dir, settings.repo_id)
    files = upload_plan(args.model_dir)
    if dry is not None:
        out = dry or os.path.join(os.path.dirname(os.path.abspath(args.model_dir)), DRY_RUN_FOLDER)
        write_dry_run(args.model_dir, out, settings, args.commit_message)
        print(f"Dry run: nothing uploaded. The {len(files)} files that would be pushed to {settings.repo_id} "
              f"(branch {settings.revision or DEFAULT_REVISION}) are in {out}, the plan in "
              f"{os.path.join(out, PLAN_NAME)}")
    else:
        commit = push_folder(args.model_dir, settings, commit_message=args.commit_message)
        print(f"Pushed {len(files)} files to {settings.repo_id} (branch {settings.revision or DEFAULT_REVISION}): "
              f"{commit}")
    return 0
