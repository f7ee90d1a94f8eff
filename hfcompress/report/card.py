"""Model cards rendered from a run record (`RunRecord`), never typed: the metadata (``base_model``,
``base_model_relation``, tags, ``model-index`` results) and the before/after table come from what `hfcompress.report`
measured in the run. The template is ``model_cards/template.md`` (a huggingface_hub Jinja template); the card is a
`huggingface_hub.ModelCard`, written as ``README.md`` beside the model.

This release renders the cards of post-training compression runs (``quantize_summary.json``: the reference and the
compressed model measured side by side)."""

from __future__ import annotations

import logging
import os

from ..errors import UserInputError

logger = logging.getLogger(__name__)

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "model_cards", "template.md")

# checkpoint format -> (Python that loads it, what it needs)
LOADING = {
    "onnx": ("from hfcompress.quantize import OnnxModelForSequenceClassification\n"
             "model = OnnxModelForSequenceClassification.from_pretrained(PATH)",
             "Needs hfcompress and onnxruntime (the model is an ONNX Runtime int8 graph; `model(**inputs).logits` "
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
    "transformers": ("from transformers import AutoModelForSequenceClassification\n"
                     "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
                     "A plain transformers checkpoint."),
}


def _hub_id(source: str | None) -> str | None:
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


def _fmt_delta(before: float, after: float, unit: str = "", digits: int = 1) -> str:
    rel = (after - before) / before * 100 if before else float("nan")
    return f"{after - before:+.{digits}f}{unit} ({rel:+.0f} per cent)"


def quantize_card(record: dict, model_dir: str, base_model: str | None = None, model_name: str | None = None):
    """The `ModelCard` of a `scripts/quantize.py` run, from its record (``quantize_summary.json`` as a dict)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    try:
        ref, comp = record["models"]["reference"], record["models"]["compressed"]
        summary = record["metrics"]["summary"]
    except KeyError as exc:
        raise UserInputError(f"the run record has no {exc}: not a scripts/quantize.py record") from None
    split = summary["split"]
    fmt = comp.get("format", "transformers")
    quant = record["methods"].get("quantization", {})
    qname = quant.get("quantization", "none")
    settings = record.get("settings", {})
    dataset = settings.get("data", {}).get("dataset") or record.get("data", {}).get("dataset")
    base = base_model or _hub_id(settings.get("model", {}).get("model"))
    tags = ["hfcompress", "text-classification"]
    if qname != "none":
        tags += ["quantized", {"onnx_int8": "onnx", "onnx_fp32": "onnx", "torch_int8": "int8", "bnb_8bit": "8-bit",
                               "bnb_4bit": "4-bit"}.get(qname, qname)]
    if "vocab_trim" in record["methods"]:
        tags.append("vocabulary-trimmed")
    if "lowrank" in record["methods"]:
        tags.append("low-rank")
    name = model_name or os.path.basename(os.path.normpath(os.path.dirname(os.path.abspath(model_dir))))
    ref_m = record["metrics"]["reference"][split]
    comp_m = record["metrics"]["compressed"][split]
    results = [EvalResult(task_type="text-classification", dataset_type=str(dataset), dataset_name=str(dataset),
                          dataset_split=split, metric_type=m, metric_name=m, metric_value=float(comp_m[m]))
               for m in ("accuracy", "f1") if m in comp_m]
    card_data = ModelCardData(
        library_name="transformers" if fmt in ("transformers", "bnb", "lowrank", "structured") else "onnx",
        pipeline_tag="text-classification", tags=tags, metrics=[r.metric_type for r in results],
        base_model=base, base_model_relation="quantized" if (base and qname != "none") else ("finetune" if base else None),
        model_name=name, eval_results=results, datasets=[dataset] if dataset and "/" in str(dataset) else None,
    )
    rows = [
        ("test accuracy" if split == "test" else f"{split} accuracy", f"{ref_m['accuracy']:.4f}", f"{comp_m['accuracy']:.4f}",
         f"{summary['accuracy_delta_points']:+.2f} points"),
        ("checkpoint size (every file but this card)", f"{ref['checkpoint_mb']:.1f} MB", f"{comp['checkpoint_mb']:.1f} MB",
         f"{summary['size_ratio']:.2f}x smaller"),
        ("CPU latency", f"{ref['latency']['median_ms']:.0f} ms", f"{comp['latency']['median_ms']:.0f} ms",
         f"{summary['speedup']:.2f}x faster"),
        ("parameters", f"{ref['parameters']:,}", f"{comp.get('parameters_before_quantization', ref['parameters']):,}",
         "before quantization"),
    ]
    if "peak_memory_mb" in ref and "peak_memory_mb" in comp:
        rows.append(("peak memory (load + one batch)", f"{ref['peak_memory_mb']:.0f} MB", f"{comp['peak_memory_mb']:.0f} MB",
                     _fmt_delta(ref["peak_memory_mb"], comp["peak_memory_mb"], " MB", 0)))
    table = "\n".join(["| | base | this model | change |", "|---|---|---|---|"] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])
    lat = comp["latency"]
    prefix = {"onnx_int8": "onnx_", "onnx_fp32": "onnx_opset", "torch_int8": "torch_", "bnb_8bit": "skip",
              "bnb_4bit": "bnb_"}.get(qname)
    relevant = {k: v for k, v in quant.items()
                if prefix and (k.startswith(prefix) or (k == "skip_modules" and v)) and v is not None}
    methods = [f"- quantization: `{qname}`" + (f" ({', '.join(f'{k}={v}' for k, v in relevant.items())})" if relevant else "")]
    if "vocab_trim" in record["methods"]:
        v = record["methods"]["vocab_trim"]
        methods.append(f"- vocabulary trimmed to the training split's tokens: {v.get('kept_vocab_size')} of "
                       f"{v.get('original_vocab_size')} kept")
    if "lowrank" in record["methods"]:
        lr = record["methods"]["lowrank"]
        methods.append(f"- low-rank factorization ({lr.get('mode')}), no training afterwards")
    code, note = LOADING.get(fmt, LOADING["transformers"])
    env = record.get("environment", {})
    card = ModelCard.from_template(
        card_data, template_path=TEMPLATE, model_name=name,
        summary=f"A compressed text classifier made with hfcompress from `{settings.get('model', {}).get('model')}`"
                f"{f' ([{base}](https://huggingface.co/{base}))' if base else ''} on `{dataset}`.",
        comparison_table=table,
        hardware=f"{env.get('cpu_count')} CPU cores, torch {env.get('torch')}",
        measurement_protocol=f"batch {lat.get('batch_size')} x {lat.get('seq_len')}, {lat.get('threads')} threads, "
                             f"median of {lat.get('runs')} after {lat.get('warmup')} warm-ups, base and compressed "
                             f"interleaved in {len(lat.get('rounds_ms', [0]))} rounds; accuracy on the {split} split "
                             f"({record.get('data', {}).get('splits', {}).get(split)} rows) of the saved models, reloaded.",
        loading_code=code.replace("PATH", repr(model_dir if not base else name)), loading_note=note,
        methods="\n".join(methods), command=record.get("command", ""),
        versions=", ".join(f"{k} {env[k]}" for k in ("hfcompress", "transformers", "torch") if env.get(k)),
        limitations=f"Measured on one split of one dataset with one seed; with {record.get('data', {}).get('splits', {}).get(split)} "
                    "rows, one prediction moves accuracy by about "
                    f"{100 / max(1, record.get('data', {}).get('splits', {}).get(split) or 1):.2f} points. Latency is "
                    "CPU latency on the machine above; other CPUs give other ratios.",
    )
    return card


def write_card(record: dict, model_dir: str, **kwargs) -> str:
    """Render the card of `record` and write it to ``<model_dir>/README.md``; returns the path."""
    card = quantize_card(record, model_dir, **kwargs)
    path = os.path.join(model_dir, "README.md")
    tmp = path + ".tmp"
    card.save(tmp)
    os.replace(tmp, path)
    logger.info("Wrote the model card %s", path)
    return path
