"""Tiny token-classification assets written to disk by the tests: a WordPiece tokenizer that splits some words into
sub-tokens, a randomly initialised BERT token classifier, and NER data as a CoNLL-style file and as JSON Lines."""

from __future__ import annotations

import json
import os
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForTokenClassification, BertConfig, PreTrainedTokenizerFast

TAGS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # hfcompress.tagging.tag_order
PIECES = ["john", "mary", "jones", "peter", "paris", "lon", "##don", "new", "york", "acme", "glo", "##bex", "corp",
          "lives", "in", "works", "at", "the", "office", "visits", "today", "and"]
PER = [["john"], ["mary", "jones"], ["peter"]]
LOC = [["paris"], ["london"], ["new", "york"]]  # london: two sub-tokens
ORG = [["acme"], ["globex", "corp"]]  # globex: two sub-tokens


def make_wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {t: i for i, t in enumerate(specials + PIECES)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_tagger(num_layers=4, hidden=32, heads=4, seed=3, tags=TAGS):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=len(tags),
                     id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)},
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return AutoModelForTokenClassification.from_config(cfg)


def _entity(words, kind):
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def make_sentences(n=60, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        per, loc, org = rng.choice(PER), rng.choice(LOC), rng.choice(ORG)
        form = rng.randrange(3)
        if form == 0:
            s = _entity(per, "PER") + [("lives", "O"), ("in", "O")] + _entity(loc, "LOC")
        elif form == 1:
            s = _entity(per, "PER") + [("works", "O"), ("at", "O")] + _entity(org, "ORG") + [("in", "O")] + _entity(loc, "LOC")
        else:
            s = [("the", "O")] + _entity(org, "ORG") + [("office", "O"), ("in", "O")] + _entity(loc, "LOC")
        out.append(s)
    return out


def write_conll(path, sentences, docstart=True) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        if docstart:
            fh.write("-DOCSTART- O\n\n")
        for s in sentences:
            fh.writelines(f"{w}\t{t}\n" for w, t in s)
            fh.write("\n")
    return str(path)


def write_jsonl(path, sentences) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for s in sentences:
            fh.write(json.dumps({"tokens": [w for w, _ in s], "tags": [t for _, t in s]}) + "\n")
    return str(path)


def save_tagging_assets(root):
    """(teacher_dir, conll_file, jsonl_file) under `root`."""
    root = str(root)
    teacher = os.path.join(root, "teacher")
    tiny_tagger().save_pretrained(teacher)
    make_wordpiece_tokenizer().save_pretrained(teacher)
    return (teacher, write_conll(os.path.join(root, "ner.conll"), make_sentences(60, 0)),
            write_jsonl(os.path.join(root, "ner.jsonl"), make_sentences(60, 1)))
