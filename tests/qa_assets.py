"""Tiny extractive-QA assets written to disk by the tests: a randomly initialised BERT reader with the WordPiece tokenizer
of `tagging_assets`, and questions over short contexts as flat JSON Lines (answer text only) and SQuAD JSON."""

from __future__ import annotations

import json
import os
import random

import torch
from tagging_assets import LOC, ORG, PER, make_wordpiece_tokenizer
from transformers import AutoModelForQuestionAnswering, BertConfig


def tiny_reader(num_layers=4, hidden=32, heads=4, seed=3):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return AutoModelForQuestionAnswering.from_config(cfg)


def make_questions(n=40, seed=0, unanswerable=0.2):
    """(context, question, answer text or "unknown") triples."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        per, loc, org = (" ".join(rng.choice(x)) for x in (PER, LOC, ORG))
        context = f"{per} lives in {loc} and works at {org} in {loc} today"
        if rng.random() < unanswerable:
            out.append((context, "where does peter visits", "unknown"))
        else:
            out.append((context, f"where {per} lives", loc))
    return out


def write_flat_jsonl(path, questions) -> str:
    with open(path, "w") as fh:
        for c, q, a in questions:
            fh.write(json.dumps({"passage": c, "question": q, "answer": a}) + "\n")
    return str(path)


def write_squad(path, questions) -> str:
    paragraphs = [{"context": c, "qas": [{"id": f"q{i}", "question": q, "is_impossible": a == "unknown",
                                          "answers": [] if a == "unknown" else [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, (c, q, a) in enumerate(questions)]
    with open(path, "w") as fh:
        json.dump({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}, fh)
    return str(path)


def save_qa_assets(root):
    """(teacher_dir, jsonl_file, squad_file) under `root`."""
    root = str(root)
    teacher = os.path.join(root, "reader")
    tiny_reader().save_pretrained(teacher)
    make_wordpiece_tokenizer().save_pretrained(teacher)
    return (teacher, write_flat_jsonl(os.path.join(root, "qa.jsonl"), make_questions(40, 0)),
            write_squad(os.path.join(root, "squad.json"), make_questions(40, 1)))
