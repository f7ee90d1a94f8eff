"""Vocabulary trimming: keep only the tokens a task uses, in the tokenizer and in the embedding matrix.

Why: the word-embedding matrix is the largest single tensor of a small encoder (MiniLM-L6: 30,522 x 384 = 11.7M of
its 22.7M parameters), and a classifier fine-tuned on one dataset only ever looks up a fraction of its rows. Trimming
(TextPruner, Yang et al. 2022) counts the token ids that the tokenizer produces on the task's texts, keeps those (plus
the special tokens and a fallback alphabet), renumbers them 0..V'-1 in their original order, and rewrites both sides
consistently:

  * the tokenizer: the `tokenizers` backend JSON (model vocabulary, BPE merges, Unigram `unk_id`, added tokens, the
    post-processor's special token ids, padding id) is rewritten and reloaded as the same transformers class, so the
    result is an ordinary fast tokenizer that saves and reloads without hfcompress;
  * the model: the rows of the input embedding (and of a tied or untied output embedding and its bias, for language
    model heads) are *gathered* in the new order, and `config.vocab_size` and the config's token ids are updated, so
    the result is an ordinary transformers checkpoint.

The key property: a text whose tokens were all kept gets exactly the same token strings, hence exactly the same
logits, from the trimmed pair as from the original. Words never seen fall back to smaller pieces (to characters at
worst, with `VocabTrimConfig.keep_characters`), not to the unknown token; `vocab_coverage` measures how much of a
held-out text list still tokenizes as before.

Supported tokenizer models: WordPiece (BERT, MiniLM, MPNet), BPE (byte-level or not; the kept tokens are closed under
the merges that build them, so the merge sequence of a kept token is still possible), Unigram (SentencePiece) and
WordLevel (no fallback possible: an unseen word is unknown, as before).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import UserInputError
from .config import VocabTrimConfig

logger = logging.getLogger(__name__)

SUPPORTED_MODELS = ("WordPiece", "BPE", "Unigram", "WordLevel")
# config attributes holding token ids that the model itself uses (MPNet/RoBERTa compute positions from the pad id)
CONFIG_TOKEN_ID_ATTRS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                         "mask_token_id", "unk_token_id", "decoder_start_token_id")
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_TOKENIZER_FILES_KEPT = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                         "chat_template.json")


class UnsupportedTokenizerError(UserInputError, NotImplementedError):
    """A tokenizer whose vocabulary hfcompress cannot rewrite (names its model type and the supported ones)."""


@dataclass
class VocabTrimReport:
    """What trimming kept, and what it saved.

    `kept_*` attribute every kept token to the first reason that applies, in this order: special (special and added
    tokens, ids named by the model config or the post-processor), requested (`keep_tokens`), fallback (the alphabet
    of `keep_characters`), counted (seen at least `min_count` times), merge_parent (BPE: a piece a kept token is
    merged from). `coverage` is `vocab_coverage` on the held-out texts, when given.
    """

    tokenizer_model: str
    original_vocab_size: int
    tokenizer_vocab_size: int
    kept_vocab_size: int
    kept_special: int
    kept_requested: int
    kept_fallback: int
    kept_counted: int
    kept_merge_parent: int
    tokens_seen: int
    texts: int
    tokens_counted: int
    embedding_parameters_before: int
    embedding_parameters_after: int
    parameters_before: int
    parameters_after: int
    source: str
    config: dict = field(default_factory=dict)
    coverage: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenSelection:
    """The result of `select_tokens`: the kept ids of the original tokenizer (sorted), why each was kept, and the
    counts over the texts."""

    kept_ids: list[int]
    reasons: dict[int, str]
    counts: np.ndarray
    tokenizer_model: str

    @property
    def old_to_new(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept_ids)}


# ----------------------------------------------------------------------------------------------------------------
# input checks and counting


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise UserInputError(f"{name} must be a list of texts, got one string ({texts[:40]!r}...)")
    try:
        texts = list(texts)
    except TypeError:
        raise UserInputError(f"{name} must be a list of texts, got {type(texts).__name__}") from None
    if not texts:
        raise UserInputError(f"{name} is empty: give the texts whose tokens the trimmed vocabulary must keep (e.g. "
                             "the training split's text column)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserInputError(f"{name}[{i}] is {t!r} ({type(t).__name__}), not a string: every text must be a "
                                 "string (a missing value in a CSV column reads as None or NaN)")
    return texts


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise UnsupportedTokenizerError(
            f"{type(tokenizer).__name__} is not a fast (`tokenizers`-backed) tokenizer: vocabulary trimming rewrites "
            "the tokenizers backend. Load the tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)")


def count_tokens(tokenizer, texts: list[str], batch_size: int = 1024, desc: str = "Counting tokens") -> np.ndarray:
    """How often each token id occurs in the tokenizations of `texts` (no special tokens added, no truncation).

    Returns an int64 array of length ``len(tokenizer)`` (longer if the tokenizer produced a higher id)."""
    texts = _check_texts(texts)
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False,
                      disable=len(texts) <= batch_size):
        enc = tokenizer(texts[start:start + batch_size], add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)
        ids = [i for row in enc["input_ids"] for i in row]
        if not ids:
            continue
        batch = np.bincount(np.asarray(ids, dtype=np.int64))
        if len(batch) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(batch) - len(counts), dtype=np.int64)])
        counts[: len(batch)] += batch
    return counts


# ----------------------------------------------------------------------------------------------------------------
# the tokenizers JSON


def _tokenizer_json(tokenizer) -> dict:
    _check_fast(tokenizer)
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model_type = (data.get("model") or {}).get("type")
    if model_type not in SUPPORTED_MODELS:
        raise UnsupportedTokenizerError(
            f"tokenizer model type {model_type!r} ({type(tokenizer).__name__}) is not supported by vocabulary "
            f"trimming; supported: {', '.join(SUPPORTED_MODELS)}")
    return data


def _model_vocab(model_json: dict) -> dict[str, int]:
    """token -> id of the tokenizer model's own vocabulary (added tokens not included)."""
    vocab = model_json["vocab"]
    if model_json["type"] == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(vocab)}
    return dict(vocab)


