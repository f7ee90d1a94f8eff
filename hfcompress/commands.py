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

The run commands (`hfcompress distill | prune | lowrank | quantize | compress ...`) parse their options with one
`HfArgumentParser` (flags and/or `--config FILE`), exactly as `scripts/<name>.py` do (both call
`run.scripts.command_main`); under several processes:
`accelerate launch -m hfcompress distill ...` (or `torchrun -m hfcompress distill ...`).

Errors a user caused (`UserInputError`) end the command with their one-line message and exit status 2
(`--debug` shows the traceback; `--show_traceback` for the run commands).
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


@subcommand("speech-sets", help="build the speech test sets (natural voices, the same with noise, real recordings)")
def _speech_sets(parser: argparse.ArgumentParser) -> Runner:
    parser.description = ("Synthesize and collect the speech test sets of hfcompress.speech.synth."
                          "build_speech_test_sets into folders that datasets.load_from_disk reads (built once, reused). "
                          "Needs the Debian packages festival, festvox-us-slt-hts and flite (natural sets), "
                          "pocketsphinx-testdata and alsa-utils (real set).")
    parser.add_argument("--output_dir", default=None, help="Where the set folders go (default: $HFCOMPRESS_HOME/speech).")
    parser.add_argument("--sets", default="natural,natural_noisy,real", help="Comma list: natural, natural_noisy, real.")
    parser.add_argument("--per_voice", type=int, default=64, help="Sentences per voice of the natural sets.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the noise.")
    parser.add_argument("--training_dir", default=None,
                        help="Also build training audio for the natural set's models into this folder (a --dataset "
                        "for distill/prune): train and validation sentences spoken by festival's diphone voices "
                        "ked and kal (Debian festvox-kdlpc16k, festvox-kallpc16k), test = the natural set.")
    parser.add_argument("--training_per_voice", type=int, default=480, help="Training clips per training voice.")

    def run(args):
        import logging
        import os

        from .assets import hfcompress_home
        from .speech.synth import build_natural_training_set, build_speech_test_sets

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        names = [n for n in args.sets.split(",") if n]
        root = args.output_dir or hfcompress_home() / "speech"
        built = build_speech_test_sets(root, names, per_voice=args.per_voice, seed=args.seed)
        for name, ds in built.items():
            folder = os.path.dirname(os.path.dirname(ds.cache_files[0]["filename"])) if ds.cache_files else "?"
            print(f"{name}\t{len(ds)} clips\t{len(set(ds['voice']))} voices\t{folder}")
        if args.training_dir:
            dsd = build_natural_training_set(args.training_dir, per_voice=args.training_per_voice,
                                             test_per_voice=args.per_voice, seed=args.seed, cache_dir=root)
            sizes = ", ".join(f"{k} {len(v)}" for k, v in dsd.items())
            print(f"training\t{sizes} clips\t{sorted(set(dsd['train']['voice']))}\t{args.training_dir}")
        return 0

    return run


def _measure_arguments(parser: argparse.ArgumentParser) -> None:
    """What `measure` and `card` share: the model, its base, the data, how latency is measured."""
    parser.add_argument("model_dir", help="The compressed model's folder (any format hfcompress loads: plain "
                        "transformers, structured, low-rank, sparse, ONNX, torch int8, bitsandbytes).")
    parser.add_argument("--base", required=True,
                        help="The model it was compressed from: a folder, or an offline asset name (minilm-l6, ...), "
                        "with a trained task head.")
    parser.add_argument("--dataset", default="rotten-tomatoes",
                        help="Evaluation data: an offline dataset name, a CSV/TSV/JSON/JSONL/Parquet file or folder "
                        "(the test split is used, validation if there is none).")
    parser.add_argument("--text_column", default="text", help="Column holding the input text.")
    parser.add_argument("--label_column", default="label", help="Column holding the class (names or ids).")
    parser.add_argument("--max_length", type=int, default=128, help="Tokens kept per text at evaluation.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Evaluate on at most this many rows.")
    parser.add_argument("--latency_rounds", type=int, default=3, help="Interleaved latency rounds (base, model, ...).")
    parser.add_argument("--latency_threads", type=int, default=2, help="CPU threads of the latency measurement.")
    parser.add_argument("--no_measure_memory", dest="measure_memory", action="store_false",
                        help="Skip the peak-memory probe (a fresh process per model, ~10 s each).")


def _measure(args, record_task: str):
    """Measure `args.model_dir` against `args.base` into a `RunRecord` (with its comparison), as a script would."""
    from .assets import resolve_model_path
    from .report.record import RunRecord
    from .run.arguments import DataArguments
    from .run.report import ReportArguments
    from .run.steps import load_data

    data_args = DataArguments(dataset=args.dataset, text_column=args.text_column, label_column=args.label_column,
                              max_length=args.max_length, max_eval_samples=args.max_eval_samples)
    report = ReportArguments(measure_memory=args.measure_memory, latency_rounds=args.latency_rounds,
                             latency_threads=args.latency_threads)
    dataset = load_data(data_args)
    record = RunRecord(task=record_task)
    record.data = {"dataset": data_args.dataset, "splits": {s: len(d) for s, d in dataset.items()}}
    record.add_settings(data=data_args, report=report)
    return record, resolve_model_path(args.base), dataset, data_args, report


