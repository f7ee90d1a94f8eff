"""The `hfcompress` command (console entry point; also `python -m hfcompress`).

Each sub-command is one function registered with `@subcommand`: it receives its own `argparse` parser, adds its
arguments, and returns the function that runs it (`args -> exit status`). Import heavy modules (torch,
transformers) inside these functions, so that `hfcompress --help` and `hfcompress assets list` stay fast.

    @subcommand("card", help="write a model card")
    def _card(parser):
        parser.add_argument("model_dir")

        def run(args):
            from .report.card import write_card  # imported only when this sub-command runs
            ...
            return 0

        return run

Errors a user caused (`UserInputError`) end the command with their one-line message and exit status 2
(`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

Runner = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], Runner]

# name -> (help, configure), in registration order
_SUBCOMMANDS: dict[str, tuple[str, Configure]] = {}


def subcommand(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register `configure(parser) -> run` as `hfcompress <name>`."""

    def register(configure: Configure) -> Configure:
        if name in _SUBCOMMANDS:
            raise ValueError(f"hfcompress sub-command {name!r} is registered twice")
        _SUBCOMMANDS[name] = (help, configure)
        return configure

    return register


@subcommand("assets", help="install or list the offline models and data sets")
def _assets(parser: argparse.ArgumentParser) -> Runner:
    from . import assets

    parser.description = assets.__doc__.split("\n\n")[0]
    assets.add_arguments(parser)
    return assets.run


def build_parser(prog: str = "hfcompress") -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=prog, description="Compression for the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hfcompress {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(_SUBCOMMANDS) + "}", required=True)
    for name, (help_text, configure) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_run=configure(p))
    return parser


def main(argv: list[str] | None = None, prog: str = "hfcompress") -> int:
    from .errors import UserInputError

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserInputError as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