def _fallback_ids(model_json: dict, vocab: dict[str, int]) -> set[int]:
    """The alphabet that lets unseen words still tokenize (see `VocabTrimConfig.keep_characters`)."""
    kind = model_json["type"]
    out: set[int] = set()
    if kind == "WordLevel":
        return out
    if kind == "WordPiece":
        prefix = model_json.get("continuing_subword_prefix") or "##"
        for tok, i in vocab.items():
            if len(tok) == 1 or (tok.startswith(prefix) and len(tok) == len(prefix) + 1):
                out.add(i)
        return out
    if kind == "BPE":
        prefix = model_json.get("continuing_subword_prefix") or ""
        suffix = model_json.get("end_of_word_suffix") or ""
        for tok, i in vocab.items():
            core = tok
            if prefix and core.startswith(prefix) and len(core) > len(prefix):
                core = core[len(prefix):]
            if suffix and core.endswith(suffix) and len(core) > len(suffix):
                core = core[: -len(suffix)]
            if len(core) == 1 or (model_json.get("byte_fallback") and _BYTE_FALLBACK.match(tok)):
                out.add(i)
        return out
    # Unigram: single characters, the bare word-boundary piece, and "<0xNN>" byte pieces
    for tok, i in vocab.items():
        core = tok[1:] if tok.startswith("\u2581") else tok
        if len(core) <= 1 or (model_json.get("byte_fallback") and _BYTE_FALLBACK.match(tok)):
            out.add(i)
    return out


def _merge_pairs(model_json: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model_json.get("merges", [])]


