"""Vocabulary trimming's registration (see `hfcompress.registry`): the card's line for a ``vocab_trim`` record entry.
It runs inside the ``quantize`` stage (`--vocab_trim`) and writes plain transformers checkpoints."""

from __future__ import annotations

from ..registry import Method, register_method


def describe(m: dict) -> tuple[str, list[str]]:
    return (f"vocabulary trimmed to the training split's tokens: {m.get('kept_vocab_size')} of "
            f"{m.get('original_vocab_size')} kept", ["vocabulary-trimmed"])


register_method(Method(name="vocab_trim", describe=describe, config_class="hfcompress.vocab.config:VocabTrimConfig"))
