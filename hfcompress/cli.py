"""Argument parsing shared by the scripts: dataclasses through one `HfArgumentParser`, from flags and/or a
YAML/JSON file given as `--config FILE` (flags win over the file)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import yaml
from transformers import HfArgumentParser

from .errors import UserInputError
from .tokens import take_tokens


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserInputError(f"--config file {path!r} does not exist")
    with open(path) as fh:
        data = json.load(fh) if path.endswith(".json") else yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise UserInputError(f"--config file {path!r} must hold a mapping of argument names to values")
    return data


def parse_args(dataclass_types, argv: list[str] | None = None, description: str | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.usage = SHORT_USAGE
    parser.add_argument("--config", default=None, help="YAML or JSON file of arguments; flags given too override it")
    parser.add_argument("--show_traceback", action="store_true", help="On a usage error, show the whole traceback")
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1] if i + 1 < len(argv) else None
    elif len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        config_path, argv = argv[0], []
    if config_path:
        values = load_config_file(config_path)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(f"--config file {config_path!r} has unknown arguments: {unknown}")
        # Required fields are satisfied by the file, flags still override.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    group_help(parser, dataclass_types)
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UserInputError:
        raise
    except ValueError as err:  # a dataclass's own validation (`__post_init__`) rejected a value the user gave
        raise UserInputError(str(err)) from err
    parsed = [p for p in parsed if not isinstance(p, argparse.Namespace)]  # the extra `config` entry
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Hub tokens leave the arguments now: the Trainer pickles its arguments into every checkpoint, and runs record
    # theirs; the push reads the token from memory (`tokens.held_token`).
    take_tokens(*parsed)
    return tuple(parsed)


SHORT_USAGE = ("%(prog)s [--config FILE.yaml] [--teacher_model MODEL | --model MODEL] [--dataset DATA] "
               "[--output_dir DIR] [OPTION ...]\n(the options, by group, below: this command's own first, the inherited "
               "transformers.TrainingArguments last)")


def group_help(parser, dataclass_types) -> None:
    """Order `--help` as a user reads it: a short synopsis, the description, the script's own groups first (models,
    data, the method's options), then the other groups (LoRA, measurement, speech), the ~100 inherited
    `TrainingArguments` last, under their own heading."""
    import dataclasses

    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    for dtype in dataclass_types:
        if not (isinstance(dtype, type) and issubclass(dtype, TrainingArguments)):
            continue
        own = {f.name for f in dataclasses.fields(dtype) if f.name not in inherited}
        title = getattr(dtype, "_method_group_name", "Method options")
        method = parser.add_argument_group(title)
        training = parser.add_argument_group(
            "Training (transformers.TrainingArguments; defaults are this script's)"
        )
        for action in list(parser._optionals._group_actions):
            dests = {action.dest, action.dest.removeprefix("no_")}
            if dests & own:
                target = method
            elif dests & inherited:
                target = training
            else:
                continue
            parser._optionals._group_actions.remove(action)
            target._group_actions.append(action)
    # models, data, then the method's own group, then the rest in the script's order; generic options and the
    # inherited training arguments last
    groups = parser._action_groups
    method_titles = {getattr(d, "_method_group_name", "Method options") for d in dataclass_types
                     if isinstance(d, type) and issubclass(d, TrainingArguments)}
    first = [g for g in groups if g.title in ("Models", "Data")]
    method = [g for g in groups if g.title in method_titles]
    last = [g for g in groups if (g.title or "").startswith("Training (") or g.title in ("options",
                                                                                          "positional arguments")]
    middle = [g for g in groups if g not in first + method + last]
    parser._action_groups[:] = first + method + middle + last


def run_script(main, argv=None):
    """Run a script's `main`; a user's mistake (`UserInputError`, a missing file) ends it with one line on stderr
    and exit status 2. `--show_traceback` (or HFCOMPRESS_DEBUG=1) shows the whole traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--show_traceback" in argv or os.environ.get("HFCOMPRESS_DEBUG") == "1"
    argv = [a for a in argv if a != "--show_traceback"]
    try:
        return main(argv)
    except (UserInputError, FileNotFoundError) as err:
        if debug:
            raise
        name = os.path.basename(sys.argv[0]) or "hfcompress"
        print(f"{name}: error: {err}", file=sys.stderr)
        print(f"{name}: (run with --show_traceback for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(args=None) -> None:
    """hfcompress logs at INFO; transformers/datasets follow `--log_level` (default: warnings only)."""
    level = logging.WARNING
    if args is not None and hasattr(args, "get_process_log_level"):
        level = args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    logging.getLogger("hfcompress").setLevel(logging.INFO)