def _bpe_parents(model_json: dict, vocab: dict[str, int]) -> dict[int, list[tuple[int, int]]]:
    """BPE: id of a merged token -> the (left, right) id pairs it is merged from (as the Rust BPE builds merges:
    result = left + right without its continuation prefix)."""
    prefix_len = len(model_json.get("continuing_subword_prefix") or "")
    parents: dict[int, list[tuple[int, int]]] = {}
    for a, b in _merge_pairs(model_json):
        res = vocab.get(a + b[prefix_len:])
        if res is not None and a in vocab and b in vocab:
            parents.setdefault(res, []).append((vocab[a], vocab[b]))
    return parents


def _closure(ids: set[int], parents: dict[int, list[tuple[int, int]]]) -> set[int]:
    """`ids` plus, recursively, the pieces each is merged from (empty when `parents` is empty)."""
    out, stack = set(), list(ids)
    while stack:
        i = stack.pop()
        for a, b in parents.get(i, ()):
            for p in (a, b):
                if p not in ids and p not in out:
                    out.add(p)
                    stack.append(p)
    return out


def _post_processor_ids(pp) -> set[int]:
    if not pp:
        return set()
    kind = pp.get("type")
    if kind == "Sequence":
        return set().union(*[_post_processor_ids(p) for p in pp.get("processors", [])])
    if kind == "TemplateProcessing":
        return {int(i) for spec in (pp.get("special_tokens") or {}).values() for i in spec.get("ids", [])}
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {int(pp[k][1]) for k in ("sep", "cls") if pp.get(k)}
    return set()


def _remap_post_processor(pp, old_to_new: dict[int, int]):
    if not pp:
        return pp
    kind = pp.get("type")
    if kind == "Sequence":
        pp["processors"] = [_remap_post_processor(p, old_to_new) for p in pp.get("processors", [])]
    elif kind == "TemplateProcessing":
        for spec in (pp.get("special_tokens") or {}).values():
            spec["ids"] = [old_to_new[int(i)] for i in spec.get("ids", [])]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for k in ("sep", "cls"):
            if pp.get(k):
                pp[k] = [pp[k][0], old_to_new[int(pp[k][1])]]
    return pp


def _rewrite_tokenizer_json(data: dict, kept_ids: list[int]) -> dict:
    """The backend JSON with only `kept_ids`, renumbered 0..V'-1 in their original order."""
    data = json.loads(json.dumps(data))  # deep copy
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    model = data["model"]
    kind = model["type"]
    if kind == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept_ids if i < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[int(model["unk_id"])]
    else:
        vocab = model["vocab"]
        model["vocab"] = {tok: old_to_new[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1])
                          if i in old_to_new}
        if kind == "BPE":
            kept = model["vocab"]
            prefix_len = len(model.get("continuing_subword_prefix") or "")
            merges = model.get("merges", [])
            as_str = bool(merges) and isinstance(merges[0], str)
            new_merges = []
            for a, b in _merge_pairs(model):
                if a in kept and b in kept and (a + b[prefix_len:]) in kept:
                    new_merges.append(f"{a} {b}" if as_str else [a, b])
            model["merges"] = new_merges
    for tok in data.get("added_tokens") or []:
        tok["id"] = old_to_new[int(tok["id"])]
    data["post_processor"] = _remap_post_processor(data.get("post_processor"), old_to_new)
    padding = data.get("padding")
    if padding and padding.get("pad_id") is not None:
        pad_id = int(padding["pad_id"])
        if pad_id in old_to_new:
            padding["pad_id"] = old_to_new[pad_id]
    return data


# ----------------------------------------------------------------------------------------------------------------
# choosing the tokens


def _config_token_ids(model_config) -> set[int]:
    out: set[int] = set()
    if model_config is None:
        return out
    for attr in CONFIG_TOKEN_ID_ATTRS:
        value = getattr(model_config, attr, None)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                out.add(v)
    return out


