"""Model cards rendered from a run record (`RunRecord`), never typed: the metadata (``base_model``,
``base_model_relation``, tags, ``model-index`` results) and the before/after table come from the record's
``comparison``, which `hfcompress.report.measure.compare_checkpoints` measured in the run (the base and the result,
both loaded from disk). The template is ``model_cards/template.md`` (a huggingface_hub Jinja template); the card is a
`huggingface_hub.ModelCard`, written as ``README.md`` beside the model, with its plots (PNG) beside it.

Every script writes one (distill, prune, lowrank, quantize, compress); ``hfcompress card`` writes one for a model
compressed with other code."""

from __future__ import annotations

import logging
import os

from ..errors import UserInputError
from .plot import SCHEDULE_PNG, TRADEOFF_PNG

logger = logging.getLogger(__name__)

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "model_cards", "template.md")
CARD = "README.md"

# checkpoint format -> (Python that loads it, what it needs)
LOADING = {
    "onnx": ("from hfcompress.quantize import OnnxModelForSequenceClassification\n"
             "model = OnnxModelForSequenceClassification.from_pretrained(PATH)",
             "Needs hfcompress and onnxruntime (the model is an ONNX Runtime graph; `model(**inputs).logits` "
             "and `transformers.pipeline(\"text-classification\", model=model, tokenizer=tokenizer)` work)."),
    "torch_int8": ("from hfcompress.quantize import load_dynamic_int8\nmodel = load_dynamic_int8(PATH)",
                   "Needs hfcompress (PyTorch dynamic int8 weights stored as int8 tensors and scales)."),
    "bnb": ("from transformers import AutoModelForSequenceClassification\n"
            "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
            "Needs bitsandbytes (the quantization_config in config.json is read by transformers)."),
    "lowrank": ("from transformers import AutoModelForSequenceClassification\n"
                "model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)",
                "The factorized layers are built by the modeling code saved beside the weights (or hfcompress's "
                "`load_lowrank(PATH)` without remote code)."),
    "structured": ("from transformers import AutoModelForSequenceClassification\n"
                   "model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)",
                   "The pruned shapes are built by the modeling code saved beside the weights (or hfcompress's "
                   "`load_structured(PATH)` without remote code)."),
    "sparse": ("from hfcompress.prune import load_sparse\nmodel = load_sparse(PATH)",
               "Needs hfcompress (compact sparse weights: values and positions of the non-zero entries)."),
    "transformers": ("from transformers import AutoModelForSequenceClassification\n"
                     "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
                     "A plain transformers checkpoint."),
}

QUANT_TAGS = {"onnx_int8": ["onnx", "int8"], "onnx_fp32": ["onnx"], "torch_int8": ["int8"], "bnb_8bit": ["8-bit"],
              "bnb_4bit": ["4-bit"]}
TRAINING_METHODS = ("distillation", "pruning", "lora", "lowrank_training")


DATASET_IDS = {"rotten-tomatoes": "cornell-movie-review-data/rotten_tomatoes"}


def dataset_id(dataset: str | None) -> str | None:
    """The Hub id of a dataset given as an offline asset name or a Hub id (a local file or folder has none)."""
    if not dataset:
        return None
    if dataset in DATASET_IDS:
        return DATASET_IDS[dataset]
    if not os.path.exists(dataset) and dataset.count("/") == 1:
        return dataset
    return None


def hub_id(source: str | None) -> str | None:
    """The Hub id of a base model given as an offline asset name or a Hub id (a local folder has none)."""
    if not source:
        return None
    from ..assets import ASSETS

    name = os.path.basename(os.path.normpath(source))
    known = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "mpnet-base": "sentence-transformers/all-mpnet-base-v2"}
    if name in known and name in ASSETS:
        return known[name]
    if not os.path.exists(source) and source.count("/") == 1:
        return source
    return None