@subcommand("measure", help="measure a compressed model against its base (size, parameters, latency, memory, metrics)")
def _measure_cmd(parser: argparse.ArgumentParser) -> Runner:
    parser.description = ("Measure MODEL_DIR against --base on the same evaluation rows, both loaded from disk: task "
                          "metrics, parameters (total, non-zero), size of the whole checkpoint, CPU latency "
                          "(interleaved rounds), peak memory, and every change. Prints the comparison as JSON.")
    _measure_arguments(parser)
    parser.add_argument("--output", default=None, help="Also write the comparison (JSON) to this file.")

    def run(args):
        import json

        from .report.bench import write_json
        from .run.report import compare_on_eval_split

        _, base, dataset, data_args, report = _measure(args, "measure")
        comparison = compare_on_eval_split(args.model_dir, base, args.base, dataset, data_args, report)
        if args.output:
            write_json(args.output, comparison)
        print(json.dumps(comparison, indent=2, default=str))
        return 0

    return run


@subcommand("card", help="measure a compressed model and write its model card (README.md) and plot beside it")
def _card_cmd(parser: argparse.ArgumentParser) -> Runner:
    parser.description = ("Write MODEL_DIR/README.md (a huggingface_hub model card) and MODEL_DIR/compression.png for a "
                          "model compressed with your own code: the numbers are measured now, against --base, as "
                          "`hfcompress measure` does; nothing is typed. For a model hfcompress's scripts made, the "
                          "card is already there.")
    _measure_arguments(parser)
    parser.add_argument("--model_name", default=None, help="Title of the card (default: the folder's name).")
    parser.add_argument("--base_model", default=None,
                        help="Hub id of the base for the card's metadata (default: known for offline assets).")
    parser.add_argument("--method", action="append", default=[], metavar="TEXT",
                        help="A line for 'How it was made' (repeatable), e.g. --method 'pruned 40 per cent of heads'.")

    def run(args):
        import os

        from .run.report import measure_and_card

        record, base, dataset, data_args, report = _measure(args, "card")
        record.command = "hfcompress card " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "hfcompress card"
        for i, text in enumerate(args.method):
            record.methods[f"user_{i}"] = {"description": text}
        name = args.model_name or os.path.basename(os.path.normpath(args.model_dir))
        measure_and_card(record, args.model_dir, base, args.base, dataset, data_args, report, run_name=name,
                         base_model=args.base_model)
        print(record.artifacts["card"])
        return 0

    return run


@subcommand("push", help="push a model folder (weights, config, tokenizer, card, plots) to the Hub in one commit")
def _push_cmd(parser: argparse.ArgumentParser) -> Runner:
    from .hub import add_push_arguments, run_push

    parser.description = ("Upload MODEL_DIR to a Hub repository in one commit (created if missing; retried with "
                          "backoff on transient errors; a failure leaves no partial revision and the folder "
                          "untouched), or with --push_dry_run write the exact upload locally.")
    add_push_arguments(parser)

    def run(args):
        from .report.card import card_for_repo

        def before_upload(model_dir: str, repo_id: str) -> None:
            if card_for_repo(model_dir, repo_id):
                print(f"Card re-rendered for {repo_id}: its loading code names the Hub repository")

        return run_push(args, before_upload=before_upload)

    return run


# The run commands: each a script of `hfcompress.run.scripts` (or the recipe runner), dispatched before argparse
# (their options are an HfArgumentParser's, with --help of their own).
RUN_COMMANDS = {
    "distill": "distil a teacher into a smaller student (text, audio classification, CTC, Whisper)",
    "prune": "prune while distilling: weights (magnitude, movement) or heads, neurons and blocks removed",
    "lowrank": "factorize projections by SVD and train the factors back with distillation",
    "share": "share weights (k values per matrix, packed indices) and train the values with distillation",
    "qat": "quantization-aware training with distillation: ternary, binary or int8 weights, packed checkpoints",
    "quantize": "quantize a trained model (ONNX Runtime int8, PyTorch int8, bitsandbytes) and measure it",
    "compress": "run a recipe: several methods composed in one command (a YAML file or a shipped recipe's name)",
}


def run_command(name: str, argv: list[str]) -> int:
    """`hfcompress <name> ARGS`: the run command `name` on `argv` (a user error: one line, exit status 2)."""
    from .cli import run_script

    if name == "compress":
        from .run.recipe import compress_main as main
    else:
        from .run.scripts import command_main

        main = command_main(name)
    from .tokens import invoked_as

    with invoked_as(["hfcompress", name, *argv]):
        run_script(main, argv)
    return 0


def build_parser(prog: str = "hfcompress") -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=prog, description="Compression for the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hfcompress {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join([*RUN_COMMANDS, *_SUBCOMMANDS]) + "}",
                                required=True)
    for name, help_text in RUN_COMMANDS.items():  # listed for --help; `main` dispatches them before argparse
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (help_text, configure) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_run=configure(p))
    return parser


def main(argv: list[str] | None = None, prog: str = "hfcompress") -> int:
    from .errors import UserInputError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RUN_COMMANDS:
        return run_command(argv[0], argv[1:])
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