def select_tokens(tokenizer, texts: list[str], config: VocabTrimConfig | None = None, model_config=None,
                  batch_size: int = 1024) -> TokenSelection:
    """Which ids of `tokenizer` a trimmed vocabulary keeps for `texts` (see `VocabTrimConfig` for the rules)."""
    config = config or VocabTrimConfig()
    if not isinstance(config, VocabTrimConfig):
        raise UserInputError(f"config must be a VocabTrimConfig, got {type(config).__name__}")
    texts = _check_texts(texts)
    data = _tokenizer_json(tokenizer)
    model_json = data["model"]
    kind = model_json["type"]
    vocab = _model_vocab(model_json)
    full_vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(full_vocab.values(), default=-1) + 1)

    missing = [t for t in config.keep_tokens if t not in full_vocab]
    if missing:
        hints = []
        for t in missing[:5]:
            pieces = tokenizer.tokenize(t)
            hints.append(f"{t!r} (tokenizes to {pieces})")
        raise UserInputError(
            f"keep_tokens: {len(missing)} token(s) not in the tokenizer's vocabulary: {', '.join(hints)}"
            f"{' ...' if len(missing) > 5 else ''}. Give vocabulary entries, e.g. the pieces shown")

    counts = count_tokens(tokenizer, texts, batch_size=batch_size)
    if counts.sum() == 0:
        raise UserInputError(f"the {len(texts)} texts produce no tokens at all (empty strings?): nothing to keep")
    if len(counts) > size:
        raise RuntimeError(f"the tokenizer produced id {len(counts) - 1}, beyond its vocabulary of {size}")
    counts = np.concatenate([counts, np.zeros(size - len(counts), dtype=np.int64)])

    special = {int(t["id"]) for t in data.get("added_tokens") or []}
    special |= {int(i) for i in tokenizer.all_special_ids if i is not None and i >= 0}
    special |= _post_processor_ids(data.get("post_processor"))
    cfg_ids = _config_token_ids(model_config)
    beyond = sorted(i for i in cfg_ids if i >= size)
    if beyond:
        logger.warning("model config token ids %s are beyond the tokenizer's %d tokens and cannot be kept", beyond, size)
    special |= {i for i in cfg_ids if i < size}
    unk = model_json.get("unk_token")
    if isinstance(unk, str) and unk in vocab:
        special.add(vocab[unk])
    if kind == "Unigram" and model_json.get("unk_id") is not None:
        special.add(int(model_json["unk_id"]))
    requested = {full_vocab[t] for t in config.keep_tokens}
    fallback = _fallback_ids(model_json, vocab) if config.keep_characters else set()
    if kind == "Unigram" and model_json["vocab"]:
        # keep the lowest-scoring piece: the unknown-token penalty is computed from the minimum score, and a higher
        # minimum could make an unknown-character path beat the original segmentation
        scores = [s for _, s in model_json["vocab"]]
        fallback.add(int(np.argmin(scores)))
    parents = _bpe_parents(model_json, vocab) if kind == "BPE" else {}

    reasons: dict[int, str] = {}
    for name, ids in (("special", special), ("requested", requested), ("fallback", fallback)):
        for i in sorted(ids):
            reasons.setdefault(i, name)
    for i in sorted(_closure(set(reasons), parents)):
        reasons.setdefault(i, "merge_parent")
    mandatory = len(reasons)
    cap = config.max_vocab_size
    if cap is not None and mandatory > cap:
        raise UserInputError(
            f"max_vocab_size={cap} is below the {mandatory} tokens that must be kept (special tokens, keep_tokens"
            f"{', fallback characters' if config.keep_characters else ''}): raise it to at least {mandatory}"
            f"{' or set keep_characters to false' if config.keep_characters else ''}")
    candidates = np.flatnonzero(counts >= config.min_count)
    order = candidates[np.lexsort((candidates, -counts[candidates]))]  # most frequent first, then lower id
    for i in order.tolist():
        if i in reasons:
            continue
        extra = _closure({i}, parents) - set(reasons)
        if cap is not None and len(reasons) + 1 + len(extra) > cap:
            continue
        reasons[i] = "counted"
        for p in extra:
            reasons[p] = "merge_parent"
    kept_ids = sorted(reasons)
    logger.info("Vocabulary trimming: keeping %d of %d tokens (%s)", len(kept_ids), size,
                ", ".join(f"{k} {v}" for k, v in Counter(reasons.values()).most_common()))
    return TokenSelection(kept_ids=kept_ids, reasons=reasons, counts=counts, tokenizer_model=kind)