def _num(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) > 1000):
        return f"{int(value):,}{unit}"
    return f"{value:.{digits}f}{unit}"


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
        if isinstance(value, (int, float)) and key in model["metrics"]:
            rows.append((f"{split} {key}", f"{value:.4f}", f"{model['metrics'][key]:.4f}",
                         _change(changes.get(f"metric_{key}"), points=True)))
    rows.append(("checkpoint size (every file but card and plots)", _num(base["size_mb"], 1, " MB"),
                 _num(model["size_mb"], 1, " MB"), f"{comparison['size_ratio']:.2f}x smaller"))
    rows.append(("CPU latency (batch)", _num(base["latency_ms"], 0, " ms"), _num(model["latency_ms"], 0, " ms"),
                 f"{comparison['speedup']:.2f}x faster"))
    rows.append(("parameters", _num(base["parameters"]), _num(model["parameters"]), _change(changes.get("parameters"))))
    if base.get("nonzero_parameters") is not None and model.get("nonzero_parameters") is not None:
        rows.append(("non-zero parameters", _num(base["nonzero_parameters"]), _num(model["nonzero_parameters"]),
                     _change(changes.get("nonzero_parameters"))))
    if "peak_memory_mb" in base and "peak_memory_mb" in model:
        rows.append(("peak memory (load + one batch)", _num(base["peak_memory_mb"], 0, " MB"),
                     _num(model["peak_memory_mb"], 0, " MB"), _change(changes.get("peak_memory_mb"), 0, " MB")))
    lines = ["| | base | this model | change |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def _settings(d: dict, keys) -> str:
    return ", ".join(f"{k}={d[k]}" for k in keys if d.get(k) not in (None, False, 0, 0.0, "", "none", []))


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
    """One line of the card's "How it was made" for a method as the run record holds it, and its tags."""
    if name == "distillation":
        teacher = m.get("teacher")
        extra = _settings(m, ("hidden_weight", "attention_weight", "relation_weight", "intermediate_fraction"))
        return (f"knowledge distillation from `{teacher}` (temperature {m.get('temperature')}, alpha {m.get('alpha')}"
                f"{', ' + extra if extra else ''})", ["distillation"])
    if name == "pruning":
        if m.get("granularity") == "structured":
            return (f"structured pruning ({m.get('method')} scores, {m.get('scope')} ranking): attention heads kept "
                    f"per layer {m.get('heads_per_layer')} ({m.get('heads_after')} of {m.get('heads_before')}), FFN "
                    f"neurons kept per layer {m.get('ffn_per_layer')} ({m.get('neurons_after')} of "
                    f"{m.get('neurons_before')}), removed blocks {m.get('removed_blocks')}; parameters "
                    f"{_num(m.get('parameters_before'))} -> {_num(m.get('parameters_after'))}, physically removed",
                    ["pruned", "structured-pruning"])
        return (f"{m.get('method')} pruning ({m.get('scope', 'local')}) to sparsity "
                f"{_num(m.get('reached_sparsity'), 3)} of the targeted weights", ["pruned", "sparse"])
    if name == "lowrank":
        return (f"low-rank SVD factorization ({_settings(m, ('rank', 'energy', 'parameter_budget'))})",
                ["low-rank"])
    if name == "lora":
        quant = m.get("lora_quantization") not in (None, "none")
        return (f"{'QLoRA' if quant else 'LoRA'} ({_settings(m, ('lora_r', 'lora_alpha', 'lora_target_modules', 'lora_quantization'))}"
                f"; {m.get('trainable_parameters')} of {m.get('parameters')} parameters trained, the task head in "
                "full)" + (", merged into the weights" if m.get("lora_merge", True) else ", as an adapter"),
                ["lora"])
    if name == "vocab_trim":
        return (f"vocabulary trimmed to the training split's tokens: {m.get('kept_vocab_size')} of "
                f"{m.get('original_vocab_size')} kept", ["vocabulary-trimmed"])
    if name == "quantization":
        q = m.get("quantization", "none")
        prefix = {"onnx_int8": "onnx_", "torch_int8": "torch_", "bnb_4bit": "bnb_"}.get(q)
        keys = [k for k in m if prefix and k.startswith(prefix)] + ["skip_modules"]
        extra = _settings(m, keys)
        return f"quantization: `{q}`" + (f" ({extra})" if extra else ""), (["quantized", *QUANT_TAGS.get(q, [])]
                                                                             if q != "none" else [])
    if m.get("description"):  # a line a user gave (`hfcompress card --method TEXT`)
        return str(m["description"]), []
    return f"{name}", [name]


def build_card(record: dict, model_dir: str, model_name: str | None = None, base_model: str | None = None):
    """The `ModelCard` of a run, from its record (a `RunRecord` as a dict) holding a ``comparison``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    comparison = record.get("comparison")
    if not comparison:
        raise UserInputError("the run record has no 'comparison' (the base and the result measured side by side): "
                             "measure first, e.g. `hfcompress measure MODEL_DIR --base BASE`")
    base, model, split = comparison["base"], comparison["model"], comparison["split"]
    dataset = record.get("data", {}).get("dataset")
    base_id = base_model or hub_id(base.get("source"))
    methods = record.get("methods", {})
    described, method_tags = describe_methods(methods)
    tags = ["hfcompress", "text-classification", *method_tags]
    lines = [f"- {line}" for line in described]
    if record.get("stages"):  # a recipe: what each stage did, in order, with what it measured
        lines = ["Recipe stages, in order (each measured against the base when it finished):"]
        for s in record["stages"]:
            stage_lines, _ = describe_methods(s.get("methods") or {})
            got = s.get("measured", {})
            lines.append(f"{len(lines)}. `{s['name']}` ({s['method']}): " + "; ".join(stage_lines)
                         + (f" -> accuracy {got['accuracy']:.4f}, {got['size_mb']:.1f} MB, {got['speedup']:.2f}x "
                            "faster" if got.get("accuracy") is not None else ""))
        recipe_text = record.get("settings", {}).get("recipe", {}).get("text")
        if recipe_text:
            lines.append("\nThe recipe:\n\n```yaml\n" + recipe_text.strip() + "\n```")
    trained = any(k in methods for k in TRAINING_METHODS)
    quantized = methods.get("quantization", {}).get("quantization", "none") != "none" if isinstance(
        methods.get("quantization"), dict) else False
    relation = None
    if base_id:
        relation = "finetune" if trained or not quantized else "quantized"
    name = model_name or os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(model_dir))))
    results = [EvalResult(task_type="text-classification", dataset_type=dataset_id(dataset) or os.path.basename(str(dataset)),
                          dataset_name=os.path.basename(str(dataset)),
                          dataset_split=split, metric_type=k, metric_name=k, metric_value=float(model["metrics"][k]))
               for k in ("accuracy", "f1") if k in model["metrics"]]
    fmt = model.get("format", "transformers")
    card_data = ModelCardData(
        library_name="onnx" if fmt == "onnx" else "transformers",
        pipeline_tag="text-classification", tags=tags, metrics=[r.metric_type for r in results],
        base_model=base_id, base_model_relation=relation, model_name=name, eval_results=results,
        datasets=[dataset_id(dataset)] if dataset_id(dataset) else None,
    )
    plots = [f"![{alt}]({png})" for png, alt in ((TRADEOFF_PNG, "accuracy against size and latency"),
                                                 (SCHEDULE_PNG, "sparsity schedule"))
             if os.path.exists(os.path.join(model_dir, png))]
    code, note = LOADING.get(fmt, LOADING["transformers"])
    env = record.get("environment", {})
    proto = comparison.get("protocol", {})
    rows = comparison.get("rows")
    seed = record.get("settings", {}).get("training", {}).get("seed") or record.get("settings", {}).get(
        "recipe", {}).get("seed")
    return ModelCard.from_template(
        card_data, template_path=TEMPLATE, model_name=name,
        summary=f"A compressed text classifier made with hfcompress from "
                f"`{base.get('source') or base['path']}`{f' ([{base_id}](https://huggingface.co/{base_id}))' if base_id else ''}"
                f" on `{dataset}`: {comparison['size_ratio']:.2f}x smaller on disk and {comparison['speedup']:.2f}x "
                f"faster on a CPU than the base, "
                + (f"{comparison['accuracy_delta_points']:+.2f} accuracy points." if comparison.get(
                    "accuracy_delta_points") is not None else "task metrics below."),
        comparison_table=comparison_table(comparison),
        plots="\n\n".join(plots),
        hardware=f"{env.get('cpu_count')} CPU cores ({proto.get('device', 'cpu')}), torch {env.get('torch')}",
        measurement_protocol=f"latency of batch {proto.get('batch_size')} x {proto.get('seq_len')} tokens on "
                             f"{proto.get('threads')} threads, median of {proto.get('runs')} after "
                             f"{proto.get('warmup')} warm-ups, base and this model interleaved in "
                             f"{proto.get('rounds')} rounds (ratio: median of the rounds' ratios); metrics on the "
                             f"{split} split ({rows} rows) of both saved models, reloaded from disk.",
        loading_code=code.replace("PATH", repr(name if base_id else model_dir)), loading_note=note,
        methods="\n".join(lines) or "- (no method recorded)", command=record.get("command", ""),
        seed=str(seed), versions=", ".join(f"{k} {env[k]}" for k in ("hfcompress", "transformers", "torch", "datasets")
                                          if env.get(k)),
        limitations=f"Measured on one split of one dataset with one seed; with {rows} rows, one prediction moves "
                    f"accuracy by {100 / max(1, rows or 1):.2f} points, so differences of a few tenths are within "
                    "noise. Latency is CPU latency on the machine above; other CPUs give other ratios.",
    )


def write_card(record: dict, model_dir: str, **kwargs) -> str:
    """Render the card of `record` and write it to ``<model_dir>/README.md`` atomically; returns the path."""
    card = build_card(record, model_dir, **kwargs)
    path = os.path.join(model_dir, CARD)
    tmp = path + ".tmp"
    card.save(tmp)
    os.replace(tmp, path)
    logger.info("Wrote the model card %s", path)
    return path
