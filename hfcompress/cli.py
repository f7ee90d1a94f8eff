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


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file {path!r} does not exist")
    with open(path) as fh:
        data = json.load(fh) if path.endswith(".json") else yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"--config file {path!r} must hold a mapping of argument names to values")
    return data


def parse_args(dataclass_types, argv: list[str] | None = None, description: str | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.add_argument("--config", default=None, help="YAML or JSON file of arguments; flags given too override it")
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
            raise ValueError(f"--config file {config_path!r} has unknown arguments: {unknown}")
        # Required fields are satisfied by the file, flags still override.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    parsed = [p for p in parsed if not isinstance(p, argparse.Namespace)]  # the extra `config` entry
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return tuple(parsed)


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
