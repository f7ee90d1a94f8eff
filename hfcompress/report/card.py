"""Model cards rendered from a run record (`RunRecord`), never typed: the metadata (``base_model``,
``base_model_relation``, tags, ``model-index`` results) and the before/after table come from the record's
``comparison``, which `hfcompress.report.measure.compare_checkpoints` measured in the run (the base and the result,
both loaded from disk). The template is ``hfcompress/templates/model_card.md`` (a huggingface_hub Jinja template); the card is a
`huggingface_hub.ModelCard`, written as ``README.md`` beside the model, with its plots (PNG) beside it.

Every script writes one (distill, prune, lowrank, quantize, compress); ``hfcompress card`` writes one for a model
compressed with other code.

Speech-recognition cards (`build_speech_card`, `write_speech_card`) come from a measured speech benchmark result
instead (the dict ``scripts/benchmark_speech.py`` writes to ``benchmarks/results/speech.json``: ``base``, ``variants``,
``test_sets``, ``latency``, ``floor``): one card per chosen variant (`choose_speech_variant`), every number read from
that dict."""

from __future__ import annotations

import json
import logging
import os
import re

from ..errors import UserInputError
from ..files import atomic_path, public_text
from ..registry import get_format, get_method, number_text, settings_text
from .lineage import dataset_id, entries_of, hub_id, original_base_id, record_max_length, record_seed
from .plot import SCHEDULE_PNG, TRADEOFF_PNG
from .record import main_metric

logger = logging.getLogger(__name__)

# shipped inside the package (package data), so an installed wheel writes cards
TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates", "model_card.md")
CARD = "README.md"

# a plain transformers checkpoint; every other format's loading code is its registration's (`hfcompress.registry`)
PLAIN_LOADING = ("from transformers import AutoModelForSequenceClassification\n"
                 "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
                 "A plain transformers checkpoint.")


def loading_code(fmt: str) -> tuple[str, str]:
    """(Python that loads a checkpoint of format `fmt`, what it needs), from the format's registration."""
    spec = get_format(fmt)
    return (spec.loading_code, spec.loading_note) if spec is not None else PLAIN_LOADING


def _change(ch: dict | None, digits: int = 1, unit: str = "", points: bool = False) -> str:
    if not ch:
        return ""
    if points:
        return f"{100 * ch['delta']:+.2f} points"
    rel = f" ({100 * ch['relative']:+.0f}%)" if ch.get("relative") is not None else ""
    delta = ch["delta"]
    text = f"{int(delta):+,}" if isinstance(delta, int) else f"{delta:+.{digits}f}"
    return f"{text}{unit}{rel}"