# ----------------------------------------------------------------------------------------------------------------
# rewriting the tokenizer


def _remap_tokenizer_config(path: str, old_to_new: dict[int, int]) -> None:
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    decoder = cfg.get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        cfg["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in decoder.items()
                                       if int(k) in old_to_new}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(cfg, fh, indent=2, ensure_ascii=False)


def _special_ids(tok) -> dict[str, int | None]:
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")
    return {n: getattr(tok, f"{n}_id", None) if getattr(tok, n, None) is not None else None for n in names}


def _verify_tokenizer(original, trimmed, kept_ids: list[int]) -> list[str]:
    """Differences between what `trimmed` is and what it should be (empty list: none)."""
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    problems = []
    want = {t: old_to_new[i] for t, i in original.get_vocab().items() if i in old_to_new}
    got = trimmed.get_vocab()
    if want != got:
        wrong = [t for t in want if got.get(t) != want[t]][:5] + [t for t in got if t not in want][:5]
        problems.append(f"vocabulary differs ({len(got)} tokens instead of {len(want)}; e.g. {wrong})")
    trimmed_ids = _special_ids(trimmed)
    for name, old in _special_ids(original).items():
        new = trimmed_ids[name]
        if old is not None and new != old_to_new.get(old):
            problems.append(f"{name} id is {new}, expected {old_to_new.get(old)}")
    return problems


def _check_encodings(original, trimmed, kept_ids: list[int], texts: list[str], limit: int = 512) -> None:
    """Texts whose original tokens were all kept must encode to the same tokens, special tokens included."""
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    sample = texts[:limit]
    a = original(sample, return_attention_mask=False)["input_ids"]
    b = trimmed(sample, return_attention_mask=False)["input_ids"]
    for text, x, y in zip(sample, a, b):
        if all(i in old_to_new for i in x) and [old_to_new[i] for i in x] != y:
            raise RuntimeError(f"vocabulary trimming: the trimmed tokenizer encodes {text[:80]!r} differently "
                               f"({original.convert_ids_to_tokens(x)} -> {trimmed.convert_ids_to_tokens(y)}); "
                               "this is a bug, please report it")


