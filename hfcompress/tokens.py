"""Secrets (Hub tokens) stay in memory: they are taken out of the parsed arguments as soon as they are parsed, so no
file a run writes (the Trainer's `training_args.bin` in checkpoints, the run record, the card, the push plan, a
recipe's state, a log line) can hold one. The push reads the token back from here.

    groups = parser.parse_args_into_dataclasses()
    take_tokens(*groups)          # every `*_token` field is now None; the values are held here
    ...
    held_token("hub_token")       # what the user passed, for the push only

Imports nothing of the package (ground floor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys

REDACTED = "<redacted>"
SECRET_NAMES = frozenset({"token", "hub_token", "push_to_hub_token", "hf_token", "use_auth_token"})

_HELD: dict[str, str] = {}


def is_secret_name(name: str) -> bool:
    """An argument that holds a secret: `hub_token` (TrainingArguments, HubArguments, `hfcompress push`),
    `push_to_hub_token` (older transformers), `token`, `hf_token`. Not tokenizer settings such as `pad_token`."""
    name = str(name).lstrip("-").replace("-", "_").lower()
    return name in SECRET_NAMES or name.endswith("hub_token")


def _secret_fields(group) -> list[str]:
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        names = [f.name for f in dataclasses.fields(group)]
    else:
        names = list(vars(group)) if hasattr(group, "__dict__") else []
    return [n for n in names if is_secret_name(n)]


def take_tokens(*groups) -> None:
    """Move the value of every secret field of `groups` (dataclasses or namespaces) into memory and set the field to
    None. A later call with another value replaces the held one."""
    for group in groups:
        if group is None:
            continue
        for name in _secret_fields(group):
            value = getattr(group, name, None)
            if value:
                _HELD[name] = str(value)
            try:
                setattr(group, name, None)
            except dataclasses.FrozenInstanceError:  # pragma: no cover - no frozen argument group has a token
                pass


def take_from_mapping(values: dict) -> dict:
    """`values` without its secret keys (their values held in memory): for settings read from a file (a recipe)."""
    kept = {}
    for key, value in values.items():
        if is_secret_name(key):
            if value:
                _HELD[str(key)] = str(value)
        else:
            kept[key] = value
    return kept


def held_token(name: str = "hub_token") -> str | None:
    """The token the user passed under `name` in this process, or None (then the Hub client uses HF_TOKEN or the
    token saved by 'hf auth login')."""
    return _HELD.get(name)


def forget_tokens() -> None:
    _HELD.clear()


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to record: the value of every secret flag (`--hub_token X`, `--hub_token=X`) replaced."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("--") and is_secret_name(arg.split("=", 1)[0]):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


_INVOKED_AS: list[list[str]] = []  # the command a `hfcompress <command>` call runs, innermost last


@contextlib.contextmanager
def invoked_as(argv: list[str]):
    """Within the block, `command_line` is `argv` (``["hfcompress", "distill", ...]``): what the user typed, also when
    the command runs through ``python -m hfcompress``, ``accelerate launch -m hfcompress`` or ``main([...])``."""
    _INVOKED_AS.append(list(argv))
    try:
        yield
    finally:
        _INVOKED_AS.pop()


def command_line() -> str:
    """This process's command line, as a run record shows it: secrets redacted, every other word quoted for a POSIX
    shell where it needs it (a pattern such as ``'layer\\.0\\.output\\.dense$'`` runs as typed when copied)."""
    argv = _INVOKED_AS[-1] if _INVOKED_AS else [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    return " ".join(a if REDACTED in a else shlex.quote(a) for a in redact_argv(argv))


def redact_text(text: str) -> str:
    """A recipe or config file's text with the value of every secret key (`hub_token: X`) and flag replaced."""
    import re

    names = "|".join(sorted(SECRET_NAMES | {r"\w*hub_token"}))
    text = re.sub(rf"(?m)^(\s*[\"']?(?:{names})[\"']?\s*:\s*)(?!\s*$).*$", rf"\g<1>{REDACTED}", text)
    return re.sub(rf"(--(?:{names}))([ =])(\S+)", rf"\g<1>\g<2>{REDACTED}", text)


def redact(obj):
    """A copy of a JSON-like structure with the value of every secret key replaced (for records and plans)."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_name(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    return obj