def comparison_table(comparison: dict) -> str:
    """The before/after table (base, this model, change) of a `compare_checkpoints` result."""
    base, model, changes = comparison["base"], comparison["model"], comparison["changes"]
    split = comparison["split"]
    rows = []
    for key, value in base["metrics"].items():
        if not (isinstance(value, (int, float)) and key in model["metrics"]):
            continue
        if key.endswith("_number") or key in COUNT_ROWS:  # counts in the references (the same on both sides)
            what = COUNT_ROWS.get(key) or f"{key.removesuffix('_number')} entities"
            rows.append((f"{split} {what}", f"{int(value)}", f"{int(model['metrics'][key])}", ""))
        else:
            rows.append((f"{split} {key}", f"{value:.4f}", f"{model['metrics'][key]:.4f}",
                         _change(changes.get(f"metric_{key}"), points=True)))
    rows.append(("checkpoint size (every file but card and plots)", number_text(base["size_mb"], 1, " MB"),
                 number_text(model["size_mb"], 1, " MB"), f"{comparison['size_ratio']:.2f}x smaller"))
    rows.append(("CPU latency (batch)", number_text(base["latency_ms"], 0, " ms"), number_text(model["latency_ms"], 0, " ms"),
                 f"{comparison['speedup']:.2f}x faster"))
    rows.append(("parameters", number_text(base["parameters"]), number_text(model["parameters"]), _change(changes.get("parameters"))))
    if base.get("nonzero_parameters") is not None and model.get("nonzero_parameters") is not None:
        rows.append(("non-zero parameters", number_text(base["nonzero_parameters"]), number_text(model["nonzero_parameters"]),
                     _change(changes.get("nonzero_parameters"))))
    if "peak_memory_mb" in base and "peak_memory_mb" in model:
        rows.append(("peak memory (load + one batch)", number_text(base["peak_memory_mb"], 0, " MB"),
                     number_text(model["peak_memory_mb"], 0, " MB"), _change(changes.get("peak_memory_mb"), 0, " MB")))
    lines = ["| | base | this model | change |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def describe_methods(methods: dict) -> tuple[list[str], list[str]]:
    """The card's lines (one per method) and tags of a run's ``methods``."""
    lines, tags = [], []
    for name, m in methods.items():
        if isinstance(m, dict):
            line, t = describe_method(name, m)
            lines.append(line)
            tags += [x for x in t if x not in tags]
    return lines, tags


def describe_method(name: str, m: dict) -> tuple[str, list[str]]:
    """One line of the card's "How it was made" for a method as the run record holds it, and its tags: the
    method's registered `describe` (`hfcompress.registry`)."""
    method = get_method(name)
    if method is not None and method.describe is not None:
        return method.describe(m)
    if m.get("description"):  # a line a user gave (`hfcompress card --method TEXT`)
        return str(m["description"]), []
    return f"{name}", [name]


def stage_line(entry: dict, number: int) -> str:
    """One numbered line of a card's lineage: a stage of the chain, its methods and settings, what it measured."""
    described, _ = describe_methods(entry.get("methods") or {})
    got = entry.get("measured") or {}
    effect = ""
    metric = got.get("metric") or "accuracy"  # a tagger's or a reader's F1 where the stage recorded it
    if got.get(metric) is not None:
        effect = (f" -> {metric} {got[metric]:.4f}"
                  + (f" ({got['accuracy_delta_points']:+.2f} points)" if got.get("accuracy_delta_points") is not None
                     else "")
                  + (f", {got['size_mb']:.1f} MB" if got.get("size_mb") is not None else "")
                  + (f", {got['speedup']:.2f}x faster" if got.get("speedup") is not None else "")
                  + f" (measured against {entry.get('measured_against', 'its input')})")
    where = f" on `{entry['dataset']}`" if entry.get("dataset") else ""
    seed = f", seed {entry['seed']}" if entry.get("seed") is not None else ""
    length = f", max_length {entry['max_length']}" if entry.get("max_length") else ""
    return (f"{number}. `{entry.get('run')}` ({entry.get('stage')}{where}{seed}{length}): "
            + ("; ".join(described) or "no method recorded") + effect)


def chain_summary(lineage: list[dict], comparison: dict, dataset, origin) -> str:
    """One sentence on this model against the original base of its chain: accuracy and size exactly (the first
    stage measured the base on the same split), speed as the product of the stages' ratios (each measured in its own
    run, said so). Empty when the chain's first stage did not measure the same data and split."""
    first = (lineage[0].get("measured") or {}) if lineage else {}
    acc = comparison["model"]["metrics"].get("accuracy")
    if (not first or first.get("accuracy_delta_points") is None or first.get("size_ratio") is None or acc is None
            or lineage[0].get("dataset") != dataset or first.get("split") != comparison.get("split")):
        return ""
    base_acc = first["accuracy"] - first["accuracy_delta_points"] / 100
    base_size = first["size_mb"] * first["size_ratio"]
    speedups = [(e.get("measured") or {}).get("speedup") for e in lineage] + [comparison.get("speedup")]
    speed = ""
    if all(isinstance(x, (int, float)) for x in speedups):
        product = 1.0
        for x in speedups:
            product *= x
        speed = (f"; the stages' speedups, each measured in its own run against its input, multiply to "
                 f"{product:.2f}x")
    return (f" Against the original base `{origin}` ({comparison['split']} accuracy {base_acc:.4f}, "
            f"{base_size:.1f} MB, as its first stage measured it): accuracy {acc:.4f} "
            f"({100 * (acc - base_acc):+.2f} points), {base_size / comparison['model']['size_mb']:.2f}x smaller"
            f"{speed}.")


def headline_change(comparison: dict, metric: str) -> str:
    """The summary's change of the task's main metric (`metric`: accuracy, or a tagger's entity F1), in points."""
    change = (comparison.get("changes") or {}).get(f"metric_{metric}")
    if not change:
        return "task metrics below."
    name = {"f1": "entity F1" if "precision" in comparison["model"]["metrics"] else "F1"}.get(metric, metric)
    return f"{100 * change['delta']:+.2f} {name} points."


def model_classes(model_dir: str, record: dict) -> dict | None:
    """``{id: label}`` of the saved model (its config.json), else of the record's data."""
    try:
        with open(os.path.join(model_dir, "config.json")) as fh:
            id2label = json.load(fh).get("id2label")
    except (OSError, ValueError):
        id2label = None
    id2label = id2label or (record.get("data") or {}).get("label_names")
    if not id2label:
        return None
    return {int(k): v for k, v in id2label.items()} if isinstance(id2label, dict) else dict(enumerate(id2label))


# what a card's example feeds the pipeline, per pipeline tag: (variable, extra pipeline arguments, example input,
# whether the pipeline takes tokenizer arguments (truncation); the token-classification pipeline truncates to the
# saved tokenizer's model_max_length by itself)
PIPELINE_EXAMPLES = {
    "text-classification": ("classifier", "", '["A gripping, beautifully acted film.", "Dull and far too long."]',
                            True),
    "text-classification-pair": ("classifier", "", '{"text": "Is the sky blue on a clear day?", '
                                                    '"text_pair": "On a clear day the sky looks blue."}', True),
    "token-classification": ("tagger", ', aggregation_strategy="simple"', '"Ada Lovelace worked in London."',
                             False),
}
# the class-name suffix of a pipeline tag's models, where it is not the sequence classifier's
TASK_HEADS = {"token-classification": "ForTokenClassification", "question-answering": "ForQuestionAnswering"}
# what a card calls the model, per pipeline tag
MODEL_NOUNS = {"text-classification": "text classifier", "token-classification": "token classifier (tagger)",
               "question-answering": "extractive question-answering reader"}
# transformers 5 has no question-answering pipeline: a reader's card answers through hfcompress (the windows and
# post-processing of the run's own evaluation)
QA_EXAMPLE = ('["Where does Ada Lovelace work?"], ["Ada Lovelace lives in London and works at the university."]')
# the rows of a card's table that count questions or entities (the same on both sides), not scores
COUNT_ROWS = {"total": "questions", "has_answer_total": "answerable questions",
              "no_answer_total": "unanswerable questions"}


def usage_code(fmt: str, path: str, pipeline_tag: str, max_length: int | None, pushed: bool,
               pair: bool = False, doc_stride: int | None = None) -> tuple[str, str]:
    """The card's loading code: where the model is (`path`: the Hub id once pushed, else the local folder), the
    format's own loading lines (its registration), and a pipeline that truncates to the length the model was trained
    with (a QA reader: ``hfcompress.run.qa.answer_questions`` with the run's window length and `doc_stride`, there
    being no pipeline). ``PATH = ...`` is the one line to change to load a local copy. `pair`: a sentence-pair
    classifier."""
    code, note = loading_code(fmt)
    head = TASK_HEADS.get(pipeline_tag)
    if head:  # the formats' loading code names the sequence classifier's classes: the task's instead
        code = code.replace("ForSequenceClassification", head)
        note = note.replace("\"text-classification\"", json.dumps(pipeline_tag))
    where = ("# the Hub repository; a local folder holding these files works the same" if pushed else
             "# this folder; once pushed, its Hub id works the same")
    length = f", max_length={max_length}" if max_length else ""
    if pipeline_tag == "question-answering":
        note = re.sub(r"`model\(\*\*inputs\)\.logits` and `transformers\.pipeline\([^`]*\)` work",
                      "`model(**inputs).start_logits` / `.end_logits` and "
                      "`hfcompress.run.qa.answer_questions(model, tokenizer, questions, contexts)` work", note)
        note += (" transformers 5 has no question-answering pipeline: `answer_questions` (hfcompress) cuts long "
                 "contexts into the windows the model was evaluated on and picks the best span.")
        stride = f", doc_stride={doc_stride}" if doc_stride else ""
        lines = [f"PATH = {json.dumps(path)}  {where}", code, "",
                 "from transformers import AutoTokenizer",
                 "from hfcompress.run.qa import answer_questions  # transformers 5 has no question-answering pipeline",
                 "tokenizer = AutoTokenizer.from_pretrained(PATH)",
                 f"print(answer_questions(model, tokenizer, {QA_EXAMPLE}{length}{stride}))"]
        return "\n".join(lines), note
    key = f"{pipeline_tag}-pair" if pair and f"{pipeline_tag}-pair" in PIPELINE_EXAMPLES else pipeline_tag
    name, extra, example, truncates = PIPELINE_EXAMPLES.get(key, PIPELINE_EXAMPLES["text-classification"])
    lines = [f"PATH = {json.dumps(path)}  {where}", code, "",
             "from transformers import AutoTokenizer, pipeline",
             "tokenizer = AutoTokenizer.from_pretrained(PATH)",
             f"{name} = pipeline({json.dumps(pipeline_tag)}, model=model, tokenizer=tokenizer{extra}"
             + (f", truncation=True{length})" if truncates else ")"),
             f"print({name}({example}))"]
    return "\n".join(lines), note


def build_card(record: dict, model_dir: str, model_name: str | None = None, base_model: str | None = None,
               repo_id: str | None = None):
    """The `ModelCard` of a run, from its record (a `RunRecord` as a dict) holding a ``comparison``. `repo_id`: the
    Hub repository the card is pushed to (its loading code names it, and local folders are shown by their last two
    names, `files.short_path`; without one, the local folder, and every path as it is)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    comparison = record.get("comparison")
    if not comparison:
        raise UserInputError("the run record has no 'comparison' (the base and the result measured side by side): "
                             "measure first, e.g. `hfcompress measure MODEL_DIR --base BASE`")
    base, model, split = comparison["base"], comparison["model"], comparison["split"]
    dataset = record.get("data", {}).get("dataset")
    pipeline_tag = record.get("data", {}).get("pipeline_tag") or "text-classification"
    lineage = list(record.get("lineage") or [])
    base_id = (base_model or record.get("base_model_id") or original_base_id(lineage)
               or hub_id(base.get("source")))
    origin = lineage[0].get("base") if lineage else (base.get("source") or base["path"])
    methods = record.get("methods", {})
    described, method_tags = describe_methods(methods)
    tags = ["hfcompress", pipeline_tag, *method_tags]
    for entry in lineage:
        tags += [t for t in describe_methods(entry.get("methods") or {})[1] if t not in tags]
    lines = []
    if lineage or record.get("stages"):  # a chain of runs, or a recipe's stages: one numbered line per stage
        chain = entries_of(record)  # the earlier runs, then this run's stages (a recipe's) or this run itself
        lines = [f"From the original base `{origin}` to this model, stage by stage (each earlier stage's record was "
                 "read from the folder the next one started from):" if lineage else
                 "Recipe stages, in order (each measured against the base when it finished):"]
        lines += [stage_line(e, i + 1) for i, e in enumerate(chain)]
        if not record.get("stages"):
            lines[-1] += " (this run; table above)"
        recipe_text = record.get("settings", {}).get("recipe", {}).get("text")
        if recipe_text:
            lines.append("\nThe recipe:\n\n```yaml\n" + recipe_text.strip() + "\n```")
    else:
        lines = [f"- {line}" for line in described]
    chain_methods = [methods, *(e.get("methods") or {} for e in lineage)]
    trained = any(getattr(get_method(k), "fine_tunes", False) for m in chain_methods for k in m)
    quantized = any(isinstance(m.get("quantization"), dict) and m["quantization"].get("quantization", "none") != "none"
                    for m in chain_methods)
    relation = None
    if base_id:
        relation = "finetune" if trained or not quantized else "quantized"
    name = model_name or os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(model_dir))))
    results = [EvalResult(task_type=pipeline_tag, dataset_type=dataset_id(dataset) or os.path.basename(str(dataset)),
                          dataset_name=os.path.basename(str(dataset)),
                          dataset_split=split, metric_type=k, metric_name=k, metric_value=float(model["metrics"][k]))
               for k in ("accuracy", "exact_match", "f1", "precision", "recall") if k in model["metrics"]]
    fmt = model.get("format", "transformers")
    card_data = ModelCardData(
        library_name=get_format(fmt).library_name if get_format(fmt) else "transformers",
        pipeline_tag=pipeline_tag, tags=tags, metrics=[r.metric_type for r in results],
        base_model=base_id, base_model_relation=relation, model_name=name, eval_results=results,
        datasets=[dataset_id(dataset)] if dataset_id(dataset) else None,
    )
    plots = [f"![{alt}]({png})" for png, alt in ((TRADEOFF_PNG, "accuracy against size and latency"),
                                                 (SCHEDULE_PNG, "sparsity schedule"))
             if os.path.exists(os.path.join(model_dir, png))]
    max_length = record_max_length(record) or next((e.get("max_length") for e in reversed(lineage)
                                                    if e.get("max_length")), None)
    pair = bool((record.get("settings", {}).get("data") or {}).get("text_pair_column"))
    qa = pipeline_tag == "question-answering"
    code, note = usage_code(fmt, repo_id or os.path.abspath(model_dir), pipeline_tag, max_length, bool(repo_id), pair,
                            (record.get("data") or {}).get("doc_stride"))
    classes = None if qa else model_classes(model_dir, record)  # a reader's head has no classes: start and end
    expects = []
    if classes:
        expects.append("Classes (`config.id2label`): " + ", ".join(f"{i} = `{label}`" for i, label in
                                                                  sorted(classes.items())) + ".")
    if max_length:
        expects.append(f"Input: a question and its context, in windows of up to {max_length} tokens (the saved "
                       f"tokenizer's `model_max_length` is {max_length})." if qa else
                       f"Input: text, trained and measured at up to {max_length} tokens; longer inputs must be "
                       f"truncated (the saved tokenizer's `model_max_length` is {max_length}: "
                       f"`truncation=True` cuts there).")
    if qa:
        expects.append("Output: the answer as a span of the context (start and end logits per token); contexts "
                       "longer than a window are cut into overlapping windows (`answer_questions` does it).")
    env = record.get("environment", {})
    proto = comparison.get("protocol", {})
    rows = comparison.get("rows")
    seed = record_seed(record)
    seed_text = f"seed {seed}" if seed is not None else "no seed: this run neither trained nor sampled"
    card = ModelCard.from_template(
        card_data, template_path=TEMPLATE, model_name=name,
        summary=f"A compressed {MODEL_NOUNS.get(pipeline_tag, pipeline_tag)} made with hfcompress from "
                f"`{origin}`{f' ([{base_id}](https://huggingface.co/{base_id}))' if base_id else ''}"
                f" on `{dataset}`"
                + (f" in {len(lineage) + max(1, len(record.get('stages') or []))} stages" if lineage else "")
                + f": {comparison['size_ratio']:.2f}x smaller on disk and {comparison['speedup']:.2f}x "
                f"faster on a CPU than {'its input `' + str(base.get('source') or base['path']) + '`' if lineage else 'the base'}, "
                + headline_change(comparison, main_metric(record.get("data")))
                + chain_summary(lineage, comparison, dataset, origin),
        comparison_table=comparison_table(comparison),
        plots="\n\n".join(plots),
        hardware=f"{env.get('cpu_count')} CPU cores ({proto.get('device', 'cpu')}), torch {env.get('torch')}",
        measurement_protocol=f"latency of batch {proto.get('batch_size')} x {proto.get('seq_len')} tokens"
                             + (" (the run's input length)" if proto.get("seq_len") == max_length else "")
                             + f" on {proto.get('threads')} threads, median of {proto.get('runs')} after "
                             f"{proto.get('warmup')} warm-ups, base and this model interleaved in "
                             f"{proto.get('rounds')} rounds (ratio: median of the rounds' ratios); metrics on the "
                             f"{split} split ({rows} rows) of both saved models, reloaded from disk.",
        loading_code=code, loading_note=note, expects="\n\n".join(expects) or "See config.json.",
        methods="\n".join(lines) or "- (no method recorded)", command=record.get("command", ""),
        seed=seed_text, versions=", ".join(f"{k} {env[k]}" for k in ("hfcompress", "transformers", "torch", "datasets")
                                           if env.get(k)),
        limitations=f"Measured on one split of one dataset with one seed; with {rows} rows, one prediction moves "
                    f"accuracy by {100 / max(1, rows or 1):.2f} points, so differences of a few tenths are within "
                    "noise. Latency is CPU latency on the machine above; other CPUs give other ratios.",
    )
    if repo_id:  # published: the machine's folders by their last names only
        card.content = public_text(card.content, record)
    return card


def save_card(card, folder: str, what: str = "model card") -> str:
    """Write `card` to ``<folder>/README.md`` atomically (a temporary file renamed into place); returns the path."""
    path = os.path.join(folder, CARD)
    with atomic_path(path) as tmp:
        card.save(tmp)
    logger.info("Wrote the %s %s", what, path)
    return path


def write_card(record: dict, model_dir: str, **kwargs) -> str:
    """Render the card of `record` and write it to ``<model_dir>/README.md`` atomically; returns the path."""
    return save_card(build_card(record, model_dir, **kwargs), model_dir)


def card_for_repo(model_dir: str, repo_id: str) -> str | None:
    """Before a push to `repo_id`: re-render the card of `model_dir` from its ``hfcompress_record.json`` so that its
    loading code names the Hub repository (and the record remembers it); None (card untouched) for a folder hfcompress
    did not measure."""
    from .lineage import read_model_record, write_model_record

    record = read_model_record(model_dir)
    if not record or not record.get("comparison"):
        return None
    path = save_card(build_card(record, model_dir, model_name=repo_id.split("/")[-1], repo_id=repo_id), model_dir)
    record.setdefault("artifacts", {})["hub_model_id"] = repo_id
    write_model_record(record, model_dir)
    return path


# ---------------------------------------------------------------------------------------------------------- speech

# the speech issue's floor: >= 1.5x faster on a CPU with WER within +2 points of the base on both test sets
SPEECH_FLOOR_SPEEDUP = 1.5
SPEECH_FLOOR_WER_POINTS = 2.0
WER_NOTE = "WER is a fraction of the reference words (0.056 = 5.6%), not a percentage"


def speech_wer_deltas(result: dict, name: str) -> tuple[float, float]:
    """WER change of variant `name` against the base, in points (100 x fraction), on the synthesized and the real
    test sets, computed from the two WERs of `result`."""
    base, v = result["base"], result["variants"][name]
    return 100 * (v["wer_synth"] - base["wer_synth"]), 100 * (v["wer_real"] - base["wer_real"])


def speech_meets_floor(result: dict, name: str) -> bool:
    """Whether variant `name` meets the floor: ``speedup`` >= `SPEECH_FLOOR_SPEEDUP` and WER within
    +`SPEECH_FLOOR_WER_POINTS` points of the base on both test sets (as the benchmark's ``meets_floor`` records it)."""
    v = result["variants"][name]
    if "meets_floor" in v:
        return bool(v["meets_floor"])
    return v["speedup"] >= SPEECH_FLOOR_SPEEDUP and max(speech_wer_deltas(result, name)) <= SPEECH_FLOOR_WER_POINTS


def choose_speech_variant(result: dict) -> str | None:
    """The variant a speech card is written for: the fastest one meeting the floor; if none does, the fastest one that
    keeps WER within the floor's bound on both test sets and is faster than the base (a usable model, only not fast
    enough); else, among those at least `SPEECH_FLOOR_SPEEDUP` x faster (all variants if none is), the one whose worse
    WER increase (the larger of the two deltas) is smallest, the faster one on a tie. None when there are no
    variants."""
    variants = result.get("variants") or {}
    meeting = [n for n in variants if speech_meets_floor(result, n)]
    if meeting:
        return max(meeting, key=lambda n: variants[n]["speedup"])
    accurate = [n for n, v in variants.items()
                if max(speech_wer_deltas(result, n)) <= SPEECH_FLOOR_WER_POINTS and v["speedup"] > 1]
    if accurate:
        return max(accurate, key=lambda n: variants[n]["speedup"])
    fast = [n for n, v in variants.items() if v["speedup"] >= SPEECH_FLOOR_SPEEDUP] or list(variants)
    if not fast:
        return None
    return min(fast, key=lambda n: (max(speech_wer_deltas(result, n)), -variants[n]["speedup"]))


def speech_variant_relation(variant: dict) -> str:
    """``base_model_relation`` of a variant: ``quantized`` when its recipe only quantizes or casts the base's own
    weights (int8, bf16), ``finetune`` when it changed them otherwise (a distilled/trained student, pruning)."""
    recipe = variant.get("recipe") or {}
    only_precision = recipe.get("source", "base") == "base" and not recipe.get("prune") and bool(
        recipe.get("int8") or recipe.get("dtype"))
    return "quantized" if only_precision else "finetune"


def docstring_entry(doc: str | None, name: str, section: str = "Variants") -> str | None:
    """The text a script's docstring gives `name` in its `section` block (lines ``  <name or pattern>  text`` with
    indented continuation lines, patterns such as ``int8_*`` allowed), whitespace collapsed; None when absent."""
    import fnmatch
    import re

    if not doc:
        return None
    entries, current, inside = [], None, False
    for line in doc.splitlines():
        if line.startswith(section):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the section's own paragraph, or the next one (ends the block)
            if entries:
                break
            continue
        m = re.match(r"^  (\S+)\s{2,}(\S.*)$", line)
        if m:
            current = [m.group(1), [m.group(2)]]
            entries.append(current)
        elif current and line.startswith("   ") and line.strip():
            current[1].append(line.strip())
    for pattern, text in entries:
        if pattern == name or fnmatch.fnmatchcase(name, pattern):
            return " ".join(" ".join(text).split())
    return None


def describe_speech_variant(name: str, variant: dict, result: dict | None = None,
                            description: str | None = None) -> tuple[list[str], list[str]]:
    """The card's lines on what was done to the base to make variant `name` (from its ``recipe`` and ``build`` steps
    in the result, in the order the benchmark applies them) and its tags."""
    recipe, build = variant.get("recipe") or {}, variant.get("build") or {}
    settings = (result or {}).get("settings", {})
    lines, tags = [], []
    if description:
        lines.append(f"The benchmark's description of `{name}`: {description}")
    if recipe.get("source") == "distilled":
        base_params = number_text((result or {}).get("base", {}).get("params"))
        lines.append("Starting point: a student distilled from the base (`scripts/distill.py --teacher_model "
                     f"{(result or {}).get('model', 'whisper-tiny-en')}`, folder "
                     f"`{settings.get('distilled_model', 'distilled_model')}`; "
                     f"{number_text(variant.get('params'))} parameters in the measured model against the base's "
                     f"{base_params}).")
        tags += ["distillation"]
    else:
        lines.append(f"Starting point: the fp32 base `{(result or {}).get('model', 'whisper-tiny-en')}`.")
    if recipe.get("prune"):
        step = build.get("prune")
        if step:
            line, t = describe_method("pruning", step)
        else:
            line, t = f"structured pruning ({settings_text(recipe['prune'], sorted(recipe['prune']))})", [
                "pruned", "structured-pruning"]
        lines.append(f"One-shot {line} (no training afterwards).")
        tags += t
    if recipe.get("dtype"):
        lines.append(f"Weights cast to `{recipe['dtype']}` (input features cast to match); no int8.")
        tags += [str(recipe["dtype"]).replace("bfloat16", "bf16")]
    if recipe.get("int8") is not None:
        q = recipe["int8"]
        skip = q.get("skip_modules") or []
        lines.append("PyTorch dynamic int8 (`hfcompress.quantize.quantize_dynamic_int8`): weights of "
                     + ("every nn.Linear layer, the tied output projection `proj_out` included"
                        if not skip else f"every nn.Linear layer except those matching {skip}")
                     + f", {'one scale per output channel' if q.get('per_channel') else 'one scale per tensor'}; "
                       "activations quantized per batch at run time; no calibration, no training.")
        tags += ["quantized", "int8", "dynamic-quantization"]
    return lines, list(dict.fromkeys(tags))


def _wer(value: float) -> str:
    return f"{value:.3f} ({100 * value:.1f}%)"


def speech_comparison_table(result: dict, name: str) -> str:
    """The before/after table of the base and variant `name`, every number read from `result`."""
    b, v = result["base"], result["variants"][name]
    d_synth, d_real = speech_wer_deltas(result, name)
    rows = [("WER, synthesized test voices (fraction)", _wer(b["wer_synth"]), _wer(v["wer_synth"]),
             f"{d_synth:+.2f} points"),
            ("WER, real recordings (fraction)", _wer(b["wer_real"]), _wer(v["wer_real"]), f"{d_real:+.2f} points")]
    for key, label in (("cer_synth", "CER, synthesized test voices (fraction)"),
                       ("cer_real", "CER, real recordings (fraction)")):
        if b.get(key) is not None and v.get(key) is not None:
            rows.append((label, f"{b[key]:.3f}", f"{v[key]:.3f}", f"{100 * (v[key] - b[key]):+.2f} points"))
    rows += [("CPU latency (s per clip)", f"{b['latency_s_per_clip']:.3f} s", f"{v['latency_s_per_clip']:.3f} s",
              f"{v['latency_s_per_clip'] - b['latency_s_per_clip']:+.3f} s"),
             ("speedup (base latency / latency)", f"{b.get('speedup', 1.0):.2f}x", f"{v['speedup']:.2f}x", ""),
             ("checkpoint size (whole folder)", f"{b['size_mb']:.1f} MB", f"{v['size_mb']:.1f} MB",
              f"{v['size_mb'] - b['size_mb']:+.1f} MB ({100 * (v['size_mb'] / b['size_mb'] - 1):+.0f}%)"),
             ("parameters", f"{b['params']:,}", f"{v['params']:,}",
              f"{v['params'] - b['params']:+,} ({100 * (v['params'] / b['params'] - 1):+.0f}%)")]
    lines = ["| | base | this model | change |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {x} | {y} | {c} |" for a, x, y, c in rows])


def speech_loading_code(variant: dict, path: str, max_new_tokens: int = 96) -> tuple[str, str]:
    """Python that loads variant's checkpoint format from `path` and transcribes one clip, and what it needs."""
    fmt = variant.get("format", "transformers")
    dtype = (variant.get("recipe") or {}).get("dtype")
    imports = ["import soundfile as sf", "import torch", "from transformers import WhisperProcessor"]
    if fmt == "torch_int8":
        imports.append("from hfcompress.quantize import load_dynamic_int8")
        load = "model = load_dynamic_int8(PATH)  # WhisperForConditionalGeneration, int8 nn.Linear layers, eval mode"
        note = ("Needs hfcompress: the int8 weights are stored as int8 tensors and scales in "
                "`hfcompress_dynamic_int8.safetensors`, which `from_pretrained` does not read (it fails rather than "
                "initialising the layers at random). `hfcompress.loading.load_model(PATH)` loads it too.")
    elif fmt == "structured":
        imports.append("from hfcompress.prune import load_structured")
        load = "model = load_structured(PATH)  # WhisperForConditionalGeneration at its pruned shape, eval mode"
        note = "Needs hfcompress: the pruned shapes are recorded in config.json (`hfcompress_structure`)."
    elif fmt == "transformers":
        imports[-1] = "from transformers import WhisperForConditionalGeneration, WhisperProcessor"
        extra = f", dtype=torch.{dtype}" if dtype else ""
        load = f"model = WhisperForConditionalGeneration.from_pretrained(PATH{extra}).eval()"
        note = "A plain transformers checkpoint" + (f" in {dtype} (the input features must be cast to it, as below)."
                                                    if dtype else ".")
    else:
        imports.append("from hfcompress.loading import load_model")
        load = "model = load_model(PATH)"
        note = f"Needs hfcompress (checkpoint format `{fmt}`)."
    code = "\n".join(imports + [
        "", f"PATH = {json.dumps(path)}  # the Hub repository, or a local folder holding these files",
        load, "processor = WhisperProcessor.from_pretrained(PATH)", "",
        "audio, rate = sf.read(\"clip.wav\", dtype=\"float32\")  # 16 kHz mono speech, English",
        "features = processor(audio, sampling_rate=16000, return_tensors=\"pt\").input_features",
        "with torch.inference_mode():",
        f"    ids = model.generate(features.to(model.dtype), num_beams=1, do_sample=False, "
        f"max_new_tokens={max_new_tokens})",
        "print(processor.batch_decode(ids, skip_special_tokens=True)[0])",
    ])
    return code, note


def _first(row: dict, *keys):
    for key in keys:
        for k, value in row.items():
            if (k == key or k.startswith(key)) and isinstance(value, (int, float)) and not isinstance(value, bool):
                return k, value
    return None, None


def classification_section(result: dict) -> str:
    """A short section listing the rows of the result's ``classification`` block (keyword-spotting classifiers), by
    name with accuracy, latency and size where a row has them; empty when the result has none."""
    block = result.get("classification")
    if not block:
        return ""
    rows = block
    if isinstance(block, dict) and isinstance(block.get("variants"), dict):  # {base, variants} as its benchmark writes
        rows = {**({"base": block["base"]} if isinstance(block.get("base"), dict) else {}), **block["variants"]}
    elif isinstance(block, dict) and "rows" in block:
        rows = block["rows"]
    if isinstance(rows, dict):
        items = [(str(k), r) for k, r in rows.items() if isinstance(r, dict)]
    elif isinstance(rows, list):
        items = [(str(r.get("name", r.get("variant", i))), r) for i, r in enumerate(rows) if isinstance(r, dict)]
    else:
        items = []
    items = [(n, r) for n, r in items if any(_first(r, k)[1] is not None for k in ("accuracy", "latency", "size"))]
    if not items:
        return ""
    out = ["## Keyword-spotting classifiers measured in the same benchmark", "",
           "| name | accuracy | latency | size MB |", "|---|---|---|---|"]
    for name, row in items:
        _, acc = _first(row, "accuracy", "acc")
        lat_key, lat = _first(row, "latency")
        _, size = _first(row, "size_mb", "size")
        if lat is None:
            lat_text = "n/a"
        elif lat_key.endswith("_ms") or "_ms_" in lat_key:
            lat_text = f"{lat:.1f} ms"
        else:
            lat_text = f"{lat:.4f} s" if lat_key.endswith("_s") or "_s_" in lat_key else f"{lat:.4g}"
        out.append(f"| {name} | {'n/a' if acc is None else f'{acc:.4f}'} | {lat_text} | "
                   f"{'n/a' if size is None else f'{size:.1f}'} |")
    if isinstance(block, dict):
        text = block.get("description") or block.get("note") or block.get("task")
        if isinstance(text, str):
            out += ["", f"Task: {text}." if text == block.get("task") else text]
    return "\n".join(out)


def build_speech_card(result: dict, name: str, model_name: str | None = None, description: str | None = None,
                      model_path: str | None = None):
    """The `ModelCard` of speech variant `name` from a measured speech benchmark result (the dict
    ``scripts/benchmark_speech.py`` writes to speech.json). `description`: the benchmark's own words on the variant;
    `model_path`: the path the loading code names (default: `model_name`, the card's folder as a Hub repo)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    variants = result.get("variants") or {}
    if name not in variants:
        raise UserInputError(f"the speech result has no variant {name!r}; it has {', '.join(variants) or 'none'}")
    b, v = result["base"], variants[name]
    ts, lat, env = result.get("test_sets", {}), result.get("latency", {}), result.get("environment", {})
    synth, real = ts.get("synth", {}), ts.get("real", {})
    base_name = result.get("model", "whisper-tiny-en")
    base_id = hub_id(base_name)
    model_name = model_name or f"{os.path.basename(os.path.normpath(base_name))}-{name}"
    d_synth, d_real = speech_wer_deltas(result, name)
    meets = speech_meets_floor(result, name)
    described, method_tags = describe_speech_variant(name, v, result, description)
    voices = ", ".join(synth.get("voices", [])) or "unknown voices"
    real_set = real.get("set", "real recordings")
    results = [
        EvalResult(task_type="automatic-speech-recognition", task_name="Speech recognition",
                   dataset_type="hfcompress-synthesized-speech",
                   dataset_name=f"synthesized test voices ({voices})", dataset_split="test",
                   metric_type="wer", metric_name="WER (fraction, 0.056 = 5.6%)", metric_value=float(v["wer_synth"])),
        EvalResult(task_type="automatic-speech-recognition", task_name="Speech recognition",
                   dataset_type=real_set.split()[0].lower(), dataset_name=f"{real_set} (real recordings)",
                   dataset_split="test",
                   metric_type="wer", metric_name="WER (fraction, 0.056 = 5.6%)", metric_value=float(v["wer_real"])),
    ]
    card_data = ModelCardData(
        language="en", library_name="transformers", pipeline_tag="automatic-speech-recognition",
        tags=list(dict.fromkeys(["whisper", "hfcompress", "automatic-speech-recognition", *method_tags])),
        metrics=["wer"], base_model=base_id, base_model_relation=speech_variant_relation(v) if base_id else None,
        model_name=model_name, eval_results=results,
    )
    floor = result.get("floor", {})
    chosen = choose_speech_variant(result)
    verdict = "meets" if meets else "misses"
    rule = floor.get("rule") or (f"a compressed Whisper >= {SPEECH_FLOOR_SPEEDUP}x faster with WER within "
                                 f"+{SPEECH_FLOOR_WER_POINTS:g} points of the base on both test sets")
    floor_lines = [
        f"The speech issue's floor ({rule}): "
        f"this variant **{verdict}** it: {v['speedup']:.2f}x faster (needs >= {SPEECH_FLOOR_SPEEDUP}x), WER "
        f"{d_synth:+.2f} points on the synthesized voices and {d_real:+.2f} points on the real recordings (each needs "
        f"<= +{SPEECH_FLOOR_WER_POINTS:g})."]
    meeting = floor.get("variants_meeting", [n for n in variants if speech_meets_floor(result, n)])
    if not meeting:
        floor_lines.append(f"No variant of this benchmark run meets the floor ({len(variants)} measured: "
                           f"{', '.join(variants)}).")
    else:
        floor_lines.append(f"Variants of this run meeting it: {', '.join(meeting)}.")
    if chosen == name:
        floor_lines.append(
            "This card's variant is the fastest one meeting the floor." if meets else
            f"This card's variant is, among the variants at least {SPEECH_FLOOR_SPEEDUP}x faster, the one whose worse "
            f"WER increase is smallest ({max(d_synth, d_real):+.2f} points); the floor is missed.")
    notes = [n for n in result.get("notes", []) if n.startswith((f"{name}:", f"{name} "))]
    path = model_path or model_name
    code, load_note = speech_loading_code(v, path, lat.get("max_new_tokens", 96))
    if v.get("path"):
        load_note += (f" The checkpoint measured here is the benchmark's `{v['path']}` (format `{v.get('format')}`): "
                      "`PATH` is that folder, or a copy of it with this card as its README.md.")
    one_word = ", ".join(f"{100 / s['ref_words']:.2f} points on the {label}"
                         for s, label in ((synth, "synthesized set"), (real, "real recordings")) if s.get("ref_words"))
    summary = (f"A compressed Whisper made with hfcompress from `{base_name}`"
               f"{f' ([{base_id}](https://huggingface.co/{base_id}))' if base_id else ''}, variant `{name}` of "
               "`scripts/benchmark_speech.py`: "
               f"{v['speedup']:.2f}x faster per clip on a CPU than the base, {v['size_mb']:.1f} MB against "
               f"{b['size_mb']:.1f} MB, WER {d_synth:+.2f} points on synthesized test voices and {d_real:+.2f} points "
               f"on real recordings. The floor of the speech issue is {'met' if meets else 'missed'} (below).")
    protocol = (
        f"Measured by `scripts/benchmark_speech.py` (`{result.get('command', '')}`) on "
        f"{env.get('cpu_count')} CPU cores, torch {env.get('torch')}, transformers {env.get('transformers')}, no GPU. "
        f"Test sets: {synth.get('clips')} synthesized clips ({synth.get('ref_words')} reference words; the test "
        f"split's voices {voices}, never used in training) and {real.get('clips')} real recordings ({real_set}, "
        f"{real.get('ref_words')} words). Decoding: {lat.get('decoding')}, max_new_tokens {lat.get('max_new_tokens')} "
        f"(the longest reference is {lat.get('longest_reference_tokens')} tokens with the prompt). WER and CER are "
        f"corpus rates after `hfcompress.speech.normalize` (case, punctuation, number words as digits); {WER_NOTE}. "
        f"Latency: {lat.get('timed')} of one clip on {lat.get('threads')} torch threads, {lat.get('statistic')}, "
        f"{lat.get('rounds')} rounds over the {lat.get('clips')} clips after one warm-up clip per model; speedup = "
        f"base latency / this model's latency in the same run. Size: every file of the saved folder. Parameters: int8 "
        f"weights count as the weights they stand for.")
    if lat.get("load_average_before"):
        protocol += (f" Load average {lat['load_average_before'][0]:.1f} before and "
                     f"{lat.get('load_average_after', [float('nan')])[0]:.1f} after the measurement.")
    limitations = [
        f"Whisper tiny.en is the smallest English-only Whisper ({b['params']:,} parameters in the base): it "
        "transcribes English only, and the larger Whisper checkpoints are more accurate.",
        "The synthesized test voices (espeak-ng/flite voices with speed perturbation and added noise) are hard for it: "
        f"the base itself has WER {_wer(b['wer_synth'])} there, so that set measures how much the compression moves "
        "the errors rather than how good the transcripts are; the real recordings are the better guide "
        f"(base WER {_wer(b['wer_real'])}).",
        f"The test sets are small ({synth.get('clips')} and {real.get('clips')} clips): one word changes WER by "
        f"{one_word}, so differences of a point or two are within noise.",
        "Latency was measured on the CPU of the protocol above; other CPUs (and other thread counts) give other "
        "ratios." + (" PyTorch dynamic int8 runs on CPUs only." if v.get("format") == "torch_int8" else ""),
    ]
    if v.get("clips_hitting_max_new_tokens"):
        limitations.append(f"{v['clips_hitting_max_new_tokens']} clip(s) decoded up to max_new_tokens: the model "
                           "loops on some inputs.")
    body = [
        f"# {model_name}", "", summary, "",
        "## Before and after (measured in one run)", "", speech_comparison_table(result, name), "",
        f"{WER_NOTE}; change in points = 100 x (this model - base).", "",
        "## Floor", "", " ".join(floor_lines), "",
        "## Measurement protocol", "", protocol, "",
        "## How to load it and transcribe", "", "```python", code, "```", "", load_note, "",
        "## How it was made", "", "\n".join(f"- {line}" for line in described),
    ]
    if v.get("recipe"):
        body += ["", "The benchmark's recipe (`VARIANTS` in scripts/benchmark_speech.py):", "", "```json",
                 json.dumps(v["recipe"], indent=2, sort_keys=True), "```"]
    if notes:
        body += ["", *(f"Note: {n}" for n in notes)]
    env_versions = ", ".join(f"{k} {env[k]}" for k in ("hfcompress", "transformers", "torch", "datasets") if env.get(k))
    if env_versions:
        body += ["", f"Libraries: {env_versions}"]
    extra = classification_section(result)
    if extra:
        body += ["", extra]
    body += ["", "## Limitations", "", "\n".join(f"- {line}" for line in limitations)]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_speech_card(result: dict, name: str, card_dir: str, **kwargs) -> str:
    """Render the speech card of variant `name` and write it to ``<card_dir>/README.md`` atomically; returns the
    path."""
    return save_card(build_speech_card(result, name, **kwargs), card_dir, "speech model card")