def trim_tokenizer(tokenizer, kept_ids: list[int], check_texts: list[str] | None = None):
    """A new fast tokenizer with only `kept_ids` of `tokenizer`, renumbered 0..V'-1 in their original order.

    Same transformers class as `tokenizer` where that class reloads the rewritten vocabulary faithfully (checked),
    else a generic `PreTrainedTokenizerFast` built from the same backend JSON. Texts of `check_texts` whose tokens
    were all kept are checked to encode to the same tokens."""
    from transformers import PreTrainedTokenizerFast

    data = _tokenizer_json(tokenizer)
    kept_ids = sorted(set(int(i) for i in kept_ids))
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    for i in set(_post_processor_ids(data.get("post_processor"))) | {int(t["id"]) for t in data.get("added_tokens") or []}:
        if i not in old_to_new:
            raise UserInputError(f"kept_ids must include the special and added token id {i} "
                                 f"({tokenizer.convert_ids_to_tokens(i)!r})")
    new_json = _rewrite_tokenizer_json(data, kept_ids)
    with tempfile.TemporaryDirectory(prefix="hfcompress-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):  # slow-tokenizer files (vocab.txt, merges.txt, *.model) would be stale
            if name not in _TOKENIZER_FILES_KEPT:
                os.remove(os.path.join(tmp, name))
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as fh:
            json.dump(new_json, fh, ensure_ascii=False)
        _remap_tokenizer_config(os.path.join(tmp, "tokenizer_config.json"), old_to_new)
        trimmed = type(tokenizer).from_pretrained(tmp)
        problems = _verify_tokenizer(tokenizer, trimmed, kept_ids)
        if problems and type(trimmed) is not PreTrainedTokenizerFast:
            logger.warning("%s does not reload the trimmed vocabulary faithfully (%s); using a generic "
                           "PreTrainedTokenizerFast", type(tokenizer).__name__, "; ".join(problems))
            cfg_path = os.path.join(tmp, "tokenizer_config.json")
            with open(cfg_path, encoding="utf-8") as fh:
                cfg = json.load(fh)
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            with open(cfg_path, "w", encoding="utf-8") as fh:
                json.dump(cfg, fh, indent=2, ensure_ascii=False)
            trimmed = PreTrainedTokenizerFast.from_pretrained(tmp)
            problems = _verify_tokenizer(tokenizer, trimmed, kept_ids)
        if problems:
            raise RuntimeError("vocabulary trimming: the rewritten tokenizer is inconsistent: " + "; ".join(problems))
    trimmed.name_or_path = getattr(tokenizer, "name_or_path", "")
    if check_texts:
        _check_encodings(tokenizer, trimmed, kept_ids, list(check_texts))
    return trimmed


# ----------------------------------------------------------------------------------------------------------------
# rewriting the model


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise RuntimeError("module not found in the model")


def _embedding_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The distinct vocabulary-sized tensors trimming touches (input embedding, output embedding and its biases)."""
    emb = model.get_input_embeddings()
    vocab = emb.weight.shape[0]
    out, seen = [], set()
    for t in [emb.weight, *_output_tensors(model, vocab)]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _output_tensors(model: nn.Module, vocab: int) -> list[torch.Tensor]:
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is None or getattr(out_emb, "weight", None) is None or out_emb.weight.shape[0] != vocab:
        return []
    tensors = [out_emb.weight]
    if getattr(out_emb, "bias", None) is not None and out_emb.bias.shape[0] == vocab:
        tensors.append(out_emb.bias)
    name = _module_name(model, out_emb)
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):  # ancestors of the output embedding (BERT's cls.predictions.bias)
        parent = model.get_submodule(".".join(parts[:k]))
        for p in parent._parameters.values():
            if p is not None and p.ndim == 1 and p.shape[0] == vocab:
                tensors.append(p)
    return tensors


def trim_embeddings(model: nn.Module, kept_ids: list[int]) -> nn.Module:
    """Keep the embedding rows `kept_ids` (gathered in this order) of `model`, in place; returns `model`.

    Gathers the input embedding, the output embedding (tied ones stay tied) and any vocabulary-sized bias of the
    language-model head, and updates `config.vocab_size`, the config's token ids and the embedding's `padding_idx`.
    """
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise UnsupportedTokenizerError(f"the input embedding of {type(model).__name__} is "
                                        f"{type(emb).__name__}, not nn.Embedding: cannot trim its rows")
    vocab, kept_ids = emb.num_embeddings, [int(i) for i in kept_ids]
    if not kept_ids or kept_ids != sorted(set(kept_ids)):
        raise UserInputError("kept_ids must be a non-empty increasing list of distinct ids")
    if kept_ids[-1] >= vocab or kept_ids[0] < 0:
        raise UserInputError(f"kept id {kept_ids[-1]} is outside the model's {vocab} embedding rows: the tokenizer "
                             "is larger than the model's vocabulary (not the model's own tokenizer?)")
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    # Some embeddings modules hard-code the pad id for their own use (MPNet: padding_idx = 1, positions counted from
    # it): trimming must not move it, because a model rebuilt from its config would put it back.
    name = _module_name(model, emb)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    fixed = getattr(parent, "padding_idx", None)
    if isinstance(fixed, int) and old_to_new.get(fixed) != fixed:
        raise UnsupportedTokenizerError(
            f"{type(parent).__name__} uses token id {fixed} as its padding index, and trimming would move that "
            f"token to id {old_to_new.get(fixed)}: keep every token below id {fixed} (keep_tokens) to trim this model")

    index = torch.tensor(kept_ids, dtype=torch.long, device=emb.weight.device)
    new_params: dict[int, nn.Parameter] = {}

    def gather(p: torch.Tensor) -> nn.Parameter:
        if id(p) not in new_params:
            new_params[id(p)] = nn.Parameter(p.detach().index_select(0, index).clone(), requires_grad=p.requires_grad)
        return new_params[id(p)]

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_tensors = _output_tensors(model, vocab)
    emb.weight = gather(emb.weight)
    emb.num_embeddings = len(kept_ids)
    if emb.padding_idx is not None:
        emb.padding_idx = old_to_new.get(int(emb.padding_idx))
    if out_tensors:
        out_emb.weight = gather(out_emb.weight)
        if getattr(out_emb, "bias", None) is not None and out_emb.bias.shape[0] == vocab:
            out_emb.bias = gather(out_emb.bias)
        if hasattr(out_emb, "out_features"):
            out_emb.out_features = len(kept_ids)
        parts = _module_name(model, out_emb).split(".")
        for k in range(len(parts) - 1, 0, -1):
            parent_mod = model.get_submodule(".".join(parts[:k]))
            for pname, p in list(parent_mod._parameters.items()):
                if p is not None and p.ndim == 1 and p.shape[0] == vocab:
                    setattr(parent_mod, pname, gather(p))

    configs = [model.config]
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if text_config is not model.config:
        configs.append(text_config)
    generation = getattr(model, "generation_config", None)
    for cfg in configs + ([generation] if generation is not None else []):
        if any(cfg is c for c in configs):
            cfg.vocab_size = len(kept_ids)
        for attr in CONFIG_TOKEN_ID_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(cfg, attr, old_to_new.get(value))
            elif isinstance(value, (list, tuple)):
                setattr(cfg, attr, [old_to_new.get(v, v) for v in value])
    return model


# ----------------------------------------------------------------------------------------------------------------
# the whole thing


def trim_vocabulary(model: nn.Module, tokenizer, texts: list[str], config: VocabTrimConfig | None = None, *,
                    eval_texts: list[str] | None = None, source: str | None = None, batch_size: int = 1024):
    """Trim `model`'s and `tokenizer`'s vocabulary to the tokens of `texts`; returns ``(model, tokenizer, report)``.

    `model` is changed in place (and returned); `tokenizer` is left as it is, and a new one is returned. Kept: see
    `VocabTrimConfig`. Records ``config.hfcompress_vocab_trim`` (original and kept sizes, `source`) in the model's
    config; the trimmed pair saves and reloads with plain transformers (`save_pretrained`, `from_pretrained`).
    `eval_texts`: held-out texts on which `vocab_coverage` is reported (``report.coverage``).
    """
    from ..costs import count_parameters

    config = config or VocabTrimConfig()
    if not isinstance(config, VocabTrimConfig):
        raise UserInputError(f"config must be a VocabTrimConfig, got {type(config).__name__}")
    texts = _check_texts(texts)
    if eval_texts is not None:
        eval_texts = _check_texts(eval_texts, "eval_texts")
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise UnsupportedTokenizerError(f"the input embedding of {type(model).__name__} is {type(emb).__name__}, "
                                        "not nn.Embedding (already quantized? trim the vocabulary first)")
    if getattr(model.config, "hfcompress_vocab_trim", None):
        logger.warning("this model's vocabulary was already trimmed (%s); trimming it again",
                       model.config.hfcompress_vocab_trim)
    original_rows = emb.num_embeddings
    selection = select_tokens(tokenizer, texts, config, model_config=model.config, batch_size=batch_size)
    if selection.kept_ids[-1] >= original_rows:
        raise UserInputError(f"the tokenizer has ids up to {selection.kept_ids[-1]} but the model's embedding has "
                             f"{original_rows} rows: this is not the model's tokenizer")
    emb_before = sum(t.numel() for t in _embedding_tensors(model))
    params_before = count_parameters(model)

    new_tokenizer = trim_tokenizer(tokenizer, selection.kept_ids, check_texts=texts)
    trim_embeddings(model, selection.kept_ids)
    source = source or f"{len(texts)} texts"
    model.config.hfcompress_vocab_trim = {"original_vocab_size": int(original_rows),
                                          "kept": len(selection.kept_ids), "source": source,
                                          "config": config.to_dict()}

    reasons = Counter(selection.reasons.values())
    report = VocabTrimReport(
        tokenizer_model=selection.tokenizer_model,
        original_vocab_size=int(original_rows),
        tokenizer_vocab_size=len(selection.counts),
        kept_vocab_size=len(selection.kept_ids),
        kept_special=reasons["special"], kept_requested=reasons["requested"], kept_fallback=reasons["fallback"],
        kept_counted=reasons["counted"], kept_merge_parent=reasons["merge_parent"],
        tokens_seen=int((selection.counts > 0).sum()),
        texts=len(texts), tokens_counted=int(selection.counts.sum()),
        embedding_parameters_before=int(emb_before),
        embedding_parameters_after=int(sum(t.numel() for t in _embedding_tensors(model))),
        parameters_before=int(params_before), parameters_after=int(count_parameters(model)),
        source=source, config=config.to_dict(),
    )
    if eval_texts is not None:
        report.coverage = vocab_coverage(tokenizer, new_tokenizer, eval_texts, batch_size=batch_size)
    logger.info("Vocabulary trimmed: %d -> %d tokens, %d -> %d parameters%s", report.original_vocab_size,
                report.kept_vocab_size, report.parameters_before, report.parameters_after,
                "" if report.coverage is None else f", held-out coverage {report.coverage['coverage']:.4f}")
    return model, new_tokenizer, report


def vocab_coverage(original_tok, trimmed_tok, texts: list[str], batch_size: int = 1024) -> dict:
    """How much of `texts` the trimmed tokenizer still tokenizes as the original one did.

    A token of the original tokenization counts as covered when the trimmed tokenization has a token with the same
    string over the same characters (offsets). Returns ``coverage`` (covered / original tokens), ``texts_identical``
    (fraction of texts tokenized to the same token strings), ``unk_rate_original`` / ``unk_rate_trimmed`` (fraction
    of tokens that are the unknown token), ``length_ratio`` (trimmed / original number of tokens: unseen words fall
    back to more, smaller pieces, which matters under a `max_length`), and the counts behind them."""
    texts = _check_texts(texts)
    _check_fast(original_tok)
    _check_fast(trimmed_tok)
    n_orig = n_trim = covered = identical = unk_orig = unk_trim = 0
    for start in tqdm(range(0, len(texts), batch_size), desc="Coverage", leave=False,
                      disable=len(texts) <= batch_size):
        batch = texts[start:start + batch_size]
        a = original_tok(batch, add_special_tokens=False, return_offsets_mapping=True)
        b = trimmed_tok(batch, add_special_tokens=False, return_offsets_mapping=True)
        for i in range(len(batch)):
            ta, tb = a.tokens(i), b.tokens(i)
            oa, ob = a["offset_mapping"][i], b["offset_mapping"][i]
            ca = Counter(zip(ta, map(tuple, oa)))
            cb = Counter(zip(tb, map(tuple, ob)))
            covered += sum((ca & cb).values())
            n_orig += len(ta)
            n_trim += len(tb)
            identical += ta == tb
            unk_orig += sum(t == original_tok.unk_token for t in ta) if original_tok.unk_token else 0
            unk_trim += sum(t == trimmed_tok.unk_token for t in tb) if trimmed_tok.unk_token else 0
    return {
        "texts": len(texts),
        "tokens_original": n_orig,
        "tokens_trimmed": n_trim,
        "tokens_covered": covered,
        "coverage": covered / n_orig if n_orig else 1.0,
        "texts_identical": identical / len(texts),
        "unk_rate_original": unk_orig / n_orig if n_orig else 0.0,
        "unk_rate_trimmed": unk_trim / n_trim if n_trim else 0.0,
        "length_ratio": n_trim / n_orig if n_orig else 1.0,
    }
